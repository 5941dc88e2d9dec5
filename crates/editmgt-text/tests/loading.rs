//! Loading: the released tensor lists, typed errors on bad inputs, half precision and sharded
//! weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use editmgt_core::shapes::parameter_count;
use editmgt_core::{FloatType, LoadError};
use editmgt_testkit::weights::{read_f32_safetensors, write_safetensors};
use editmgt_testkit::{Case, RealShapes, assert_close, model_dir, to_f32_vec};
use editmgt_text::clip::ClipTextConfig;
use editmgt_text::gemma::Gemma2Config;
use editmgt_text::{
    ClipTextEncoder, ClipTokenizer, GemmaEncoder, GemmaTokenizer, TextEncoder, TextError,
};
use safetensors::Dtype;

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn table_map(table: &[editmgt_core::shapes::ParamEntry]) -> BTreeMap<String, Vec<usize>> {
    table
        .iter()
        .map(|p| (p.checkpoint_name.clone(), p.shape.clone()))
        .collect()
}

#[test]
fn clip_real_shapes_are_exactly_the_released_tensors() {
    let real = RealShapes::load("text_encoder");
    let config = ClipTextConfig::from_value(
        real.config.clone(),
        Path::new("real-shapes/text_encoder.json"),
    )
    .unwrap();
    let rss = vm_kib("VmRSS:");
    let clip = ClipTextEncoder::new(config, &editmgt_testkit::device());
    let table = clip.parameter_table();
    let ours = table_map(&table);
    assert_eq!(ours, real.tensors, "CLIP tensor names/shapes");
    assert_eq!(parameter_count(&table) as u64, real.parameters);
    let grown = vm_kib("VmRSS:").saturating_sub(rss);
    assert!(grown < 200 * 1024, "building CLIP allocated {grown} KiB");
    println!(
        "real shapes text_encoder: {} tensors, {} parameters, identical",
        ours.len(),
        real.parameters
    );
}

#[test]
fn gemma_real_shapes_are_the_released_tensors_but_the_unused_ones() {
    let real = RealShapes::load("llm_encoder");
    let config = Gemma2Config::from_value(
        real.config.clone(),
        Path::new("real-shapes/llm_encoder.json"),
    )
    .unwrap();
    let rss = vm_kib("VmRSS:");
    let gemma = GemmaEncoder::new(config.clone(), &editmgt_testkit::device());
    let table = gemma.parameter_table();
    let grown = vm_kib("VmRSS:").saturating_sub(rss);
    assert!(grown < 200 * 1024, "building Gemma allocated {grown} KiB");
    let ours = table_map(&table);
    let unused = GemmaEncoder::unused_tensors(&config);
    println!("deliberately unused: {unused:?}");

    // The unused ones are: lm_head, the last layer, the final norm; all are in the list.
    let last = config.num_hidden_layers - 1;
    for name in &unused {
        assert!(
            name == "lm_head.weight"
                || name == "model.norm.weight"
                || name.starts_with(&format!("model.layers.{last}.")),
            "unexpected unused tensor {name}"
        );
        assert!(real.tensors.contains_key(name), "{name} is not released");
        assert!(!ours.contains_key(name), "{name} is both used and unused");
    }
    let per_layer = ours
        .keys()
        .filter(|n| n.starts_with("model.layers.0."))
        .count();
    assert_eq!(unused.len(), per_layer + 2);

    // Everything else is needed with exactly the released shape.
    let needed: BTreeMap<String, Vec<usize>> = real
        .tensors
        .iter()
        .filter(|(name, _)| !unused.contains(*name))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    assert_eq!(ours, needed, "Gemma tensor names/shapes");
    let unused_count: usize = unused
        .iter()
        .map(|n| real.tensors[n].iter().product::<usize>())
        .sum();
    assert_eq!(
        (parameter_count(&table) + unused_count) as u64,
        real.parameters
    );
    println!(
        "real shapes llm_encoder: {} tensors used ({} parameters), {} unused ({} parameters)",
        ours.len(),
        parameter_count(&table),
        unused.len(),
        unused_count
    );
}

/// A copy of the tiny model's text folders (`tokenizer/`, `text_encoder/`, `llm_encoder/`) in a
/// temporary directory, with weights rewritten by `rewrite` (name, dtype, shape, f32 values).
struct TempModel {
    dir: tempfile::TempDir,
}

fn copy_folder(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.path().is_file() && !skip.contains(&name.as_str()) {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

impl TempModel {
    /// The text folders with the weights converted to `dtype` (F32 keeps them as they are).
    fn new(dtype: Dtype) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for folder in ["tokenizer", "text_encoder", "llm_encoder"] {
            copy_folder(
                &model_dir().join(folder),
                &dir.path().join(folder),
                &["model.safetensors"],
            );
        }
        let model = Self { dir };
        for folder in ["text_encoder", "llm_encoder"] {
            let tensors = read_f32_safetensors(&model_dir().join(folder).join("model.safetensors"));
            write_safetensors(
                &model.path(folder).join("model.safetensors"),
                &tensors,
                dtype,
            );
        }
        model
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, folder: &str) -> PathBuf {
        self.dir.path().join(folder)
    }
}

fn prompts(case: &Case) -> Vec<String> {
    case.meta["prompts"]
        .as_array()
        .expect("meta.prompts")
        .iter()
        .map(|p| p.as_str().expect("prompt").to_string())
        .collect()
}

#[test]
fn half_precision_weights_load_and_agree_with_f32() {
    let case = Case::open("text");
    let prompts = prompts(&case);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let device = editmgt_testkit::device();
    let hidden = case.f32("encoder_hidden_states");
    let pooled = case.f32("pooled_projections");
    for (stored, float, tol) in [
        (Dtype::F16, FloatType::F16, 5e-3),
        (Dtype::BF16, FloatType::BF16, 3e-2),
        (Dtype::BF16, FloatType::F32, 3e-2),
        (Dtype::F32, FloatType::BF16, 3e-2),
    ] {
        if !device.supports_dtype(float.dtype()) {
            println!("device does not support {float}: skipping that combination");
            continue;
        }
        let model = TempModel::new(stored);
        let encoder = TextEncoder::from_model_dir(model.root(), &device, float).unwrap();
        assert_eq!(encoder.gemma().float_type(), float);
        let out = encoder.encode(&refs).unwrap();
        assert_eq!(out.encoder_hidden_states.dtype(), DType::F32);
        let what = format!("{stored:?} file as {float}");
        assert_close(
            &format!("{what}: encoder_hidden_states"),
            &to_f32_vec(out.encoder_hidden_states),
            &hidden.data,
            tol,
        );
        assert_close(
            &format!("{what}: pooled"),
            &to_f32_vec(out.pooled),
            &pooled.data,
            tol,
        );
    }
}

#[test]
fn sharded_weights_load_like_a_single_file() {
    let case = Case::open("text");
    let device = editmgt_testkit::device();
    let model = TempModel::new(Dtype::F32);
    let folder = model.path("llm_encoder");
    let tensors = read_f32_safetensors(&folder.join("model.safetensors"));
    std::fs::remove_file(folder.join("model.safetensors")).unwrap();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        write_safetensors(&folder.join(shard), part, Dtype::BF16);
        for (name, _, _) in part {
            weight_map.insert(name.clone(), shard.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        folder.join("model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
    let gemma = GemmaEncoder::from_folder(&folder, &device, FloatType::F32).unwrap();
    let tokenizer = GemmaTokenizer::from_folder(&folder).unwrap();
    let prompts = prompts(&case);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let hidden = gemma.forward(&tokenizer.encode(&refs).unwrap()).unwrap();
    assert_close(
        "sharded bf16 gemma",
        &to_f32_vec(hidden),
        &case.f32("gemma_hidden_penultimate").data,
        3e-2,
    );
}

/// Gemma-2 run from the files one layer at a time equals the loaded encoder, bit for bit, for
/// every stored/compute float combination the device supports and for sharded weights.
#[test]
fn streamed_gemma_equals_the_loaded_encoder() {
    let case = Case::open("text");
    let prompts = prompts(&case);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let device = editmgt_testkit::device();
    for (stored, float) in [
        (Dtype::F32, FloatType::F32),
        (Dtype::BF16, FloatType::F32),
        (Dtype::F16, FloatType::F16),
        (Dtype::BF16, FloatType::BF16),
    ] {
        if !device.supports_dtype(float.dtype()) {
            println!("device does not support {float}: skipping that combination");
            continue;
        }
        let model = TempModel::new(stored);
        let folder = model.path("llm_encoder");
        let ids = GemmaTokenizer::from_folder(&folder)
            .unwrap()
            .encode(&refs)
            .unwrap();
        let loaded = GemmaEncoder::from_folder(&folder, &device, float)
            .unwrap()
            .forward(&ids)
            .unwrap();
        let streamed = GemmaEncoder::forward_streamed(&folder, &device, float, &ids).unwrap();
        assert_eq!(streamed.dims(), loaded.dims());
        assert_eq!(
            to_f32_vec(streamed),
            to_f32_vec(loaded),
            "{stored:?} file as {float}: streamed and loaded Gemma differ"
        );
    }

    // Sharded weights: the embedding rows and the layers come from whichever shard holds them.
    let model = TempModel::new(Dtype::F32);
    let folder = model.path("llm_encoder");
    let tensors = read_f32_safetensors(&folder.join("model.safetensors"));
    std::fs::remove_file(folder.join("model.safetensors")).unwrap();
    let mut weight_map = serde_json::Map::new();
    for (index, (name, shape, data)) in tensors.iter().enumerate() {
        let shard = format!("model-{:05}-of-00002.safetensors", index % 2 + 1);
        weight_map.insert(name.clone(), shard.clone().into());
        let path = folder.join(&shard);
        let mut part = if path.is_file() {
            read_f32_safetensors(&path)
        } else {
            Vec::new()
        };
        part.push((name.clone(), shape.clone(), data.clone()));
        write_safetensors(&path, &part, Dtype::F32);
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        folder.join("model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
    let ids = GemmaTokenizer::from_folder(&folder)
        .unwrap()
        .encode(&refs)
        .unwrap();
    let streamed = GemmaEncoder::forward_streamed(&folder, &device, FloatType::F32, &ids).unwrap();
    assert_close(
        "sharded streamed gemma",
        &to_f32_vec(streamed),
        &case.f32("gemma_hidden_penultimate").data,
        1e-4,
    );
}

/// The streamed encoder names the file and tensor at fault, like loading does.
#[test]
fn streamed_gemma_errors_are_typed() {
    let device = editmgt_testkit::device();
    let model = TempModel::new(Dtype::F32);
    let folder = model.path("llm_encoder");
    let ids = GemmaTokenizer::from_folder(&folder)
        .unwrap()
        .encode(&["a prompt"])
        .unwrap();
    let path = folder.join("model.safetensors");
    let original = read_f32_safetensors(&path);

    // A missing layer tensor is reported with its checkpoint name. Layer 0: the encoder reads
    // `hidden_states[-2]`, so it never needs the last layer (a 2-layer model's layer 1).
    let missing = "model.layers.0.self_attn.k_proj.weight";
    let mut tensors = original.clone();
    tensors.retain(|(name, _, _)| name != missing);
    assert_eq!(
        tensors.len() + 1,
        original.len(),
        "{missing} is in the tiny checkpoint"
    );
    write_safetensors(&path, &tensors, Dtype::F32);
    match expect_load_error(GemmaEncoder::forward_streamed(
        &folder,
        &device,
        FloatType::F32,
        &ids,
    )) {
        LoadError::MissingTensors { tensors, .. } => assert_eq!(tensors, vec![missing.to_string()]),
        other => panic!("{other:?}"),
    }

    // A missing embedding table, and one of the wrong width.
    let embeddings = "model.embed_tokens.weight";
    let mut tensors = original.clone();
    tensors.retain(|(name, _, _)| name != embeddings);
    write_safetensors(&path, &tensors, Dtype::F32);
    match expect_load_error(GemmaEncoder::forward_streamed(
        &folder,
        &device,
        FloatType::F32,
        &ids,
    )) {
        LoadError::MissingTensors { tensors, .. } => {
            assert_eq!(tensors, vec![embeddings.to_string()])
        }
        other => panic!("{other:?}"),
    }
    let mut tensors = original.clone();
    let table = tensors
        .iter_mut()
        .find(|(name, _, _)| name == embeddings)
        .unwrap();
    let [vocab, hidden] = table.1[..] else {
        panic!("the embedding table is 2-d")
    };
    table.1 = vec![vocab, hidden - 1];
    table.2.truncate(vocab * (hidden - 1));
    write_safetensors(&path, &tensors, Dtype::F32);
    match expect_load_error(GemmaEncoder::forward_streamed(
        &folder,
        &device,
        FloatType::F32,
        &ids,
    )) {
        LoadError::ShapeMismatch {
            tensor,
            expected,
            found,
            ..
        } => {
            assert_eq!(tensor, embeddings);
            assert_eq!(expected, vec![vocab, hidden]);
            assert_eq!(found, vec![vocab, hidden - 1]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unused_gemma_tensors_are_never_needed() {
    let device = editmgt_testkit::device();
    let model = TempModel::new(Dtype::F32);
    let folder = model.path("llm_encoder");
    let config = Gemma2Config::from_file(&folder.join("config.json")).unwrap();
    let unused = GemmaEncoder::unused_tensors(&config);
    let mut tensors = read_f32_safetensors(&folder.join("model.safetensors"));
    let before = tensors.len();
    tensors.retain(|(name, _, _)| !unused.contains(name));
    // The tiny checkpoint ties lm_head to the embeddings, so it may not be stored at all.
    assert!(before - tensors.len() >= unused.len() - 1);
    write_safetensors(&folder.join("model.safetensors"), &tensors, Dtype::F32);
    GemmaEncoder::from_folder(&folder, &device, FloatType::F32).unwrap();
}

fn expect_load_error(result: Result<impl std::fmt::Debug, TextError>) -> LoadError {
    match result {
        Err(TextError::Load(e)) => {
            println!("typed error: {e}");
            e
        }
        other => panic!("expected a load error, got {other:?}"),
    }
}

#[test]
fn missing_tokenizer_files_are_typed_errors() {
    let model = TempModel::new(Dtype::F32);
    for file in ["vocab.json", "merges.txt"] {
        let folder = model.root().join(format!("clip_without_{file}"));
        copy_folder(&model.path("tokenizer"), &folder, &[file]);
        match expect_load_error(ClipTokenizer::from_folder(&folder)) {
            LoadError::MissingFile { path, .. } => assert!(path.ends_with(file)),
            other => panic!("{other:?}"),
        }
    }
    let folder = model.root().join("gemma_without_tokenizer");
    copy_folder(&model.path("llm_encoder"), &folder, &["tokenizer.json"]);
    match expect_load_error(GemmaTokenizer::from_folder(&folder)) {
        LoadError::MissingFile { path, .. } => assert!(path.ends_with("tokenizer.json")),
        other => panic!("{other:?}"),
    }
    match expect_load_error(ClipTokenizer::from_folder(&model.root().join("nowhere"))) {
        LoadError::MissingFolder { .. } => {}
        other => panic!("{other:?}"),
    }
    // A folder without the tokenizers fails before any weights are read.
    std::fs::remove_dir_all(model.path("tokenizer")).unwrap();
    match expect_load_error(TextEncoder::from_model_dir(
        model.root(),
        &editmgt_testkit::device(),
        FloatType::F32,
    )) {
        LoadError::MissingFolder { path } => assert!(path.ends_with("tokenizer")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_tokenizer_json_that_does_not_parse_is_a_typed_error() {
    let model = TempModel::new(Dtype::F32);
    let gemma = model.path("llm_encoder");
    std::fs::write(
        gemma.join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": 3",
    )
    .unwrap();
    match GemmaTokenizer::from_folder(&gemma) {
        Err(e @ TextError::TokenizerFile { .. }) => println!("typed error: {e}"),
        other => panic!("{other:?}"),
    }
    // A CLIP folder with a tokenizer.json uses it (and so fails on a bad one).
    let clip = model.path("tokenizer");
    std::fs::write(clip.join("tokenizer.json"), "not json").unwrap();
    match ClipTokenizer::from_folder(&clip) {
        Err(e @ TextError::TokenizerFile { .. }) => println!("typed error: {e}"),
        other => panic!("{other:?}"),
    }
    // A malformed merges.txt too.
    std::fs::remove_file(clip.join("tokenizer.json")).unwrap();
    std::fs::write(clip.join("merges.txt"), "#version: 0.2\na b c\n").unwrap();
    match ClipTokenizer::from_folder(&clip) {
        Err(e @ TextError::TokenizerFile { .. }) => println!("typed error: {e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_config_of_another_architecture_is_a_typed_error() {
    let device = editmgt_testkit::device();
    let model = TempModel::new(Dtype::F32);
    let edit = |folder: &str, key: &str, value: serde_json::Value| {
        let path = model.path(folder).join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config[key] = value;
        std::fs::write(&path, config.to_string()).unwrap();
    };
    edit(
        "text_encoder",
        "architectures",
        serde_json::json!(["CLIPTextModel"]),
    );
    match expect_load_error(ClipTextEncoder::from_model_dir(
        model.root(),
        &device,
        FloatType::F32,
    )) {
        LoadError::Unsupported { field, .. } => assert_eq!(field, "architectures"),
        other => panic!("{other:?}"),
    }
    edit(
        "text_encoder",
        "architectures",
        serde_json::json!(["CLIPTextModelWithProjection"]),
    );
    edit("text_encoder", "model_type", serde_json::json!("t5"));
    match expect_load_error(ClipTextEncoder::from_model_dir(
        model.root(),
        &device,
        FloatType::F32,
    )) {
        LoadError::Unsupported { field, .. } => assert_eq!(field, "model_type"),
        other => panic!("{other:?}"),
    }
    edit("llm_encoder", "model_type", serde_json::json!("llama"));
    match expect_load_error(GemmaEncoder::from_model_dir(
        model.root(),
        &device,
        FloatType::F32,
    )) {
        LoadError::Unsupported { field, .. } => assert_eq!(field, "model_type"),
        other => panic!("{other:?}"),
    }
    edit("llm_encoder", "model_type", serde_json::json!("gemma2"));
    edit(
        "llm_encoder",
        "hidden_activation",
        serde_json::json!("silu"),
    );
    match expect_load_error(GemmaEncoder::from_model_dir(
        model.root(),
        &device,
        FloatType::F32,
    )) {
        LoadError::Unsupported { field, .. } => assert_eq!(field, "hidden_activation"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn weights_with_missing_tensors_are_a_typed_error() {
    let device = editmgt_testkit::device();
    let model = TempModel::new(Dtype::F32);
    for (folder, missing) in [
        ("llm_encoder", "model.layers.0.mlp.up_proj.weight"),
        ("text_encoder", "text_projection.weight"),
    ] {
        let path = model.path(folder).join("model.safetensors");
        let mut tensors = read_f32_safetensors(&path);
        let before = tensors.len();
        tensors.retain(|(name, _, _)| name != missing);
        assert_eq!(
            tensors.len() + 1,
            before,
            "{missing} is in the tiny checkpoint"
        );
        write_safetensors(&path, &tensors, Dtype::F32);
    }
    match expect_load_error(GemmaEncoder::from_model_dir(
        model.root(),
        &device,
        FloatType::F32,
    )) {
        LoadError::MissingTensors { tensors, .. } => {
            assert_eq!(
                tensors,
                vec!["model.layers.0.mlp.up_proj.weight".to_string()]
            )
        }
        other => panic!("{other:?}"),
    }
    match expect_load_error(ClipTextEncoder::from_model_dir(
        model.root(),
        &device,
        FloatType::F32,
    )) {
        LoadError::MissingTensors { tensors, .. } => {
            assert_eq!(tensors, vec!["text_projection.weight".to_string()])
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_file(model.path("llm_encoder").join("model.safetensors")).unwrap();
    match expect_load_error(GemmaEncoder::from_model_dir(
        model.root(),
        &device,
        FloatType::F32,
    )) {
        LoadError::MissingFile { .. } => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_batches_are_typed_errors() {
    let device = editmgt_testkit::device();
    let encoder = TextEncoder::from_model_dir(&model_dir(), &device, FloatType::F32).unwrap();
    assert!(matches!(encoder.encode(&[]), Err(TextError::EmptyBatch)));
    let too_big = editmgt_text::TokenIds::from_rows(vec![vec![u32::MAX; 4]]).unwrap();
    assert!(matches!(
        encoder.gemma().forward(&too_big),
        Err(TextError::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        encoder.clip().forward(&too_big, false),
        Err(TextError::TokenOutOfRange { .. })
    ));
    let too_long = editmgt_text::TokenIds::from_rows(vec![vec![1; 78]]).unwrap();
    assert!(matches!(
        encoder.clip().forward(&too_long, false),
        Err(TextError::SequenceTooLong { .. })
    ));
    assert!(matches!(
        editmgt_text::TokenIds::from_rows(vec![vec![1, 2], vec![1]]),
        Err(TextError::RaggedBatch { index: 1, .. })
    ));
}
