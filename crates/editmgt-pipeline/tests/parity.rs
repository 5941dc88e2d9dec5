//! The four end-to-end runs of the PyTorch reference (`cases/pipeline.safetensors`), replaying
//! its recorded uniforms: tokens after every step, final tokens, decoded image, and the
//! region-hold run's localisation scores, on the test device (`$EDITMGT_TEST_DEVICE`).
//!
//! Tolerances (fixtures README), at every step and in both modes: >= 99.5% of the tokens
//! identical, a decoded mean abs difference <= 1 (u8), and localisation scores within 1e-4 of
//! their max. Each run is checked twice:
//!
//! - *free-running*, as a user runs it;
//! - *teacher-forced*: after every step the reference's tokens of that step replace ours as the
//!   next step's input, so every step starts from the reference's state, and a difference at one
//!   step cannot hide or excuse one at a later step.

use std::sync::OnceLock;

use editmgt_pipeline::{
    EditRequest, Editor, EditorOptions, Flow, GenerateRequest, Hooks, NoiseSource, RegionHold,
    ReplayNoise, RgbImage, StepEvent,
};
use editmgt_testkit::{Case, case_file, device, model_dir, relative_max_error};
use serde_json::Value;

/// Localisation scores, max abs error relative to their max (the fixtures README's bound for
/// float outputs).
const SCORES_TOL: f32 = 1e-4;
/// Fraction of tokens that must be identical, at every step and at the end.
const TOKENS_IDENTICAL: f64 = 0.995;
/// Decoded image: mean abs difference in u8 levels.
const IMAGE_MEAN_ABS: f64 = 1.0;

fn editor() -> &'static Editor {
    static EDITOR: OnceLock<Editor> = OnceLock::new();
    EDITOR.get_or_init(|| {
        Editor::from_folder(model_dir(), &device(), EditorOptions::default())
            .expect("the tiny fixture model loads")
    })
}

fn case() -> &'static Case {
    static CASE: OnceLock<Case> = OnceLock::new();
    CASE.get_or_init(|| Case::open("pipeline"))
}

/// The run's recorded uniforms in draw order.
fn replay(run: &str, meta: &Value) -> ReplayNoise {
    let draws = meta["uniform_draws"].as_u64().expect("uniform_draws") as usize;
    let draws: Vec<Vec<f32>> = (0..draws)
        .map(|k| case().f32(&format!("{run}.uniform{k}")).data)
        .collect();
    ReplayNoise::from_draws(draws).expect("uniforms in [0, 1]")
}

struct Recorded {
    steps: Vec<Vec<u32>>,
    scores: Vec<Vec<f32>>,
}

/// Fraction of identical tokens, printed.
fn identical(what: &str, ours: &[u32], expected: &[i64]) -> f64 {
    assert_eq!(ours.len(), expected.len(), "{what}: length");
    let same = ours
        .iter()
        .zip(expected)
        .filter(|(a, b)| i64::from(**a) == **b)
        .count();
    println!("{what}: {same}/{} tokens identical", expected.len());
    // The first few differences (position, ours, the reference's), to tell a re-masking near-tie
    // (one side is the mask token) from a sampling or hold difference.
    let differences: Vec<(usize, u32, i64)> = ours
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (a, b))| i64::from(**a) != **b)
        .map(|(i, (a, b))| (i, *a, *b))
        .take(8)
        .collect();
    if !differences.is_empty() {
        println!("{what}: first differences (position, ours, reference): {differences:?}");
    }
    same as f64 / expected.len() as f64
}

fn mean_abs_u8(what: &str, image: &RgbImage, expected: &[u8], shape: &[usize]) -> f64 {
    let (h, w) = (shape[2], shape[3]);
    assert_eq!(
        image.dimensions(),
        (w as u32, h as u32),
        "{what}: image size"
    );
    let mut total = 0u64;
    for (x, y, px) in image.enumerate_pixels() {
        for c in 0..3 {
            let e = expected[c * h * w + y as usize * w + x as usize];
            total += u64::from(px.0[c].abs_diff(e));
        }
    }
    let mean = total as f64 / expected.len() as f64;
    println!("{what}: decoded image mean abs difference {mean:.4} (u8)");
    mean
}

fn run(name: &str, forced: bool) {
    run_on(editor(), name, forced, true);
}

/// Runs `name` on `editor` and compares it with the reference's run: the fraction of final tokens
/// identical and the decoded image's mean abs difference. With `check`, fails when they are
/// outside the tolerances (and on the per-step tokens and scores); without, only reports.
fn run_on(editor: &Editor, name: &str, forced: bool, check: bool) -> (f64, f64) {
    let meta = &case().meta["runs"][name];
    assert!(meta.is_object(), "pipeline fixture has no run `{name}`");
    let negative = case().meta["default_negative_prompt"]
        .as_str()
        .expect("default negative");
    let steps = meta["steps"].as_u64().unwrap() as usize;
    let guidance = meta["guidance_scale"].as_f64().unwrap() as f32;
    let prompt = meta["prompt"].as_str().unwrap();

    let mut recorded = Recorded {
        steps: Vec::new(),
        scores: Vec::new(),
    };
    let mut progress = |event: &StepEvent<'_>| {
        recorded
            .steps
            .push(event.tokens().expect("tokens").remove(0));
        if let Some(mut scores) = event.scores().expect("scores") {
            recorded.scores.push(scores.remove(0));
        }
        Flow::Continue
    };
    let mut noise = replay(name, meta);
    let noise_box: Box<dyn NoiseSource + '_> = Box::new(&mut noise);
    // Teacher forcing: after step s (1-based) the next input is the reference's step s - 1.
    let mut force = |step: usize| -> Option<Vec<u32>> {
        (step < steps).then(|| {
            case()
                .i64(&format!("{name}.tokens.step{}", step - 1))
                .data
                .iter()
                .map(|&t| u32::try_from(t).expect("token ids fit u32"))
                .collect()
        })
    };
    let mut hooks = Hooks::progress(&mut progress).with_noise(vec![noise_box]);
    if forced {
        hooks = hooks.with_forced_tokens(&mut force);
    }
    let mode = if forced {
        "teacher-forced"
    } else {
        "free-running"
    };

    let (image, tokens) = match meta["source"].as_str() {
        None => {
            let request = GenerateRequest::new(prompt)
                .negative_prompt(negative)
                .steps(steps)
                .guidance(guidance);
            let out = editor.generate_with(&request, hooks).unwrap();
            (out.image, out.tokens)
        }
        Some(source) => {
            let source = editmgt_pipeline::load_image(case_file(source)).unwrap();
            let mut request = EditRequest::new(prompt)
                .negative_prompt(negative)
                .steps(steps)
                .guidance(guidance)
                .reference_strength(meta["reference_strength"].as_f64().unwrap() as f32);
            if let Some(mask) = meta["mask"].as_str() {
                request = request.mask(editmgt_pipeline::load_mask(case_file(mask)).unwrap());
            }
            if let Some(blocks) = meta["region_hold_blocks"].as_array() {
                let blocks = blocks.iter().map(|b| b.as_u64().unwrap() as usize);
                let threshold = meta["local_guidance"].as_f64().unwrap() as f32;
                request = request.region_hold(RegionHold::new(threshold).blocks(blocks));
            }
            let out = editor.edit_with(&source, &request, hooks).unwrap();
            (out.image, out.tokens)
        }
    };
    assert_eq!(
        noise.remaining(),
        0,
        "{name}: every recorded uniform is used"
    );

    assert_eq!(recorded.steps.len(), steps);
    let expected = case().i64(&format!("{name}.tokens"));
    let frac = identical(&format!("{name} {mode} final"), &tokens, &expected.data);
    let expected_image = case().u8(&format!("{name}.image_u8"));
    let mean = mean_abs_u8(
        &format!("{name} {mode}"),
        &image,
        &expected_image.data,
        &expected_image.shape,
    );
    if check {
        check_steps(name, mode, steps, meta, &recorded);
        assert!(
            frac >= TOKENS_IDENTICAL,
            "{name} {mode}: only {frac:.4} of final tokens identical"
        );
        assert!(
            mean <= IMAGE_MEAN_ABS,
            "{name} {mode}: mean abs difference {mean:.4} > {IMAGE_MEAN_ABS}"
        );
    }
    (frac, mean)
}

/// Fails when a step's tokens, or (with region hold) its localisation scores, are outside the
/// tolerances against the reference's step `s`.
fn check_steps(name: &str, mode: &str, steps: usize, meta: &Value, recorded: &Recorded) {
    for (s, ours) in recorded.steps.iter().enumerate() {
        let expected = case().i64(&format!("{name}.tokens.step{s}"));
        let frac = identical(&format!("{name} {mode} step {s}"), ours, &expected.data);
        assert!(
            frac >= TOKENS_IDENTICAL,
            "{name} {mode} step {s}: only {frac:.4} of the tokens identical"
        );
    }

    let score_names: Vec<String> = (0..steps)
        .map(|s| format!("{name}.local_scores.step{s}"))
        .filter(|n| case().has(n))
        .collect();
    if meta["region_hold_blocks"].is_array() {
        assert_eq!(score_names.len(), steps, "{name}: fixture scores per step");
        assert_eq!(recorded.scores.len(), steps, "{name}: our scores per step");
        for (s, ours) in recorded.scores.iter().enumerate() {
            let expected = case().f32(&score_names[s]);
            let err = relative_max_error(ours, &expected.data);
            println!("{name} {mode} step {s}: localisation scores error {err:.2e}");
            assert!(
                err <= SCORES_TOL,
                "{name} {mode} step {s}: scores error {err:.3e} > {SCORES_TOL:e}"
            );
        }
    } else {
        assert!(
            recorded.scores.is_empty(),
            "{name}: scores without region hold"
        );
    }
}

/// The accuracy of `--dtype bf16` on the CPU (bf16 products, issue 14): the four end-to-end runs,
/// free-running with the reference's noise, on an editor loaded in bf16, against the reference's
/// f32 runs. A report, not a parity test (bf16 rounding may flip near-tied tokens, and a flip
/// changes what the next steps see): run with `--ignored --nocapture`. It fails when the editor
/// does not take the bf16 products on a CPU that has them, or when a run does not complete.
#[test]
#[ignore = "a report: the bf16 products' accuracy on the four end-to-end runs"]
fn bf16_products_report() {
    let options = EditorOptions {
        float: editmgt_pipeline::FloatType::BF16,
        ..EditorOptions::default()
    };
    let bf16 = Editor::from_folder(model_dir(), &device(), options).expect("loads in bf16");
    if editmgt_testkit::on_cpu() {
        assert_eq!(
            bf16.bf16_products(),
            editmgt_core::bf16_products::isa(),
            "bf16 on the CPU takes the bf16 products where the CPU has them"
        );
    }
    println!("bf16 products on: {:?}", bf16.bf16_products());
    for name in [
        "edit_plain",
        "edit_region_hold",
        "edit_mask",
        "text_to_image",
    ] {
        let (f32_frac, f32_mean) = run_on(editor(), name, false, false);
        let (frac, mean) = run_on(&bf16, name, false, false);
        println!(
            "| {name} | f32: {f32_frac:.4} tokens identical, image {f32_mean:.3} | \
             bf16 products: {frac:.4} tokens identical, image {mean:.3} |"
        );
    }
}

#[test]
fn edit_plain() {
    run("edit_plain", false);
}

#[test]
fn edit_plain_teacher_forced() {
    run("edit_plain", true);
}

#[test]
fn edit_region_hold() {
    run("edit_region_hold", false);
}

#[test]
fn edit_region_hold_teacher_forced() {
    run("edit_region_hold", true);
}

#[test]
fn edit_mask() {
    run("edit_mask", false);
}

#[test]
fn edit_mask_teacher_forced() {
    run("edit_mask", true);
}

#[test]
fn text_to_image() {
    run("text_to_image", false);
}

#[test]
fn text_to_image_teacher_forced() {
    run("text_to_image", true);
}

/// The VQ tokens of the 1024x1024 source on the test device, against the reference's: in the
/// mask run every cell outside the mask keeps its source token, so the run's final tokens there
/// are the reference's tokenisation of the source. The same tolerance as the runs' tokens.
#[test]
fn source_tokens_at_full_size() {
    let meta = &case().meta["runs"]["edit_mask"];
    let mask = editmgt_pipeline::load_mask(case_file(meta["mask"].as_str().expect("mask")))
        .expect("mask image");
    let source = editmgt_pipeline::load_image(case_file(meta["source"].as_str().expect("source")))
        .expect("source image");
    let vq = editmgt_vq::VqModel::from_folder(
        model_dir().join("vqvae"),
        &device(),
        editmgt_pipeline::FloatType::F32,
    )
    .expect("the fixture VQ loads");
    let images = editmgt_vq::imaging::to_tensor(&[&source], &device()).expect("source tensor");
    let tokens = vq.tokenize(images).expect("tokenize");
    let [_, h, w] = tokens.dims();
    let ours: Vec<i64> = tokens
        .reshape([h * w])
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("token ids");
    let expected = case().i64("edit_mask.tokens");
    assert_eq!(expected.data.len(), h * w, "token grid of the mask run");
    let kept = editmgt_pipeline::mask_grid(&mask, h, w);
    let (mut same, mut total) = (0usize, 0usize);
    for ((&a, &b), &repainted) in ours.iter().zip(&expected.data).zip(&kept) {
        if !repainted {
            total += 1;
            same += usize::from(a == b);
        }
    }
    println!("source tokens at {h}x{w}: {same}/{total} kept cells identical");
    assert!(total > 0, "the mask keeps some cells");
    let frac = same as f64 / total as f64;
    assert!(
        frac >= TOKENS_IDENTICAL,
        "only {frac:.4} of the source tokens identical"
    );
}
