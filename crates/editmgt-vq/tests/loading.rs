//! The released layout (real tensor names and shapes) and typed errors on bad inputs.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use editmgt_core::shapes::parameter_count;
use editmgt_core::{FloatType, LoadError};
use editmgt_testkit::model_dir;
use editmgt_testkit::weights::{Tensors, read_f32_safetensors, write_safetensors};
use editmgt_vq::{VqError, VqModel, imaging};
use safetensors::Dtype;

#[test]
fn real_configuration_has_the_released_names_and_shapes() {
    let (real, config) = common::real_config();
    let device = editmgt_testkit::device();
    let model = VqModel::new(&config, &device);
    let table = model.parameter_table();
    let ours: BTreeMap<String, Vec<usize>> = table
        .iter()
        .map(|p| (p.checkpoint_name.clone(), p.shape.clone()))
        .collect();
    let missing: Vec<_> = real
        .tensors
        .keys()
        .filter(|k| !ours.contains_key(*k))
        .collect();
    let extra: Vec<_> = ours
        .keys()
        .filter(|k| !real.tensors.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "released tensors we do not have: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "our parameters not in the release: {extra:?}"
    );
    for (name, shape) in &real.tensors {
        assert_eq!(&ours[name], shape, "shape of {name}");
    }
    assert_eq!(table.len(), real.tensors.len());
    assert_eq!(parameter_count(&table) as u64, real.parameters);
    assert_eq!(model.downsampling_factor(), 16);
    assert_eq!(model.codebook_size(), 8192);
}

/// Rewrites the tiny weights into `dir` after `edit` changes the tensor list.
fn write_modified(dir: &Path, edit: impl FnOnce(&mut Tensors)) {
    let src = model_dir().join("vqvae");
    let mut tensors = read_f32_safetensors(&src.join("diffusion_pytorch_model.safetensors"));
    edit(&mut tensors);
    std::fs::create_dir_all(dir).unwrap();
    write_safetensors(
        &dir.join("diffusion_pytorch_model.safetensors"),
        &tensors,
        Dtype::F32,
    );
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
}

fn load(dir: &Path) -> Result<VqModel, VqError> {
    VqModel::from_folder(dir, &editmgt_testkit::device(), FloatType::F32)
}

#[test]
fn bad_model_folders_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();

    let err = load(&tmp.path().join("absent")).unwrap_err();
    assert!(
        matches!(err, VqError::Load(LoadError::MissingFolder { .. })),
        "{err}"
    );

    let dir = tmp.path().join("no-weights");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        model_dir().join("vqvae/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(err, VqError::Load(LoadError::MissingFile { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("diffusion_pytorch_model.safetensors"),
        "{err}"
    );

    let dir = tmp.path().join("truncated");
    write_modified(&dir, |_| {});
    let file = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(err, VqError::Load(LoadError::CorruptWeights { .. })),
        "{err}"
    );

    let dir = tmp.path().join("wrong-shape");
    write_modified(&dir, |t| {
        let entry = t
            .iter_mut()
            .find(|(n, _, _)| n == "quant_conv.weight")
            .unwrap();
        entry.1 = vec![entry.1[1], entry.1[0] * entry.1[2] * entry.1[3]];
    });
    let err = load(&dir).unwrap_err();
    match &err {
        VqError::Load(LoadError::ShapeMismatch { tensor, .. }) => {
            assert_eq!(tensor, "quant_conv.weight")
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    assert!(err.to_string().contains("quant_conv.weight"), "{err}");

    let dir = tmp.path().join("missing-tensor");
    write_modified(&dir, |t| t.retain(|(n, _, _)| n != "decoder.conv_out.bias"));
    let err = load(&dir).unwrap_err();
    match &err {
        VqError::Load(LoadError::MissingTensors { tensors, .. }) => {
            assert_eq!(tensors, &vec!["decoder.conv_out.bias".to_string()])
        }
        other => panic!("expected missing tensors, got {other}"),
    }

    let dir = tmp.path().join("unsupported");
    write_modified(&dir, |_| {});
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["norm_type"] = "spatial".into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = load(&dir).unwrap_err();
    match &err {
        VqError::Load(LoadError::Unsupported { field, value, .. }) => {
            assert_eq!(field, "norm_type");
            assert_eq!(value, "\"spatial\"");
        }
        other => panic!("expected an unsupported value, got {other}"),
    }
    for (field, value) in [
        ("mid_block_add_attention", serde_json::json!(true)),
        ("lookup_from_codebook", serde_json::json!(false)),
        ("act_fn", serde_json::json!("gelu")),
        (
            "down_block_types",
            serde_json::json!(vec!["AttnDownEncoderBlock2D"; 5]),
        ),
    ] {
        let mut c = config.clone();
        c["norm_type"] = "group".into();
        c[field] = value;
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        match load(&dir).unwrap_err() {
            VqError::Load(LoadError::Unsupported { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected an unsupported value, got {other}"),
        }
    }
    // A missing field takes diffusers' default, which for mid-block attention is unsupported.
    let mut c = config.clone();
    c["norm_type"] = "group".into();
    c.as_object_mut().unwrap().remove("mid_block_add_attention");
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    assert!(matches!(
        load(&dir).unwrap_err(),
        VqError::Load(LoadError::Unsupported { .. })
    ));

    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert!(matches!(
        load(&dir).unwrap_err(),
        VqError::Load(LoadError::Json { .. })
    ));
}

#[test]
fn bad_images_are_typed_errors() {
    let err = imaging::decode_rgb(b"definitely not an image").unwrap_err();
    assert!(matches!(err, VqError::ImageBytes(_)), "{err}");
    let err = imaging::load_rgb("/nonexistent/photo.png").unwrap_err();
    assert!(matches!(err, VqError::ImageFile { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/photo.png"));

    let device = editmgt_testkit::device();
    let model = VqModel::from_folder(model_dir().join("vqvae"), &device, FloatType::F32).unwrap();
    // Sizes from the loaded model: a height that is not a multiple of its factor.
    let f = model.downsampling_factor();
    let odd = Tensor::<4>::zeros([1, 3, 2 * f + f / 2, 2 * f], &device);
    match model.encode(odd).unwrap_err() {
        VqError::InvalidImageSize {
            height,
            width,
            factor,
        } => assert_eq!((height, width, factor), (2 * f + f / 2, 2 * f, f)),
        other => panic!("expected an invalid size, got {other}"),
    }
    let grey = Tensor::<4>::zeros([1, 1, 2 * f, 2 * f], &device);
    assert!(matches!(
        model.encode(grey).unwrap_err(),
        VqError::InvalidShape { .. }
    ));
    let codebook_size = model.codebook_size() as i64;
    let tokens = Tensor::<3, burn::tensor::Int>::from_data(
        TensorData::new(vec![0i64, 1, codebook_size, 0], [1, 2, 2]),
        &device,
    );
    match model.decode(tokens).unwrap_err() {
        VqError::TokenOutOfRange { token, codebook } => {
            assert_eq!((token, codebook as i64), (codebook_size, codebook_size))
        }
        other => panic!("expected an out-of-range token, got {other}"),
    }
    assert!(matches!(
        imaging::to_tensor::<image::RgbImage>(&[], &device).unwrap_err(),
        VqError::EmptyBatch
    ));
}

#[test]
fn images_round_trip_through_tensors_and_files() {
    let device = editmgt_testkit::device();
    let source = imaging::load_rgb(editmgt_testkit::case_file("source.png")).unwrap();
    let small = imaging::resize(&source, 48, 32);
    assert_eq!(small.dimensions(), (48, 32));
    let tensor = imaging::to_tensor(&[small.clone(), small.clone()], &device).unwrap();
    assert_eq!(tensor.dims(), [2, 3, 32, 48]);
    let back = imaging::from_tensor(tensor).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back[1], small);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("small.png");
    imaging::save(&small, &path).unwrap();
    assert_eq!(imaging::load_rgb(&path).unwrap(), small);
    let png = std::fs::read(&path).unwrap();
    assert_eq!(imaging::decode_rgb(&png).unwrap(), small);
    // Clipping and rounding.
    assert_eq!(imaging::to_u8(-0.5), 0);
    assert_eq!(imaging::to_u8(1.5), 255);
    assert_eq!(imaging::to_u8(0.5), 128); // 127.5 rounds to even
    let mixed = imaging::to_tensor(&[small, imaging::resize(&source, 16, 16)], &device);
    assert!(matches!(
        mixed.unwrap_err(),
        VqError::MixedSizes { index: 1, .. }
    ));
}

#[test]
fn any_batch_and_size_divisible_by_the_factor() {
    let device = editmgt_testkit::device();
    let model = VqModel::from_folder(model_dir().join("vqvae"), &device, FloatType::F32).unwrap();
    let images = Tensor::<4>::random(
        [3, 3, 48, 80],
        burn::tensor::Distribution::Uniform(0.0, 1.0),
        &device,
    );
    let tokens = model.tokenize(images).unwrap();
    assert_eq!(tokens.dims(), [3, 3, 5]);
    let decoded = model.decode(tokens).unwrap();
    assert_eq!(decoded.dims(), [3, 3, 48, 80]);
}
