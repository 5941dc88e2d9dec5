//! Tokenisation of 1,000 prompts (both tokenizers of the fixture model: the CLIP one is the
//! released vocabulary, the Gemma one the tiny model's), and one Gemma-2-shaped forward at the
//! released width (2304, 8 query / 4 key-value heads x 256, MLP 9216) with 2 layers over 256
//! tokens, f32 on the flex CPU backend.

use std::hint::black_box;
use std::time::Duration;

use burn::tensor::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use editmgt_testkit::model_dir;
use editmgt_text::gemma::Gemma2Config;
use editmgt_text::{ClipTokenizer, GemmaEncoder, GemmaTokenizer, TokenIds};

/// 1,000 varied instructions (a few words to a few dozen, some over CLIP's 77 tokens).
fn prompts() -> Vec<String> {
    const VERBS: [&str; 6] = ["make", "turn", "replace", "add", "remove", "change"];
    const THINGS: [&str; 8] = [
        "the sky",
        "the cat",
        "a red car",
        "the old wooden bridge",
        "her hat",
        "the café sign",
        "東京 tower",
        "the 🌃 skyline",
    ];
    const STYLES: [&str; 5] = [
        "blue",
        "into Ghibli style",
        "with a bicycle",
        "at night, please!!!",
        "so that it looks like a watercolour painting from the nineteenth century",
    ];
    (0..1000)
        .map(|i| {
            let mut p = format!(
                "{} {} {}",
                VERBS[i % VERBS.len()],
                THINGS[(i / 6) % THINGS.len()],
                STYLES[(i / 48) % STYLES.len()]
            );
            for _ in 0..(i % 7) {
                p.push_str(" and keep everything else unchanged");
            }
            p
        })
        .collect()
}

fn tokenisation(c: &mut Criterion) {
    let prompts = prompts();
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let clip = ClipTokenizer::from_folder(&model_dir().join("tokenizer")).expect("CLIP tokenizer");
    let gemma = GemmaTokenizer::from_model_dir(&model_dir()).expect("Gemma tokenizer");
    let mut group = c.benchmark_group("tokenise 1000 prompts");
    group.sample_size(20);
    group.bench_function("clip (77)", |b| {
        b.iter(|| black_box(clip.encode(black_box(&refs)).expect("encode")))
    });
    group.bench_function("gemma (256)", |b| {
        b.iter(|| black_box(gemma.encode(black_box(&refs)).expect("encode")))
    });
    group.finish();
}

fn gemma_forward(c: &mut Criterion) {
    let device = Device::flex();
    let config = Gemma2Config {
        // 3 layers in the checkpoint sense: the encoder runs the first 2.
        num_hidden_layers: 3,
        // The released vocabulary would only add a 2.4 GB lookup table.
        vocab_size: 4096,
        ..Gemma2Config::default()
    };
    let gemma = GemmaEncoder::new(config, &device);
    let rows = vec![(0..256).map(|i| (i * 37 % 4096) as u32).collect::<Vec<_>>()];
    let ids = TokenIds::from_rows(rows).expect("ids");
    // Materialise the (random) weights outside the measurement.
    let _ = gemma.forward(&ids).expect("forward").into_data();
    let mut group = c.benchmark_group("gemma2 forward");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.bench_function("2304 wide, 2 layers, 1x256 tokens, f32", |b| {
        b.iter(|| black_box(gemma.forward(&ids).expect("forward").into_data()))
    });
    group.finish();
}

criterion_group!(benches, tokenisation, gemma_forward);
criterion_main!(benches);
