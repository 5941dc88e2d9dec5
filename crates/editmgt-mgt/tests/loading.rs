//! Configurations, checkpoint names and shapes, float types, shards and loading errors.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use common::{Inputs, case_named};
use editmgt_core::LoadError;
use editmgt_core::shapes::{parameter_count, parameter_table};
use editmgt_mgt::{Connector, FloatType, MgtConfig, MgtError, MgtTransformer};
use editmgt_testkit::weights::{Tensors, read_f32_safetensors, write_safetensors};
use editmgt_testkit::{Case, RealShapes, assert_close, model_dir, relative_max_error, to_f32_vec};
use safetensors::tensor::Dtype;

/// The released configuration builds a model with exactly the released tensor names and
/// shapes, and its parameter count, without materialising anything.
#[test]
fn real_shapes_match_the_release() {
    let shapes = RealShapes::load("editmgt");
    let config =
        MgtConfig::from_json_value(shapes.config.clone(), Path::new("real-shapes/editmgt.json"))
            .expect("the released configuration is supported");
    assert_eq!(config.connector(), Connector::Linear);
    let model = MgtTransformer::new(&config, &editmgt_testkit::device()).expect("model");
    let table = parameter_table(&model, &MgtTransformer::checkpoint_keys());
    let ours: BTreeMap<String, Vec<usize>> = table
        .iter()
        .map(|p| (p.checkpoint_name.clone(), p.shape.clone()))
        .collect();
    assert_eq!(
        ours.len(),
        table.len(),
        "two parameters share a checkpoint name"
    );
    let missing: Vec<&String> = shapes
        .tensors
        .keys()
        .filter(|k| !ours.contains_key(*k))
        .collect();
    let extra: Vec<&String> = ours
        .keys()
        .filter(|k| !shapes.tensors.contains_key(*k))
        .collect();
    assert!(missing.is_empty(), "not in the model: {missing:?}");
    assert!(extra.is_empty(), "not in the release: {extra:?}");
    for (name, shape) in &shapes.tensors {
        assert_eq!(&ours[name], shape, "shape of {name}");
    }
    let count = parameter_count(&table) as u64;
    println!("real-shape parameters: {count}");
    assert_eq!(count, shapes.parameters);
    assert_eq!(count, 1_009_306_624);
    assert!(!model.mlm_layer.conv2.weight.is_initialized());
    assert!(
        !model.transformer_blocks[13]
            .ff
            .proj_in
            .weight
            .is_initialized()
    );
    assert!(
        !model.single_transformer_blocks[27]
            .proj_out
            .weight
            .is_initialized()
    );
}

/// A plain Meissonic configuration (no connector, CLIP text) is accepted.
#[test]
fn meissonic_configuration_is_accepted() {
    let json = serde_json::json!({
        "_class_name": "Transformer2DModel",
        "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56],
        "codebook_size": 8192,
        "downsample": true,
        "guidance_embeds": false,
        "in_channels": 64,
        "joint_attention_dim": 1024,
        "num_attention_heads": 8,
        "num_layers": 14,
        "num_single_layers": 28,
        "patch_size": 1,
        "pooled_projection_dim": 1024,
        "upsample": true,
        "vocab_size": 8256
    });
    let config = MgtConfig::from_json_value(json, Path::new("meissonic/config.json")).unwrap();
    assert_eq!(config.connector(), Connector::None);
    assert_eq!(config.text_encoder().text_length(), 77);
    let model = MgtTransformer::new(&config, &editmgt_testkit::device()).unwrap();
    let table = parameter_table(&model, &MgtTransformer::checkpoint_keys());
    assert!(
        table
            .iter()
            .all(|p| !p.checkpoint_name.starts_with("connector"))
    );
    let context = table
        .iter()
        .find(|p| p.checkpoint_name == "context_embedder.weight")
        .unwrap();
    assert_eq!(context.shape, vec![1024, 1024]);
}

/// Unsupported values are refused by name.
#[test]
fn unsupported_configuration_values_are_named() {
    let base = RealShapes::load("editmgt").config;
    for (field, value) in [
        ("connector_type", serde_json::json!("qformer")),
        ("text_encoder_architecture", serde_json::json!("CLIP_T5-xl")),
        ("guidance_embeds", serde_json::json!(true)),
        ("patch_size", serde_json::json!(2)),
        ("axes_dims_rope", serde_json::json!([16, 56, 48])),
    ] {
        let mut json = base.clone();
        json[field] = value;
        match MgtConfig::from_json_value(json, Path::new("editmgt/config.json")) {
            Err(LoadError::Unsupported { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected Unsupported, got {other:?}"),
        }
    }
}

/// The tiny checkpoint's tensors as `(name, shape, f32 values)`.
fn tiny_tensors() -> Tensors {
    read_f32_safetensors(&model_dir().join("editmgt/diffusion_pytorch_model.safetensors"))
}

/// A transformer folder with the tiny configuration and the given weights.
fn folder_with(tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        model_dir().join("editmgt/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    write_safetensors(
        &dir.path().join("diffusion_pytorch_model.safetensors"),
        tensors,
        dtype,
    );
    dir
}

/// The `edit_strength` logits (reference, strength 1.1) of a model.
fn edit_logits(model: &MgtTransformer, device: &Device) -> Vec<f32> {
    let case = Case::open("mgt");
    let inputs = Inputs::open(&case, device);
    let params = case_named(&case, "edit_strength");
    let out = model
        .forward(inputs.input(model, &params, device))
        .expect("forward");
    to_f32_vec(out.logits)
}

/// float16 / bfloat16 copies of the tiny weights load (into float32 and into half-precision
/// models) and agree with the reference within half-precision tolerance.
#[test]
fn half_precision_weights_agree() {
    let device = editmgt_testkit::device();
    let case = Case::open("mgt");
    let expected = case.f32("edit_strength.logits").data;
    let tensors = tiny_tensors();
    for (dtype, compute, tol) in [
        (Dtype::F16, FloatType::F32, 3e-3),
        (Dtype::BF16, FloatType::F32, 2e-2),
        (Dtype::F32, FloatType::F16, 5e-3),
        (Dtype::F32, FloatType::BF16, 4e-2),
        (Dtype::BF16, FloatType::BF16, 4e-2),
    ] {
        let dir = folder_with(&tensors, dtype);
        let model = MgtTransformer::load_folder(dir.path(), &device, compute)
            .unwrap_or_else(|e| panic!("{dtype:?} weights as {compute}: {e}"));
        assert_eq!(model.float_type(), compute);
        // bf16 on the CPU: bf16 products where the CPU has them, f32 elsewhere.
        let products = if compute == FloatType::BF16 && editmgt_testkit::on_cpu() {
            editmgt_core::bf16_products::isa()
        } else {
            None
        };
        assert_eq!(
            model.bf16_products(),
            products,
            "{dtype:?} weights as {compute}"
        );
        let logits = edit_logits(&model, &device);
        assert_close(
            &format!("edit_strength.logits, {dtype:?} weights computed in {compute}"),
            &logits,
            &expected,
            tol,
        );
    }
}

/// Sharded weights (`*.safetensors.index.json`) load to the same model.
#[test]
fn sharded_weights_load() {
    let device = editmgt_testkit::device();
    let tensors = tiny_tensors();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        model_dir().join("editmgt/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let half = tensors.len() / 2;
    let shards = [
        (
            "diffusion_pytorch_model-00001-of-00002.safetensors",
            &tensors[..half],
        ),
        (
            "diffusion_pytorch_model-00002-of-00002.safetensors",
            &tensors[half..],
        ),
    ];
    let mut weight_map = serde_json::Map::new();
    for (file, part) in shards {
        write_safetensors(&dir.path().join(file), part, Dtype::F32);
        for (name, _, _) in part {
            weight_map.insert(name.clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path()
            .join("diffusion_pytorch_model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
    let sharded = MgtTransformer::load_folder(dir.path(), &device, FloatType::F32).unwrap();
    let single = common::tiny_model(&device);
    let a = edit_logits(&sharded, &device);
    let b = edit_logits(&single, &device);
    assert_eq!(relative_max_error(&a, &b), 0.0);
}

/// A checkpoint that does not fit names the tensor at fault.
#[test]
fn mismatched_checkpoints_name_the_tensor() {
    let device = editmgt_testkit::device();
    let tensors = tiny_tensors();

    let bad = "transformer_blocks.1.attn.to_q.weight";
    let mut wrong_shape = tensors.clone();
    let entry = wrong_shape.iter_mut().find(|t| t.0 == bad).unwrap();
    entry.1 = vec![entry.1[0] / 2, entry.1[1]];
    entry.2.truncate(entry.1.iter().product());
    let dir = folder_with(&wrong_shape, Dtype::F32);
    match MgtTransformer::load_folder(dir.path(), &device, FloatType::F32) {
        Err(MgtError::Load(LoadError::ShapeMismatch { tensor, .. })) => assert_eq!(tensor, bad),
        other => panic!("expected a shape mismatch, got {other:?}"),
    }

    let gone = "mlm_layer.conv2.weight";
    let missing: Vec<_> = tensors.iter().filter(|t| t.0 != gone).cloned().collect();
    let dir = folder_with(&missing, Dtype::F32);
    match MgtTransformer::load_folder(dir.path(), &device, FloatType::F32) {
        Err(MgtError::Load(LoadError::MissingTensors { tensors, .. })) => {
            assert_eq!(tensors, vec![gone.to_string()])
        }
        other => panic!("expected missing tensors, got {other:?}"),
    }

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        MgtTransformer::load(empty.path(), &device, FloatType::F32),
        Err(MgtError::Load(LoadError::MissingFolder { .. }))
    ));
}
