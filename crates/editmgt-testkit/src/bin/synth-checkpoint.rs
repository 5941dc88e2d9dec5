//! `synth-checkpoint`: writes an EditMGT model folder in the released layout at the released
//! shapes (`fixtures/real-shapes/*.json`), with deterministic random weights, so that the real
//! model's code paths, memory and time can be measured without downloading it.
//!
//! ```text
//! synth-checkpoint --out DIR [--dtype f32|f16|bf16] [--seed N]
//!                  [--components editmgt,vqvae,text_encoder,llm_encoder]
//! ```
//!
//! Writes `editmgt/`, `scheduler/`, `vqvae/`, `text_encoder/`, `tokenizer/` and `llm_encoder/`
//! (configs, tokenizer files, safetensors weights; components over 5 GB are sharded with a
//! `*.safetensors.index.json`, as the release shards Gemma). Weights are streamed to disk one
//! chunk at a time. A component folder that is complete (its `.complete` marker matches the
//! dtype and seed) is left as it is, so reruns are free.

mod synth;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use synth::writer::{Dtype, human_bytes};
use synth::{Component, Options};

/// Writes a full-size EditMGT checkpoint of random weights in the released folder layout.
#[derive(Debug, Parser)]
#[command(name = "synth-checkpoint", version, about)]
struct Args {
    /// The model folder to write (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// The float type of the weights: f32, f16 or bf16.
    #[arg(long, default_value = "bf16", value_parser = Dtype::parse)]
    dtype: Dtype,
    /// The seed of every random value (the same seed writes the same bytes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The components to write, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = Component::parse,
        default_values = ["editmgt", "vqvae", "text_encoder", "llm_encoder"]
    )]
    components: Vec<Component>,
    /// A folder of `<component>.json` shapes files to use instead of the built-in copy of
    /// `fixtures/real-shapes`.
    #[arg(long)]
    shapes: Option<PathBuf>,
    /// The largest weight file in MB (10^6 bytes); bigger components are sharded.
    #[arg(long, default_value_t = 5000)]
    max_shard_mb: u64,
    /// Threads generating values (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Write every component again, even when its folder is complete.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut options = Options::new(&args.out, args.dtype);
    options.seed = args.seed;
    options.components = args.components;
    options.shapes = args.shapes;
    options.max_shard_bytes = args.max_shard_mb.max(1) * 1_000_000;
    if let Some(threads) = args.threads {
        options.threads = threads.max(1);
    }
    options.force = args.force;
    options.verbose = true;

    let started = Instant::now();
    println!(
        "synth-checkpoint: {} ({}, seed {}) into {}",
        options
            .components
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", "),
        options.dtype.name(),
        options.seed,
        options.out.display()
    );
    match synth::run(&options) {
        Ok(reports) => {
            let total: u64 = reports.iter().map(|r| r.bytes).sum();
            let written: u64 = reports.iter().filter(|r| !r.cached).map(|r| r.bytes).sum();
            println!(
                "done: {} in total ({} written now) in {:.1} s",
                human_bytes(total),
                human_bytes(written),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("synth-checkpoint: error: {e}");
            ExitCode::FAILURE
        }
    }
}
