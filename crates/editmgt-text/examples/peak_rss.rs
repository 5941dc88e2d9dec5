//! Peak resident memory (`VmHWM`) of loading and running the text encoders.
//!
//! ```text
//! cargo run --release -p editmgt-text --example peak_rss -- tiny [f32|f16|bf16] [all|once]
//! cargo run --release -p editmgt-text --example peak_rss -- gemma-width [f32|f16|bf16] [layers] [vocab]
//! ```
//!
//! `tiny` loads the fixture model (`$EDITMGT_FIXTURES` or `fixtures/tiny`) and encodes the
//! fixture's prompts, either with both encoders resident (`all`: `TextEncoder::from_model_dir`
//! then `encode`) or one at a time (`once`: `TextEncoder::encode_once`).
//!
//! `gemma-width` writes a bf16 checkpoint of a Gemma-2 at the released width (2304, 8/4 heads x
//! 256, MLP 9216) with `layers` encoder layers (default 2) and a `vocab`-token vocabulary
//! (default 4096) to a
//! temporary folder, loads it in the given type and encodes two 256-token rows (the guidance
//! batch): the per-layer figures scale to the released 25 layers. The peak is reset after the
//! checkpoint is written. Run one case per process so that each `VmHWM` is its own.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::Device;
use editmgt_core::FloatType;
use editmgt_text::gemma::Gemma2Config;
use editmgt_text::{GemmaEncoder, TextEncoder, TokenIds};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Peaks of anonymous and file-backed resident memory (MiB), sampled every 2 ms by a thread:
/// `VmHWM` counts the memory-mapped checkpoint pages the loader touches, which are page cache
/// the kernel can reclaim, so the anonymous peak is the memory the process really needs.
static PEAK_ANON: AtomicU64 = AtomicU64::new(0);
static PEAK_FILE: AtomicU64 = AtomicU64::new(0);

fn start_sampler() {
    std::thread::spawn(|| {
        loop {
            PEAK_ANON.fetch_max(status_mib("RssAnon:") as u64, Ordering::Relaxed);
            PEAK_FILE.fetch_max(status_mib("RssFile:") as u64, Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    });
}

fn report(stage: &str) {
    println!(
        "{stage:<32} VmRSS {:>8.1} MiB  VmHWM {:>8.1} MiB  peak RssAnon {:>7} MiB  peak RssFile {:>7} MiB",
        status_mib("VmRSS:"),
        status_mib("VmHWM:"),
        PEAK_ANON.load(Ordering::Relaxed),
        PEAK_FILE.load(Ordering::Relaxed),
    );
}

fn reset_sampled_peaks() {
    PEAK_ANON.store(0, Ordering::Relaxed);
    PEAK_FILE.store(0, Ordering::Relaxed);
}

/// Resets `VmHWM` to the current RSS (Linux: `5` to `/proc/self/clear_refs`).
fn reset_peak() {
    std::thread::sleep(std::time::Duration::from_millis(10));
    reset_sampled_peaks();
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        println!("(cannot reset VmHWM: {e}; the peak includes writing the checkpoint)");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("tiny");
    let dtype: FloatType = args
        .get(1)
        .map(|s| s.parse().expect("f32, f16 or bf16"))
        .unwrap_or_default();
    let device = Device::flex();
    start_sampler();
    report("start");
    match what {
        "tiny" => tiny(
            &device,
            dtype,
            args.get(2).map(String::as_str).unwrap_or("all"),
        ),
        "gemma-width" => {
            let layers = args.get(2).map(|s| s.parse().expect("layers")).unwrap_or(2);
            let vocab = args
                .get(3)
                .map(|s| s.parse().expect("vocab"))
                .unwrap_or(4096);
            gemma_width(&device, dtype, layers, vocab)
        }
        other => panic!("unknown case `{other}` (tiny or gemma-width)"),
    }
}

fn tiny(device: &Device, dtype: FloatType, mode: &str) {
    let case = editmgt_testkit::Case::open("text");
    let prompts: Vec<String> = case.meta["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| p.as_str().expect("prompt").to_string())
        .collect();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let model = editmgt_testkit::model_dir();
    if mode == "once" {
        let (embeddings, _tokenizers) =
            TextEncoder::encode_once(&model, device, dtype, &refs).expect("encode");
        let _ = embeddings.encoder_hidden_states.into_data();
        report("encode_once");
    } else {
        let encoder = TextEncoder::from_model_dir(&model, device, dtype).expect("load");
        report("loaded (both encoders)");
        let embeddings = encoder.encode(&refs).expect("encode");
        let _ = embeddings.encoder_hidden_states.into_data();
        report("encoded 9 prompts");
        let _tokenizers = encoder.into_tokenizers();
        report("encoders dropped");
    }
}

/// Deterministic pseudo-random values in [-0.05, 0.05).
fn values(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n * 2);
    for _ in 0..n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
        out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
    }
    out
}

fn gemma_width(device: &Device, dtype: FloatType, layers: usize, vocab: usize) {
    let config = Gemma2Config {
        num_hidden_layers: layers + 1,
        vocab_size: vocab,
        ..Gemma2Config::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let folder = dir.path();
    write_checkpoint(&config, folder);
    let file_mib = std::fs::metadata(folder.join("model.safetensors"))
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
        .unwrap_or(f64::NAN);
    println!(
        "checkpoint: {layers} encoder layers + {vocab} x 2304 embeddings, bf16, {file_mib:.1} MiB"
    );
    reset_peak();
    report("checkpoint written, peak reset");
    let gemma = GemmaEncoder::from_folder(folder, device, dtype).expect("load");
    report(&format!("loaded as {dtype}"));
    let rows = (0..2)
        .map(|r| {
            (0..256)
                .map(|i| ((i * 37 + r * 11) % 4096) as u32)
                .collect()
        })
        .collect();
    let ids = TokenIds::from_rows(rows).expect("ids");
    let hidden = gemma.forward(&ids).expect("forward");
    let _ = hidden.into_data();
    report("forward 2 x 256 tokens");
    drop(gemma);
    report("encoder dropped");
}

/// A bf16 `Gemma2ForCausalLM` checkpoint (without the unused tensors) for `config`.
fn write_checkpoint(config: &Gemma2Config, folder: &Path) {
    let gemma = GemmaEncoder::new(config.clone(), &Device::flex());
    let table = gemma.parameter_table();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = table
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let n = p.shape.iter().product();
            (
                p.checkpoint_name.clone(),
                p.shape.clone(),
                values(n, i as u64 + 1),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::BF16, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(
        views,
        None::<HashMap<String, String>>,
        &folder.join("model.safetensors"),
    )
    .expect("write");
    drop(data);
    std::fs::write(
        folder.join("config.json"),
        serde_json::to_string(config).expect("config"),
    )
    .expect("config");
}
