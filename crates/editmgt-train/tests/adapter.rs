//! A trained adapter saved in peft's format and loaded into an `Editor`: it changes the edit,
//! and applying it unmerged equals merging it into the weights.

use burn::tensor::Device;
use editmgt_core::FloatType;
use editmgt_mgt::{LoraStreams, MgtTransformer, PeftAdapter};
use editmgt_pipeline::{EditRequest, Editor, EditorOptions, LoraOptions, RgbImage};
use editmgt_testkit::model_dir;
use editmgt_train::lora::{adapter_config, save_adapter};
use editmgt_train::{LoraConfig, TrainConfig, Trainer};

/// An adapter with non-zero factors on every `to_q/k/v`: attach fresh ones and give `B` values
/// (a fresh adapter's `B` is zero).
fn adapter_dir(device: &Device) -> tempfile::TempDir {
    let model = MgtTransformer::load(&model_dir(), device, FloatType::F32).expect("tiny model");
    let lora = LoraConfig {
        rank: 2,
        streams: LoraStreams::All,
        ..LoraConfig::default()
    };
    let config = TrainConfig {
        lora: Some(lora.clone()),
        ..TrainConfig::default()
    };
    let trainer = Trainer::new(model, config, std::slice::from_ref(device)).expect("trainer");
    let mut model = trainer.inference_model(false);
    let paths: Vec<String> = model.adapters().iter().map(|(p, _)| p.clone()).collect();
    for path in &paths {
        let base = model.adapter_base(path).expect("base");
        let [d_in, d_out] = base.weight.dims();
        let a = burn::tensor::Tensor::<2>::random(
            [lora.rank, d_in],
            burn::tensor::Distribution::Uniform(-0.5, 0.5),
            device,
        );
        let b = burn::tensor::Tensor::<2>::random(
            [d_out, lora.rank],
            burn::tensor::Distribution::Uniform(-0.5, 0.5),
            device,
        );
        model
            .attach_adapter(path, editmgt_mgt::LoraAdapter::new(a, b, lora.scaling()))
            .expect("attach");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    save_adapter(&model, &adapter_config(&lora), dir.path()).expect("save");
    dir
}

#[test]
fn saved_adapter_reads_back_in_peft_naming() {
    let device = Device::flex();
    let dir = adapter_dir(&device);
    let adapter = PeftAdapter::read(dir.path()).expect("read");
    let model = MgtTransformer::load(&model_dir(), &device, FloatType::F32).unwrap();
    let expected = model.transformer_blocks.len() * 3 + model.single_transformer_blocks.len() * 3;
    assert_eq!(adapter.factors.len(), expected);
    assert!(
        adapter
            .factors
            .contains_key("transformer_blocks.0.attn.to_q")
    );
    assert_eq!(adapter.config.r, 2);
    // A missing folder is a typed error naming the file.
    let err = PeftAdapter::read(&dir.path().join("absent")).unwrap_err();
    assert!(err.to_string().contains("absent"), "{err}");
}

#[test]
fn editor_applies_and_merges_an_adapter() {
    let device = Device::flex();
    let dir = adapter_dir(&device);
    let image = RgbImage::from_fn(96, 80, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 5) as u8, ((x + y) * 7) as u8])
    });
    let request = EditRequest::new("make it into Ghibli style")
        .steps(2)
        .seed(3);
    let edit = |lora: Option<LoraOptions>| {
        let options = EditorOptions {
            resolution: 128,
            lora,
            ..EditorOptions::default()
        };
        let editor = Editor::from_folder(model_dir(), &device, options).expect("editor");
        editor.edit(&image, &request).expect("edit").tokens
    };
    let plain = edit(None);
    let applied = edit(Some(LoraOptions::new(dir.path())));
    let merged = edit(Some(LoraOptions {
        merge: true,
        ..LoraOptions::new(dir.path())
    }));
    let same = |a: &[u32], b: &[u32]| {
        a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
    };
    println!(
        "adapter: {:.1}% of tokens as without it; merged vs applied {:.1}% identical",
        same(&applied, &plain) * 100.0,
        same(&merged, &applied) * 100.0
    );
    assert!(same(&applied, &plain) < 0.9, "the adapter changes the edit");
    assert!(
        same(&merged, &applied) >= 0.99,
        "merged weights edit like the applied adapter"
    );
    // Merging a reference-only adapter is refused.
    let options = EditorOptions {
        resolution: 128,
        lora: Some(LoraOptions {
            merge: true,
            streams: LoraStreams::Reference,
            ..LoraOptions::new(dir.path())
        }),
        ..EditorOptions::default()
    };
    assert!(Editor::from_folder(model_dir(), &device, options).is_err());
}
