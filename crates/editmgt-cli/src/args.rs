//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use editmgt_pipeline::{DeviceSpec, FloatType};

/// Instruction-based image editing with EditMGT (masked generative transformer).
#[derive(Debug, Parser)]
#[command(name = "editmgt", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether the run should keep freed memory for reuse ([`crate::allocator`]): on the CPU,
    /// unless `--low-memory` asks for memory back.
    pub fn keeps_freed_memory(&self) -> bool {
        let model = match &self.command {
            Command::Edit(args) => &args.model,
            Command::Generate(args) => &args.model,
            Command::Train(_) | Command::Prepare(_) => return false,
            Command::Batch(args) => &args.model,
            #[cfg(feature = "serve")]
            Command::Serve(args) => &args.model,
        };
        model.device == DeviceSpec::Cpu && !model.low_memory
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Edit an image as an instruction says.
    Edit(EditArgs),
    /// Generate an image from a prompt.
    Generate(GenerateArgs),
    /// Fine-tune the transformer on edit pairs (full weights or LoRA).
    Train(crate::train::TrainArgs),
    /// Encode a manifest's images and instructions into training shards.
    Prepare(crate::train::PrepareArgs),
    /// Edit every line of a JSONL manifest with one loaded model (resumable, shardable).
    Batch(crate::batch::BatchArgs),
    /// Serve edits over HTTP (API and web page).
    #[cfg(feature = "serve")]
    Serve(crate::serve::ServeArgs),
}

/// Where the model is and what it runs on.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A model folder in the released layout, or a Hugging Face repository id.
    #[arg(long, default_value = "WeiChow/EditMGT")]
    pub model: String,
    /// The backend: cpu, wgpu, cuda or cuda:N (GPU backends need their Cargo feature).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// The float type of the weights: f32, f16 or bf16. On the CPU, bf16 holds the transformer's
    /// linear layers in bf16 and multiplies them with the CPU's AMX-BF16 or AVX512-BF16
    /// instructions (sums in f32, activations in f32); on a CPU without them it runs in f32.
    #[arg(long, default_value = "f32", value_parser = parse_float)]
    pub dtype: FloatType,
    /// Use the least memory: the text encoders are read from the files at each edit (CLIP
    /// loaded and dropped, Gemma-2 one layer at a time), and freed memory goes back to the
    /// system.
    #[arg(long)]
    pub low_memory: bool,
    /// A LoRA adapter folder (peft format, e.g. from `editmgt train`) applied to every stream.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Multiplies the adapter's strength.
    #[arg(long, default_value_t = 1.0)]
    pub lora_scale: f32,
}

/// Sampling parameters shared by both subcommands.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// The negative prompt (default: the released one).
    #[arg(long)]
    pub negative: Option<String>,
    /// Sampling steps.
    #[arg(long, default_value_t = 36)]
    pub steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 6.0)]
    pub guidance: f32,
    /// Seed of the noise (the same seed gives the same result on every platform).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not show a progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// How the source is attended to and held, shared by `editmgt edit` and `editmgt batch` (where
/// they are the defaults of lines that do not set them).
#[derive(Debug, Args)]
pub struct EditingArgs {
    /// Reference strength: how strongly the source is attended to (1 is neutral).
    #[arg(long, default_value_t = 1.1)]
    pub strength: f32,
    /// Region hold threshold in [0, 1]: tokens scoring below it keep their source value
    /// (0.01 is the released suggestion; off when not given).
    #[arg(long)]
    pub hold: Option<f32>,
    /// Blocks whose attention localises the edit: `28..36` (inclusive) or `2,4`.
    #[arg(long, value_parser = parse_blocks)]
    pub hold_blocks: Option<BlockList>,
}

/// `editmgt edit`.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// The image to edit (PNG, JPEG or WebP).
    #[arg(long)]
    pub image: PathBuf,
    /// The instruction.
    #[arg(long)]
    pub prompt: String,
    /// Where to write the edited image (format from the extension).
    #[arg(long)]
    pub out: PathBuf,
    /// Model and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sampling.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Strength and region hold.
    #[command(flatten)]
    pub editing: EditingArgs,
    /// A mask image (white = repaint); any size.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Localise only these words of the instruction.
    #[arg(long)]
    pub query: Option<String>,
    /// Write the localisation heatmap (mean over steps) over the source image to this PNG.
    #[arg(long)]
    pub heatmap: Option<PathBuf>,
    /// Also write the final token grid as JSON (`{"height", "width", "tokens"}`), e.g. to
    /// compare devices.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Print a table of stage timings (loading, text encoding, VQ, transformer and sampler per
    /// step) and the peak resident memory to stderr after the edit. Waits for the device
    /// between stages, which slows a GPU run slightly.
    #[arg(long)]
    pub timings: bool,
}

/// `editmgt generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Where to write the image.
    #[arg(long)]
    pub out: PathBuf,
    /// Model and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sampling.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print a table of stage timings and the peak resident memory to stderr after the
    /// generation (waits for the device between stages).
    #[arg(long)]
    pub timings: bool,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
        .map_err(|e: editmgt_pipeline::EditError| e.to_string())
}

fn parse_float(s: &str) -> Result<FloatType, String> {
    s.parse()
}

/// Transformer block numbers (`--hold-blocks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockList(pub Vec<usize>);

/// `a..b` / `a..=b` (both inclusive) or a comma list.
pub fn parse_blocks(s: &str) -> Result<BlockList, String> {
    let number = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("`{t}` is not a block number"))
    };
    if let Some((a, b)) = s.split_once("..") {
        let (a, b) = (number(a)?, number(b.trim_start_matches('='))?);
        if a > b {
            return Err(format!("empty block range `{s}`"));
        }
        return Ok(BlockList((a..=b).collect()));
    }
    let blocks = s.split(',').map(number).collect::<Result<Vec<_>, _>>()?;
    if blocks.is_empty() {
        return Err("no blocks".into());
    }
    Ok(BlockList(blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_lists() {
        assert_eq!(
            parse_blocks("28..36").unwrap().0,
            (28..=36).collect::<Vec<_>>()
        );
        assert_eq!(parse_blocks("28..=30").unwrap().0, vec![28, 29, 30]);
        assert_eq!(parse_blocks("2,4").unwrap().0, vec![2, 4]);
        assert!(parse_blocks("5..2").is_err());
        assert!(parse_blocks("a").is_err());
    }

    #[test]
    fn arguments_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "editmgt",
            "edit",
            "--image",
            "a.png",
            "--prompt",
            "p",
            "--out",
            "b.png",
            "--hold",
            "0.01",
            "--hold-blocks",
            "28..36",
            "--dtype",
            "bf16",
            "--device",
            "cuda:1",
            "--timings",
        ])
        .unwrap();
        let Command::Edit(args) = cli.command else {
            panic!("edit")
        };
        assert!(args.timings);
        assert_eq!(args.editing.hold, Some(0.01));
        assert_eq!(args.model.dtype, FloatType::BF16);
        assert_eq!(args.model.device, DeviceSpec::Cuda(1));
        assert_eq!(args.editing.hold_blocks.unwrap().0.len(), 9);
    }

    #[test]
    fn freed_memory_is_kept_only_for_cpu_runs_without_low_memory() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["editmgt", "generate", "--prompt", "p", "--out", "o.png"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().keeps_freed_memory()
        };
        assert!(parse(&[]));
        assert!(!parse(&["--low-memory"]));
        assert!(!parse(&["--device", "wgpu"]));
    }
}
