//! Tests of the generator on the tiny model's shapes (the real shapes would write gigabytes):
//! the written folder must have exactly the tiny model's files, tensor names and shapes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use safetensors::{Dtype as StDtype, SafeTensors};
use serde_json::{Value, json};

use super::rng::{CHUNK, Init, init_for};
use super::writer::{Dtype, PlannedTensor, Progress, write_safetensors};
use super::*;

fn tiny_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny")
}

fn read_json_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every tensor of a safetensors file: name -> (dtype, shape, values as f32).
fn read_tensors(path: &Path) -> BTreeMap<String, (StDtype, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: not a safetensors file: {e}", path.display()));
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                StDtype::F32 => data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                StDtype::F16 => data
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                StDtype::BF16 => data
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (view.dtype(), view.shape().to_vec(), values))
        })
        .collect()
}

/// Shapes files made from the tiny model (its configs and its tensors' names and shapes).
fn tiny_shapes(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for component in Component::ALL {
        let folder = tiny_root().join(component.name());
        let config = read_json_file(&folder.join("config.json"));
        let weights = folder.join(format!("{}.safetensors", component.stem()));
        let tensors: serde_json::Map<String, Value> = read_tensors(&weights)
            .into_iter()
            .map(|(name, (_, shape, _))| (name, json!(shape)))
            .collect();
        let spec = json!({ "config": config, "tensors": tensors });
        let path = dir.join(format!("{}.json", component.name()));
        std::fs::write(path, serde_json::to_string(&spec).unwrap()).unwrap();
    }
}

fn tiny_options(root: &Path, out: &str, dtype: Dtype, seed: u64) -> Options {
    let shapes = root.join("shapes");
    if !shapes.is_dir() {
        tiny_shapes(&shapes);
    }
    let mut options = Options::new(root.join(out), dtype);
    options.shapes = Some(shapes);
    options.seed = seed;
    options.threads = 2;
    options
}

fn file_names(folder: &Path) -> BTreeSet<String> {
    std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != MARKER)
        .collect()
}

#[test]
fn writes_the_tiny_models_layout_names_and_shapes() {
    let root = tempfile::tempdir().unwrap();
    let options = tiny_options(root.path(), "model", Dtype::Bf16, 7);
    let reports = run(&options).unwrap();
    assert_eq!(reports.len(), 4);
    assert!(reports.iter().all(|r| !r.cached && r.bytes > 0));

    for folder in [
        "editmgt",
        "vqvae",
        "text_encoder",
        "tokenizer",
        "llm_encoder",
        "scheduler",
    ] {
        assert_eq!(
            file_names(&options.out.join(folder)),
            file_names(&tiny_root().join(folder)),
            "files of {folder}/"
        );
    }
    assert_eq!(
        read_json_file(&options.out.join("scheduler/scheduler_config.json")),
        read_json_file(&tiny_root().join("scheduler/scheduler_config.json"))
    );

    for component in Component::ALL {
        let name = component.name();
        let file = format!("{}.safetensors", component.stem());
        let expected = read_tensors(&tiny_root().join(name).join(&file));
        let written = read_tensors(&options.out.join(name).join(&file));
        assert_eq!(
            written.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{name}: tensor names"
        );
        for (tensor, (dtype, shape, values)) in &written {
            assert_eq!(*dtype, StDtype::BF16, "{name}: {tensor}");
            assert_eq!(shape, &expected[tensor].1, "{name}: {tensor}");
            assert!(values.iter().all(|v| v.is_finite()), "{name}: {tensor}");
            assert!(values.iter().all(|v| v.abs() < 8.0), "{name}: {tensor}");
        }
        // The configuration keeps every entry of the tiny model's.
        let config = read_json_file(&options.out.join(name).join("config.json"));
        let tiny = read_json_file(&tiny_root().join(name).join("config.json"));
        for (key, value) in tiny.as_object().unwrap() {
            if key != "torch_dtype" {
                assert_eq!(config.get(key), Some(value), "{name}/config.json: {key}");
            }
        }
    }
}

#[test]
fn the_same_seed_writes_the_same_bytes_and_another_seed_other_values() {
    let root = tempfile::tempdir().unwrap();
    let mut first = tiny_options(root.path(), "a", Dtype::F16, 3);
    first.components = vec![Component::Vqvae, Component::LlmEncoder];
    let mut again = first.clone();
    again.out = root.path().join("b");
    again.threads = 1;
    let mut other = first.clone();
    other.out = root.path().join("c");
    other.seed = 4;
    for options in [&first, &again, &other] {
        run(options).unwrap();
    }
    for file in [
        "vqvae/diffusion_pytorch_model.safetensors",
        "llm_encoder/model.safetensors",
        "llm_encoder/tokenizer.json",
    ] {
        let a = std::fs::read(first.out.join(file)).unwrap();
        assert_eq!(a, std::fs::read(again.out.join(file)).unwrap(), "{file}");
        if file.ends_with(".safetensors") {
            assert_ne!(a, std::fs::read(other.out.join(file)).unwrap(), "{file}");
        }
    }
}

#[test]
fn values_do_not_depend_on_chunking_threads_or_order() {
    let root = tempfile::tempdir().unwrap();
    let tensor = |name: &str, shape: Vec<usize>| PlannedTensor {
        name: name.into(),
        init: init_for(name, &shape, false),
        seed: tensor_seed(1, "test", name),
        shape,
    };
    let big = tensor("big.weight", vec![5, CHUNK / 2]);
    let small = tensor("small.bias", vec![3]);
    let write = |file: &str, tensors: &[PlannedTensor], threads| {
        let path = root.path().join(file);
        let mut progress = Progress::new("test", 0);
        write_safetensors(&path, tensors, Dtype::F32, threads, &mut progress).unwrap();
        read_tensors(&path)
    };
    let one = write("one.safetensors", &[big.clone(), small.clone()], 1);
    let three = write("three.safetensors", &[small, big], 3);
    assert_eq!(one, three);
    let values = &one["big.weight"].2;
    let mean = values.iter().map(|v| f64::from(*v)).sum::<f64>() / values.len() as f64;
    let std =
        (values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
    let expected = 1.0 / ((CHUNK / 2) as f64).sqrt();
    // Five standard errors of the mean.
    let bound = 5.0 * expected / (values.len() as f64).sqrt();
    assert!(mean.abs() < bound, "mean {mean}, bound {bound}");
    assert!(
        (std / expected - 1.0).abs() < 0.01,
        "std {std} vs {expected}"
    );
}

#[test]
fn complete_components_are_skipped_and_rewritten_when_the_options_change() {
    let root = tempfile::tempdir().unwrap();
    let mut options = tiny_options(root.path(), "model", Dtype::F32, 0);
    options.components = vec![Component::Vqvae];
    assert!(!run(&options).unwrap()[0].cached);
    let weights = options
        .out
        .join("vqvae/diffusion_pytorch_model.safetensors");
    let modified = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let report = run(&options).unwrap();
    assert!(report[0].cached);
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        modified
    );

    options.dtype = Dtype::Bf16;
    assert!(!run(&options).unwrap()[0].cached);
    assert_eq!(read_tensors(&weights)["quant_conv.weight"].0, StDtype::BF16);
    options.force = true;
    assert!(!run(&options).unwrap()[0].cached);
}

#[test]
fn big_components_are_sharded_with_an_index() {
    let root = tempfile::tempdir().unwrap();
    let mut options = tiny_options(root.path(), "model", Dtype::F32, 0);
    options.components = vec![Component::LlmEncoder];
    options.max_shard_bytes = 150_000;
    run(&options).unwrap();
    let folder = options.out.join("llm_encoder");
    assert!(!folder.join("model.safetensors").exists());
    let index = read_json_file(&folder.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    let shards: BTreeSet<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    assert!(shards.len() >= 2, "{shards:?}");
    let count = shards.len();
    let mut seen = BTreeMap::new();
    let mut total = 0;
    for (i, shard) in shards.iter().enumerate() {
        assert_eq!(
            *shard,
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        );
        for (name, (_, shape, values)) in read_tensors(&folder.join(shard)) {
            assert_eq!(map[&name], *shard, "{name}");
            total += values.len() * 4;
            seen.insert(name, shape);
        }
    }
    let tiny = read_tensors(&tiny_root().join("llm_encoder/model.safetensors"));
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        tiny.keys().collect::<Vec<_>>()
    );
    assert_eq!(index["metadata"]["total_size"], json!(total));

    // Written again unsharded, the shards and index go: a single file never sits beside them.
    options.max_shard_bytes = Options::DEFAULT_MAX_SHARD_BYTES;
    options.force = true;
    run(&options).unwrap();
    let mut names = file_names(&folder);
    names.retain(|n| n.contains("safetensors"));
    assert_eq!(names, BTreeSet::from(["model.safetensors".to_string()]));
}

#[test]
fn the_gemma_tokenizer_has_the_configured_vocabulary_and_encodes_prompts() {
    let root = tempfile::tempdir().unwrap();
    let mut options = tiny_options(root.path(), "model", Dtype::Bf16, 0);
    options.components = vec![Component::LlmEncoder, Component::TextEncoder];
    run(&options).unwrap();
    let tokenizer =
        ::tokenizers::Tokenizer::from_file(options.out.join("llm_encoder/tokenizer.json")).unwrap();
    assert_eq!(tokenizer.get_vocab_size(true), 640);
    let ids = tokenizer
        .encode("make it into Ghibli style ✨", true)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids[0], 2, "<bos> first: {ids:?}");
    assert!(ids.iter().all(|&id| id < 640), "{ids:?}");
    assert!(
        ids.iter().any(|&id| (4..260).contains(&id)),
        "byte fallback for ✨: {ids:?}"
    );

    let vocab = read_json_file(&options.out.join("tokenizer/vocab.json"));
    assert_eq!(vocab.as_object().unwrap().len(), tokenizers::CLIP_VOCAB);
}

#[test]
fn the_real_size_gemma_vocabulary_is_a_valid_bpe_of_256000_entries() {
    let (tokens, merges) = tokenizers::gemma_vocab(256_000).unwrap();
    assert_eq!(tokens.len(), 256_000);
    let ids: BTreeMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    assert_eq!(ids.len(), tokens.len(), "tokens are unique");
    for (left, right) in &merges {
        let merged = ids[format!("{left}{right}").as_str()];
        assert!(ids[left.as_str()] < merged && ids[right.as_str()] < merged);
    }
    let json = tokenizers::gemma_tokenizer_json(256_000).unwrap();
    let tokenizer: ::tokenizers::Tokenizer = json.to_string().parse().unwrap();
    assert_eq!(tokenizer.get_vocab_size(true), 256_000);
    let ids = tokenizer
        .encode("make it into Ghibli style", true)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(ids.iter().all(|&id| id < 256_000), "{ids:?}");
    // A three-character piece near the end whose first pair merges before its second pair is
    // encoded as that one high id: the last ids of the table are reachable.
    let rank = |a: &str, b: &str| merges.iter().position(|(l, r)| l == a && r == b);
    let (id, piece) = tokens
        .iter()
        .enumerate()
        .skip(250_000)
        .find(|(_, t)| {
            let c: Vec<String> = t.chars().map(String::from).collect();
            c.len() == 3 && rank(&c[0], &c[1]) < rank(&c[1], &c[2])
        })
        .unwrap();
    let encoded = tokenizer.encode(piece.as_str(), false).unwrap();
    assert_eq!(encoded.get_ids(), &[id as u32], "{piece}");
}

#[test]
fn the_built_in_shapes_are_the_released_components() {
    for component in Component::ALL {
        let spec = ComponentSpec::load(component, None).unwrap();
        let raw: Value = serde_json::from_str(
            BUILTIN_SHAPES
                .iter()
                .find(|(n, _)| *n == component.name())
                .unwrap()
                .1,
        )
        .unwrap();
        let parameters: usize = spec
            .tensors
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(
            parameters as u64,
            raw["parameters"].as_u64().unwrap(),
            "{component:?}"
        );
    }
    // Natural order: layer 2 before layer 10.
    let spec = ComponentSpec::load(Component::LlmEncoder, None).unwrap();
    let position = |name: &str| spec.tensors.iter().position(|(n, _)| n == name).unwrap();
    assert!(
        position("model.layers.2.mlp.up_proj.weight")
            < position("model.layers.10.mlp.up_proj.weight")
    );
}

#[test]
fn initialisation_follows_the_layer_kind() {
    let init = |name: &str, shape: &[usize], offset| init_for(name, shape, offset);
    let near = |a: Init, mean: f32, std: f32| {
        assert!(
            (a.mean - mean).abs() < 1e-6 && (a.std - std).abs() < 1e-6,
            "{a:?}"
        );
    };
    near(
        init("model.layers.0.input_layernorm.weight", &[2304], true),
        0.0,
        0.02,
    );
    near(
        init(
            "encoder.down_blocks.0.resnets.0.norm1.weight",
            &[128],
            false,
        ),
        1.0,
        0.02,
    );
    near(
        init("transformer_blocks.0.attn.norm_q.weight", &[128], false),
        1.0,
        0.02,
    );
    near(init("context_embedder.bias", &[1024], false), 0.0, 0.01);
    near(
        init("context_embedder.weight", &[1024, 2304], false),
        0.0,
        1.0 / 48.0,
    );
    near(
        init("encoder.conv_in.weight", &[128, 3, 3, 3], false),
        0.0,
        1.0 / 27f32.sqrt(),
    );
    near(
        init("model.embed_tokens.weight", &[256_000, 2304], true),
        0.0,
        1.0 / 48.0,
    );
    near(
        init("quantize.embedding.weight", &[8192, 64], false),
        0.0,
        1.0,
    );
    near(
        init(
            "transformer_blocks.3.norm1.linear.weight",
            &[6144, 1024],
            false,
        ),
        0.0,
        0.1 / 32.0,
    );
    near(
        init(
            "single_transformer_blocks.3.norm.linear.weight",
            &[3072, 1024],
            false,
        ),
        0.0,
        0.1 / 32.0,
    );
}

#[test]
fn bad_input_gives_errors_that_name_the_file() {
    let root = tempfile::tempdir().unwrap();
    let mut options = Options::new(root.path().join("out"), Dtype::F32);
    options.shapes = Some(root.path().join("missing"));
    options.components = vec![Component::Vqvae];
    let message = run(&options).unwrap_err().to_string();
    assert!(
        message.contains("missing") && message.contains("vqvae.json"),
        "{message}"
    );

    let shapes = root.path().join("shapes");
    std::fs::create_dir_all(&shapes).unwrap();
    options.shapes = Some(shapes.clone());
    for (text, expected) in [
        ("{ not json", "not valid JSON"),
        (r#"{"tensors": {"a": [1]}}"#, "no `config`"),
        (r#"{"config": {}, "tensors": {"a": [1, -2]}}"#, "tensor `a`"),
        (r#"{"config": {}, "tensors": {}}"#, "empty"),
    ] {
        std::fs::write(shapes.join("vqvae.json"), text).unwrap();
        let message = run(&options).unwrap_err().to_string();
        assert!(
            message.contains("vqvae.json") && message.contains(expected),
            "{message}"
        );
    }

    std::fs::write(
        shapes.join("text_encoder.json"),
        r#"{"config": {"vocab_size": 100}, "tensors": {"a": [1]}}"#,
    )
    .unwrap();
    options.components = vec![Component::TextEncoder];
    let message = run(&options).unwrap_err().to_string();
    assert!(message.contains("49408"), "{message}");

    assert!(Dtype::parse("f64").is_err());
    assert!(Component::parse("unet").is_err());
}
