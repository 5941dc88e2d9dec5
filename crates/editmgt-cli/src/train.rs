//! `editmgt train` and `editmgt prepare`: fine-tuning the transformer on edit pairs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use editmgt_mgt::{LoraStreams, MgtTransformer};
use editmgt_pipeline::{DeviceSpec, FloatType};
use editmgt_train::data::{
    PrepareOptions, PreparedDataset, Record, Skipped, prepare as prepare_data, read_manifest,
};
use editmgt_train::lora::{adapter_config, save_adapter};
use editmgt_train::{
    EmaConfig, LoraConfig, OptimizerConfig, TrainConfig, TrainRun, Trainer,
    data::shards::INDEX_FILE,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::run::AnyError;

/// Column names of Parquet datasets.
#[derive(Debug, Args)]
pub struct ColumnArgs {
    /// Parquet column holding the source image's bytes.
    #[arg(long, default_value = "source")]
    pub source_column: String,
    /// Parquet column holding the instruction.
    #[arg(long, default_value = "instruction")]
    pub instruction_column: String,
    /// Parquet column holding the target image's bytes.
    #[arg(long, default_value = "target")]
    pub target_column: String,
}

/// `editmgt prepare`: encode a manifest's images and instructions into training shards.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// A JSONL manifest of `{"source", "instruction", "target"}` records (image paths relative
    /// to it), a folder holding `manifest.jsonl`, or a `.parquet` file with image-bytes columns.
    #[arg(long)]
    pub data: PathBuf,
    /// The model folder (its VQ model and text encoders encode the data).
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the shards.
    #[arg(long)]
    pub out: PathBuf,
    /// Parquet columns.
    #[command(flatten)]
    pub columns: ColumnArgs,
    /// Square resolution images are resized to.
    #[arg(long, default_value_t = 1024)]
    pub resolution: u32,
    /// Examples per shard file.
    #[arg(long, default_value_t = 256)]
    pub shard_size: usize,
    /// The backend: cpu, wgpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Do not show a progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `editmgt train`: fine-tune the transformer (full weights or LoRA).
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The model folder to start from.
    #[arg(long)]
    pub model: PathBuf,
    /// Training data: a folder written by `editmgt prepare`, a JSONL manifest, or a folder
    /// holding `manifest.jsonl` (prepared into `<out>/prepared` first).
    #[arg(long)]
    pub data: PathBuf,
    /// Where checkpoints, the adapter or the weights go.
    #[arg(long)]
    pub out: PathBuf,
    /// Train a LoRA adapter of this rank instead of every weight.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA alpha (scale alpha / rank); default twice the rank.
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// LoRA target modules, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "to_q,to_k,to_v")]
    pub lora_targets: Vec<String>,
    /// Apply the adapters to every stream instead of the reference stream only.
    #[arg(long)]
    pub lora_all_streams: bool,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub accumulate: usize,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Global gradient-norm limit (0: no clipping).
    #[arg(long, default_value_t = 10.0)]
    pub max_grad_norm: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-2)]
    pub weight_decay: f64,
    /// Keep an EMA of the weights with this decay.
    #[arg(long)]
    pub ema: Option<f64>,
    /// Probability of training an example with the empty prompt.
    #[arg(long, default_value_t = 0.0)]
    pub cond_dropout: f64,
    /// Lower bound of the mask ratio.
    #[arg(long, default_value_t = 0.0)]
    pub min_masking_rate: f64,
    /// Continue from this checkpoint folder.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Save a checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    /// Seed of masks, data order and LoRA initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Parquet columns.
    #[command(flatten)]
    pub columns: ColumnArgs,
    /// Resolution when preparing a manifest.
    #[arg(long, default_value_t = 1024)]
    pub resolution: u32,
    /// Backends, comma separated (several: data-parallel), e.g. `cuda:0,cuda:1`.
    #[arg(long, value_delimiter = ',', default_value = "cpu", value_parser = parse_device)]
    pub device: Vec<DeviceSpec>,
    /// Do not show a progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
        .map_err(|e: editmgt_pipeline::EditError| e.to_string())
}

fn bar(total: u64, quiet: bool, template: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn manifest_path(data: &Path) -> PathBuf {
    if data.is_dir() {
        data.join("manifest.jsonl")
    } else {
        data.to_path_buf()
    }
}

/// The records of a manifest or a Parquet file.
fn read_records(
    data: &Path,
    columns: &ColumnArgs,
) -> Result<(Vec<Record>, Vec<Skipped>), AnyError> {
    let path = manifest_path(data);
    if path.extension().is_some_and(|e| e == "parquet") {
        return read_parquet(&path, columns);
    }
    Ok(read_manifest(&path)?)
}

#[cfg(feature = "parquet")]
fn read_parquet(
    path: &Path,
    columns: &ColumnArgs,
) -> Result<(Vec<Record>, Vec<Skipped>), AnyError> {
    let columns = editmgt_train::data::parquet::ParquetColumns {
        source: columns.source_column.clone(),
        instruction: columns.instruction_column.clone(),
        target: columns.target_column.clone(),
    };
    Ok(editmgt_train::data::parquet::read_parquet(path, &columns)?)
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(
    path: &Path,
    _columns: &ColumnArgs,
) -> Result<(Vec<Record>, Vec<Skipped>), AnyError> {
    Err(format!(
        "`{}`: reading Parquet needs the `parquet` feature",
        path.display()
    )
    .into())
}

fn warn(skipped: &Skipped) {
    eprintln!("editmgt: warning: skipped {skipped}");
}

fn run_prepare(
    data: &Path,
    columns: &ColumnArgs,
    model: &Path,
    out: &Path,
    device: &DeviceSpec,
    options: &PrepareOptions,
    quiet: bool,
) -> Result<(), AnyError> {
    let (records, skipped) = read_records(data, columns)?;
    let device = device.device()?;
    let bar = bar(
        records.len() as u64,
        quiet,
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} records ({per_sec}, eta {eta})",
    );
    let report = prepare_data(
        model,
        &records,
        skipped,
        out,
        &device,
        options,
        &mut |s| bar.suspend(|| warn(s)),
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    if !quiet {
        eprintln!(
            "editmgt: prepared {} examples into {} ({} skipped)",
            report.examples,
            report.dir.display(),
            report.skipped.len()
        );
    }
    Ok(())
}

/// Runs `editmgt prepare`.
pub fn prepare(args: PrepareArgs) -> Result<(), AnyError> {
    let options = PrepareOptions {
        resolution: args.resolution,
        shard_size: args.shard_size,
        ..PrepareOptions::default()
    };
    run_prepare(
        &args.data,
        &args.columns,
        &args.model,
        &args.out,
        &args.device,
        &options,
        args.quiet,
    )
}

fn config(args: &TrainArgs) -> TrainConfig {
    TrainConfig {
        optimizer: OptimizerConfig {
            lr: args.lr,
            weight_decay: args.weight_decay,
            max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
            warmup_steps: args.warmup,
            ..OptimizerConfig::default()
        },
        lora: args.lora_rank.map(|rank| LoraConfig {
            rank,
            alpha: args.lora_alpha.unwrap_or(2.0 * rank as f64),
            targets: args.lora_targets.clone(),
            streams: if args.lora_all_streams {
                LoraStreams::All
            } else {
                LoraStreams::Reference
            },
        }),
        ema: args.ema.map(|decay| EmaConfig {
            decay,
            ..EmaConfig::default()
        }),
        batch_size: args.batch,
        accumulation: args.accumulate,
        steps: args.steps,
        min_masking_rate: args.min_masking_rate,
        cond_dropout: args.cond_dropout,
        seed: args.seed,
        save_every: args.save_every,
    }
}

/// Writes the result: the adapter (LoRA) or the full weights (`editmgt/` folder).
fn export(trainer: &Trainer, out: &Path) -> Result<PathBuf, AnyError> {
    let ema = trainer.ema().is_some();
    let model = trainer.inference_model(ema);
    match &trainer.config().lora {
        Some(lora) => {
            let dir = out.join("adapter");
            save_adapter(&model, &adapter_config(lora), &dir)?;
            Ok(dir)
        }
        None => {
            let dir = out.join("editmgt");
            editmgt_train::export::save_transformer(&model, &dir)?;
            Ok(dir)
        }
    }
}

/// Runs `editmgt train`.
pub fn train(args: TrainArgs) -> Result<(), AnyError> {
    let config = config(&args);
    config.validate()?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create `{}`: {e}", args.out.display()))?;
    // Data: prepared shards, or a manifest prepared now.
    let data_dir = if args.data.join(INDEX_FILE).is_file() {
        args.data.clone()
    } else {
        let prepared = args.out.join("prepared");
        if !prepared.join(INDEX_FILE).is_file() {
            let options = PrepareOptions {
                resolution: args.resolution,
                ..PrepareOptions::default()
            };
            let first = args.device.first().cloned().unwrap_or(DeviceSpec::Cpu);
            run_prepare(
                &args.data,
                &args.columns,
                &args.model,
                &prepared,
                &first,
                &options,
                args.quiet,
            )?;
        }
        prepared
    };
    let data = PreparedDataset::open(&data_dir)?;
    let devices = args
        .device
        .iter()
        .map(|d| d.device())
        .collect::<Result<Vec<_>, _>>()?;
    let model = MgtTransformer::load(&args.model, &devices[0], FloatType::F32)?;
    let trainer = Trainer::new(model, config.clone(), &devices)?;
    let mut run = match &args.resume {
        Some(dir) => TrainRun::resume(trainer, &data, dir)?,
        None => TrainRun::new(trainer, &data)?,
    };
    let start = run.trainer().step();
    let bar = bar(
        config.steps,
        args.quiet,
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps ({per_sec}, eta {eta}) {msg}",
    );
    bar.set_position(start);
    let began = Instant::now();
    while run.trainer().step() < config.steps {
        let stats = run.step()?;
        bar.set_position(stats.step);
        let rate = (stats.step - start) as f64 / began.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "loss {:.4}, grad norm {:.3}, lr {:.2e}, {rate:.2} steps/s",
            stats.loss, stats.grad_norm, stats.lr
        ));
        if config.save_every > 0 && stats.step % config.save_every == 0 {
            run.save(&args.out.join(format!("checkpoint-{}", stats.step)))?;
        }
    }
    bar.finish_and_clear();
    let last = args
        .out
        .join(format!("checkpoint-{}", run.trainer().step()));
    run.save(&last)?;
    let result = export(run.trainer(), &args.out)?;
    if !args.quiet {
        eprintln!(
            "editmgt: trained {} steps; checkpoint {}, result {}",
            run.trainer().step(),
            last.display(),
            result.display()
        );
    }
    Ok(())
}
