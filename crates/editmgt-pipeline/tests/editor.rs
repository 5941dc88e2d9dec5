//! Editor behaviour beyond parity: batches, sizes, masks, cancellation and typed errors.

use std::sync::OnceLock;

use editmgt_core::LoadError;
use editmgt_pipeline::{
    EditError, EditRequest, Editor, EditorOptions, Flow, GenerateRequest, Hooks, RegionHold,
    RgbImage, StepEvent,
};
use editmgt_testkit::{case_file, device, model_dir};
use image::GrayImage;

fn editor() -> &'static Editor {
    static EDITOR: OnceLock<Editor> = OnceLock::new();
    EDITOR.get_or_init(|| {
        Editor::from_folder(model_dir(), &device(), EditorOptions::default())
            .expect("the tiny fixture model loads")
    })
}

/// Two blocks of the loaded model to localise with (its middle and last block).
fn hold_blocks() -> [usize; 2] {
    let last = editor().num_blocks() - 1;
    [last / 2, last]
}

fn source() -> RgbImage {
    editmgt_pipeline::load_image(case_file("source.png")).unwrap()
}

fn invalid_field(result: Result<impl std::fmt::Debug, EditError>) -> &'static str {
    match result {
        Err(EditError::InvalidRequest { field, .. }) => field,
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

#[test]
fn a_batch_of_two_equals_two_single_edits() {
    let a = source();
    let b = image::imageops::flip_horizontal(&image::imageops::resize(
        &a,
        640,
        480,
        image::imageops::FilterType::Triangle,
    ));
    let ra = EditRequest::new("make it into Ghibli style")
        .steps(3)
        .seed(11);
    let rb = EditRequest::new("turn the sky red")
        .steps(3)
        .seed(12)
        .negative_prompt("blurry");
    let batch = editor().edit_batch(&[(&a, &ra), (&b, &rb)]).unwrap();
    let single_a = editor().edit(&a, &ra).unwrap();
    let single_b = editor().edit(&b, &rb).unwrap();
    assert_eq!(batch[0].tokens, single_a.tokens);
    assert_eq!(batch[1].tokens, single_b.tokens);
    assert_eq!(batch[0].image, single_a.image);
    assert_eq!(batch[1].image, single_b.image);
    assert_eq!(batch[1].image.dimensions(), (640, 480));
    // Different seeds give different edits.
    let other = editor().edit(&a, &ra.clone().seed(99)).unwrap();
    assert_ne!(other.tokens, single_a.tokens);
}

#[test]
fn any_input_size_comes_back_at_its_size_and_masks_of_any_size_are_resized() {
    let small = image::imageops::resize(&source(), 300, 200, image::imageops::FilterType::Triangle);
    // A mask of another size than the image and the token grid: the left half repaints.
    let mask = GrayImage::from_fn(50, 40, |x, _| image::Luma([if x < 25 { 255 } else { 0 }]));
    let request = EditRequest::new("make it into Ghibli style")
        .steps(2)
        .mask(mask);
    let out = editor().edit(&small, &request).unwrap();
    assert_eq!(out.image.dimensions(), (300, 200));
    // Outside the mask every token keeps the source token.
    let unmasked = editor()
        .edit(
            &small,
            &EditRequest::new("x").steps(1).mask(GrayImage::new(8, 8)),
        )
        .unwrap();
    let (h, w) = out.grid;
    for y in 0..h {
        for x in w / 2 + 1..w {
            assert_eq!(
                out.tokens[y * w + x],
                unmasked.tokens[y * w + x],
                "cell ({y}, {x})"
            );
        }
    }
}

#[test]
fn progress_reports_every_step_and_can_cancel() {
    let mut seen = Vec::new();
    let mut callback = |e: &StepEvent<'_>| {
        seen.push((e.step, e.total));
        if e.step == 2 {
            Flow::Cancel
        } else {
            Flow::Continue
        }
    };
    let result = editor().generate_with(
        &GenerateRequest::new("a white cat").steps(4),
        Hooks::progress(&mut callback),
    );
    assert!(
        matches!(
            result,
            Err(EditError::Cancelled {
                completed: 2,
                total: 4
            })
        ),
        "{result:?}"
    );
    assert_eq!(seen, vec![(1, 4), (2, 4)]);
}

#[test]
fn localisation_maps_are_recorded_per_step() {
    let request = EditRequest::new("make the sky blue")
        .steps(2)
        .region_hold(RegionHold::new(0.0).blocks(hold_blocks()).query("sky"))
        .record_localisation(true);
    let out = editor().edit(&source(), &request).unwrap();
    assert_eq!(out.localisation.len(), 2);
    let (h, w) = editor().attention_grid();
    for map in &out.localisation {
        assert_eq!((map.batch(), map.height(), map.width()), (1, h, w));
        let values = map.to_vec().unwrap();
        let max = values.iter().copied().fold(f32::MIN, f32::max);
        let min = values.iter().copied().fold(f32::MAX, f32::min);
        assert!((0.0..=1.0).contains(&min) && max <= 1.0 && max > min);
    }
}

#[test]
fn bad_requests_are_typed_errors() {
    let image = source();
    let edit = |r: EditRequest| editor().edit(&image, &r);
    let base = || EditRequest::new("make it into Ghibli style").steps(2);
    assert_eq!(invalid_field(edit(base().steps(0))), "steps");
    assert_eq!(invalid_field(edit(base().guidance(-1.0))), "guidance");
    assert_eq!(invalid_field(edit(base().guidance(f32::NAN))), "guidance");
    assert_eq!(
        invalid_field(edit(base().reference_strength(0.0))),
        "reference_strength"
    );
    assert_eq!(
        invalid_field(edit(base().region_hold(RegionHold::new(1.5).blocks([0])))),
        "region_hold.threshold"
    );
    assert_eq!(
        invalid_field(edit(base().region_hold(RegionHold::new(-0.1).blocks([0])))),
        "region_hold.threshold"
    );
    // A block past the model's last.
    let blocks = editor().num_blocks();
    let err = edit(base().region_hold(RegionHold::new(0.1).blocks([0, blocks]))).unwrap_err();
    assert!(
        err.to_string().contains(&format!("blocks 0..{blocks}")),
        "{err}"
    );
    // The default blocks are for the released 42-block model.
    let err = edit(base().region_hold(RegionHold::new(0.1))).unwrap_err();
    assert!(err.to_string().contains("42-block"), "{err}");
    // Query words that are not in the instruction.
    assert_eq!(
        invalid_field(edit(
            base().region_hold(RegionHold::new(0.1).blocks([0]).query("zebra"))
        )),
        "region_hold.query"
    );
    assert_eq!(
        invalid_field(edit(base().record_localisation(true))),
        "record_localisation"
    );
    // A batch whose items disagree on shared parameters.
    let (a, b) = (base(), base().steps(3));
    assert_eq!(
        invalid_field(editor().edit_batch(&[(&image, &a), (&image, &b)])),
        "steps"
    );
    assert_eq!(invalid_field(editor().edit_batch(&[])), "items");
    assert_eq!(
        invalid_field(editor().generate(&GenerateRequest::new("a cat").steps(0))),
        "steps"
    );
}

#[test]
fn bad_models_and_images_are_typed_errors() {
    let device = device();
    let tmp = tempfile::tempdir().unwrap();
    match Editor::from_folder(tmp.path().join("absent"), &device, EditorOptions::default()) {
        Err(EditError::Load(LoadError::MissingFolder { .. })) => {}
        other => panic!("expected a missing folder, got {other:?}"),
    }

    // A copy of the tiny model with a truncated transformer checkpoint.
    let copy = tmp.path().join("model");
    for sub in [
        "editmgt",
        "vqvae",
        "text_encoder",
        "tokenizer",
        "llm_encoder",
        "scheduler",
    ] {
        std::fs::create_dir_all(copy.join(sub)).unwrap();
        for entry in std::fs::read_dir(model_dir().join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.join(sub).join(entry.file_name())).unwrap();
        }
    }
    let weights = copy.join("editmgt/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 1000]).unwrap();
    let err = Editor::from_folder(&copy, &device, EditorOptions::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            EditError::Transformer(editmgt_mgt::MgtError::Load(
                LoadError::CorruptWeights { .. }
            ))
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("diffusion_pytorch_model.safetensors"),
        "{err}"
    );

    let garbage = tmp.path().join("photo.png");
    std::fs::write(&garbage, b"not a png at all").unwrap();
    let err = editmgt_pipeline::load_image(&garbage).unwrap_err();
    assert!(matches!(err, EditError::Image(_)), "{err:?}");
    assert!(err.to_string().contains("photo.png"), "{err}");
    assert!(matches!(
        editmgt_pipeline::load_mask(&garbage),
        Err(EditError::Image(_))
    ));

    let options = EditorOptions {
        resolution: 1000,
        ..EditorOptions::default()
    };
    match Editor::from_folder(model_dir(), &device, options) {
        Err(EditError::InvalidRequest {
            field: "resolution",
            ..
        }) => {}
        other => panic!("expected an invalid resolution, got {other:?}"),
    }
    assert!("tpu".parse::<editmgt_pipeline::DeviceSpec>().is_err());
}

#[test]
fn text_encoders_loaded_per_call_give_the_same_edit() {
    let options = EditorOptions {
        text_encoders: editmgt_pipeline::TextEncoders::LoadPerCall,
        ..EditorOptions::default()
    };
    let lean = Editor::from_folder(model_dir(), &device(), options).unwrap();
    let request = EditRequest::new("make it into Ghibli style")
        .steps(2)
        .seed(3);
    let image = source();
    assert_eq!(
        lean.edit(&image, &request).unwrap().tokens,
        editor().edit(&image, &request).unwrap().tokens
    );
}

#[test]
fn a_one_shot_edit_equals_a_kept_editors_edit() {
    let request = EditRequest::new("make it into Ghibli style")
        .steps(3)
        .seed(5)
        .timings(true);
    let image = source();
    let kept = editor().edit(&image, &request).unwrap();
    let once = Editor::from_folder(model_dir(), &device(), EditorOptions::default())
        .unwrap()
        .edit_once(&image, &request)
        .unwrap();
    assert_eq!(once.tokens, kept.tokens);
    assert_eq!(once.grid, kept.grid);
    assert_eq!(once.image.dimensions(), kept.image.dimensions());
    assert_eq!(once.image.as_raw(), kept.image.as_raw());
    assert_eq!(once.readback, kept.readback);
    assert_eq!(once.timings.transformer.len(), request.steps);

    // The hooks reach the loop, and an error still comes back as one.
    let mut seen = 0;
    let mut count = |_: &StepEvent<'_>| {
        seen += 1;
        Flow::Continue
    };
    let editor = Editor::from_folder(model_dir(), &device(), EditorOptions::default()).unwrap();
    let hooked = editor
        .edit_once_with(&image, &request, Hooks::progress(&mut count))
        .unwrap();
    assert_eq!(hooked.tokens, kept.tokens);
    assert_eq!(seen, request.steps);
    let editor = Editor::from_folder(model_dir(), &device(), EditorOptions::default()).unwrap();
    assert_eq!(
        invalid_field(editor.edit_once(&image, &EditRequest::new("x").steps(0))),
        "steps"
    );
}

#[test]
fn half_precision_editors_run() {
    for float in [
        editmgt_pipeline::FloatType::F16,
        editmgt_pipeline::FloatType::BF16,
    ] {
        let options = EditorOptions {
            float,
            ..EditorOptions::default()
        };
        let editor = Editor::from_folder(model_dir(), &device(), options).unwrap();
        let small =
            image::imageops::resize(&source(), 64, 64, image::imageops::FilterType::Triangle);
        let out = editor
            .edit(
                &small,
                &EditRequest::new("make it into Ghibli style").steps(2),
            )
            .unwrap();
        assert_eq!(out.image.dimensions(), (64, 64));
        let (h, w) = out.grid;
        assert_eq!(out.tokens.len(), h * w);
        assert!(
            out.tokens
                .iter()
                .all(|&t| (t as usize) < editor.codebook_size()),
            "{float}: tokens outside the codebook"
        );
    }
}

#[test]
fn region_hold_in_mask_mode_restores_source_tokens() {
    let image = source();
    // Nothing masked: the edit returns the source tokens.
    let source_tokens = editor()
        .edit(
            &image,
            &EditRequest::new("x").steps(1).mask(GrayImage::new(8, 8)),
        )
        .unwrap()
        .tokens;
    // The left half masked, and every masked cell scoring below 1 held: all but the
    // highest-scoring cells come back as the source.
    let mask = GrayImage::from_fn(64, 64, |x, _| image::Luma([if x < 32 { 255 } else { 0 }]));
    let request = EditRequest::new("make it into Ghibli style")
        .steps(3)
        .mask(mask)
        .region_hold(RegionHold::new(1.0).blocks(hold_blocks()));
    let out = editor().edit(&image, &request).unwrap();
    let same = out
        .tokens
        .iter()
        .zip(&source_tokens)
        .filter(|(a, b)| a == b)
        .count();
    assert!(
        same * 100 >= out.tokens.len() * 99,
        "only {same} tokens equal the source"
    );
}

#[test]
fn an_edit_reads_back_only_its_final_tokens_and_image() {
    let image = source();
    let request = EditRequest::new("make the sky blue")
        .steps(3)
        .region_hold(RegionHold::new(0.3).blocks(hold_blocks()));
    let out = editor().edit(&image, &request).unwrap();
    let (h, w) = out.grid;
    let resolution = editor().options().resolution as u64;
    let r = out.readback;
    println!("bytes read back by a 3-step region-hold edit: {r:?}");
    // Nothing inside the loop: no logits, no scores, no tokens.
    assert_eq!(r.in_loop, 0, "{r:?}");
    // The final tokens (i32 or i64 ids) and three fault integers.
    let ids = (h * w + 3) as u64;
    assert!(r.tokens == 4 * ids || r.tokens == 8 * ids, "{r:?}");
    // One f32 RGB image at the model resolution.
    assert_eq!(r.images, 4 * 3 * resolution * resolution, "{r:?}");
    // Logits alone would be codebook x H x W floats per step.
    let logits = 4 * (editor().codebook_size() * h * w) as u64;
    assert!(r.total() - r.images < logits, "{r:?}");

    // A callback that reads the tokens is counted inside the loop.
    let mut on_step = |event: &StepEvent<'_>| {
        event.tokens().unwrap();
        Flow::Continue
    };
    let out = editor()
        .edit_with(&image, &request, Hooks::progress(&mut on_step))
        .unwrap();
    assert!(
        out.readback.in_loop >= 3 * (h * w) as u64 * 4,
        "{:?}",
        out.readback
    );
}

#[test]
fn timings_have_one_transformer_and_sampler_entry_per_step() {
    let image = source();
    let request = EditRequest::new("make the sky blue")
        .steps(3)
        .region_hold(RegionHold::new(0.3).blocks(hold_blocks()))
        .timings(true);
    let out = editor().edit(&image, &request).unwrap();
    let t = &out.timings;
    println!("{}", t.table(Some(editor().load_timings())));
    assert!(t.synced);
    assert_eq!(t.transformer.len(), request.steps, "{t:?}");
    assert_eq!(t.sampler.len(), request.steps, "{t:?}");
    assert!(t.vq_encode.is_some(), "{t:?}");
    assert!(t.total > std::time::Duration::ZERO, "{t:?}");
    let stages = t.text_encoding
        + t.vq_encode.unwrap_or_default()
        + t.transformer.iter().sum::<std::time::Duration>()
        + t.sampler.iter().sum::<std::time::Duration>()
        + t.readback
        + t.vq_decode;
    assert!(stages <= t.total, "{t:?}");
    #[cfg(target_os = "linux")]
    assert!(t.peak_rss.is_some_and(|bytes| bytes > 0), "{t:?}");
    // Waiting for the device reads nothing back: only the final tokens and the image.
    assert_eq!(out.readback.in_loop, 0, "{:?}", out.readback);
    let load = editor().load_timings();
    assert!(load.total >= load.vq + load.transformer + load.text_encoders);
    assert!(load.transformer > std::time::Duration::ZERO);

    // Without the flag the stages are still timed (host times), the same way.
    let out = editor()
        .edit(&image, &request.clone().timings(false))
        .unwrap();
    assert!(!out.timings.synced);
    assert_eq!(out.timings.transformer.len(), request.steps);
    assert_eq!(out.timings.sampler.len(), request.steps);

    // A generation has no VQ encode.
    let generated = editor()
        .generate(&GenerateRequest::new("a white cat").steps(2).timings(true))
        .unwrap();
    assert_eq!(generated.timings.vq_encode, None);
    assert_eq!(generated.timings.transformer.len(), 2);
    assert!(generated.timings.total > std::time::Duration::ZERO);
}
