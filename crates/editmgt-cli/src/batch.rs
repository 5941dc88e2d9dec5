//! `editmgt batch`: edits every line of a JSONL manifest with one loaded model, resumably and
//! sharded across processes.
//!
//! A manifest line is a JSON object: `{"image", "prompt", "out"?, "seed"?, "mask"?, "hold"?,
//! "hold_blocks"?, "query"?, "steps"?, "guidance"?, "strength"?, "negative"?, "heatmap"?}`.
//! `image` and `mask` are relative to the manifest's folder, `out` and `heatmap` to `--out`;
//! fields left out take the command line's values. Outputs are written to a temporary name in
//! their folder and renamed, so an output that exists is complete, and a run that is started
//! again skips it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use editmgt_pipeline::{EditOutput, EditRequest, Editor, GrayImage, RegionHold, RgbImage};
use image::ImageFormat;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::args::{BlockList, EditingArgs, ModelArgs, SamplingArgs, parse_blocks};
use crate::checks;
use crate::run::{AnyError, mean_map};

/// `editmgt batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// The JSONL manifest: one edit per line (`{"image": ..., "prompt": ..., "out": ...}`).
    #[arg(long)]
    pub manifest: PathBuf,
    /// The folder outputs are written to (created when missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Up to this many compatible lines (same steps, guidance, strength, hold) are edited in
    /// one guidance batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Take only the lines whose index (from 0, counting every line of the file) is I modulo
    /// N: `I/N`, or `auto` / `auto/N` to read I from `JOB_COMPLETION_INDEX` (Kubernetes) or
    /// `SLURM_ARRAY_TASK_ID` (Slurm) and N from `SLURM_ARRAY_TASK_COUNT` or
    /// `EDITMGT_SHARD_COUNT` when not given.
    #[arg(long)]
    pub shard: Option<String>,
    /// The JSONL report (appended to; default `OUT/report.jsonl`, or
    /// `OUT/report-I-of-N.jsonl` for a shard).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Model and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sampling defaults for lines that do not set them.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Defaults of strength and region hold for lines that do not set them.
    #[command(flatten)]
    pub editing: EditingArgs,
    /// The square resolution edits run at (the model's: 1024 for the released one).
    #[arg(long, default_value_t = editmgt_pipeline::EditorOptions::default().resolution)]
    pub resolution: u32,
}

/// One shard of many: lines with `index % count == index_of_shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard's number, below `count`.
    pub index: usize,
    /// The number of shards.
    pub count: usize,
}

impl Shard {
    /// Parses `I/N`, `auto` or `auto/N`, reading the scheduler's variables through `env`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let bad = |why: &str| format!("--shard `{text}`: {why}");
        let (index, count) = match text.split_once('/') {
            Some((i, n)) => (i.trim(), Some(n.trim())),
            None => (text.trim(), None),
        };
        let number = |name: &str, value: &str| {
            value
                .parse::<usize>()
                .map_err(|_| bad(&format!("{name} `{value}` is not a number")))
        };
        let index = if index == "auto" {
            if let Some(value) = env("JOB_COMPLETION_INDEX") {
                number("JOB_COMPLETION_INDEX", &value)?
            } else if let Some(value) = env("SLURM_ARRAY_TASK_ID") {
                let id = number("SLURM_ARRAY_TASK_ID", &value)?;
                let min = match env("SLURM_ARRAY_TASK_MIN") {
                    Some(min) => number("SLURM_ARRAY_TASK_MIN", &min)?,
                    None => 0,
                };
                id.checked_sub(min)
                    .ok_or_else(|| bad("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN"))?
            } else {
                return Err(bad(
                    "neither JOB_COMPLETION_INDEX nor SLURM_ARRAY_TASK_ID is set",
                ));
            }
        } else {
            number("the shard index", index)?
        };
        let count = match count {
            Some(count) => number("the shard count", count)?,
            None if text.trim() == "auto" => {
                if let Some(value) = env("SLURM_ARRAY_TASK_COUNT") {
                    number("SLURM_ARRAY_TASK_COUNT", &value)?
                } else if let Some(value) = env("EDITMGT_SHARD_COUNT") {
                    number("EDITMGT_SHARD_COUNT", &value)?
                } else {
                    return Err(bad(
                        "the shard count is unknown: use auto/N or set EDITMGT_SHARD_COUNT",
                    ));
                }
            }
            None => return Err(bad("expected I/N, auto or auto/N")),
        };
        if count == 0 || index >= count {
            return Err(bad(&format!(
                "shard {index} of {count} does not exist (need 0 <= I < N)"
            )));
        }
        Ok(Self { index, count })
    }
}

/// A manifest line as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    image: String,
    prompt: String,
    out: Option<String>,
    seed: Option<u64>,
    mask: Option<String>,
    hold: Option<f32>,
    hold_blocks: Option<Value>,
    query: Option<String>,
    steps: Option<usize>,
    guidance: Option<f32>,
    strength: Option<f32>,
    negative: Option<String>,
    heatmap: Option<String>,
}

/// A line ready to edit.
struct Item {
    /// 1-based line number in the manifest.
    line: usize,
    image: PathBuf,
    mask: Option<PathBuf>,
    out: PathBuf,
    heatmap: Option<PathBuf>,
    request: EditRequest,
}

/// What lines of one group share (the fields a guidance batch must agree on).
type GroupKey = String;

/// Runs `editmgt batch`.
pub fn run(args: BatchArgs) -> Result<(), AnyError> {
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let shard = match &args.shard {
        None => Shard { index: 0, count: 1 },
        Some(text) => Shard::parse(text, &|name| std::env::var(name).ok())?,
    };
    let manifest = std::fs::read_to_string(&args.manifest)
        .map_err(|e| format!("cannot read manifest `{}`: {e}", args.manifest.display()))?;
    let base = checks::parent(&args.manifest).to_path_buf();

    // Outputs first: fail before any work when they cannot be written.
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create output folder `{}`: {e}", args.out.display()))?;
    checks::writable_folder(&args.out)?;
    let report_path = args.report.clone().unwrap_or_else(|| {
        if shard.count == 1 {
            args.out.join("report.jsonl")
        } else {
            args.out
                .join(format!("report-{}-of-{}.jsonl", shard.index, shard.count))
        }
    });
    let mut report = Report::open(&report_path)?;

    let mut pending: Vec<Item> = Vec::new();
    let mut outputs: HashMap<PathBuf, usize> = HashMap::new();
    let (mut skipped, mut failed, mut total) = (0usize, 0usize, 0usize);
    for (index, text) in manifest.lines().enumerate() {
        let line = index + 1;
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') || index % shard.count != shard.index {
            continue;
        }
        total += 1;
        let item = match parse_line(text, line, &base, &args) {
            Ok(item) => item,
            Err(error) => {
                failed += 1;
                report.error(line, None, &error)?;
                continue;
            }
        };
        let mut clash = None;
        for path in std::iter::once(&item.out).chain(&item.heatmap) {
            if let Some(other) = outputs.insert(path.clone(), line) {
                clash = Some(format!(
                    "`{}` is also written by line {other}",
                    path.display()
                ));
            }
        }
        if let Some(error) = clash {
            failed += 1;
            report.error(line, Some(&item.out), &error)?;
            continue;
        }
        if item.out.exists() && item.heatmap.as_ref().is_none_or(|h| h.exists()) {
            skipped += 1;
            for path in std::iter::once(&item.out).chain(&item.heatmap) {
                let _ = std::fs::remove_file(partial_name(path));
            }
            report.write(json!({"line": line, "out": item.out, "status": "skipped"}))?;
            continue;
        }
        pending.push(item);
    }
    let quiet = args.sampling.quiet;
    if !quiet {
        eprintln!(
            "editmgt batch: {total} lines in shard {}/{}: {} to edit, {skipped} already done, {failed} invalid",
            shard.index,
            shard.count,
            pending.len()
        );
    }

    if !pending.is_empty() {
        let load_start = Instant::now();
        let editor = crate::run::load_at(&args.model, args.resolution)?;
        if !quiet {
            eprintln!(
                "editmgt batch: model loaded in {:.1} s",
                load_start.elapsed().as_secs_f64()
            );
        }
        // Groups of compatible lines, in the order of their first line.
        let mut groups: Vec<(GroupKey, Vec<Item>)> = Vec::new();
        let mut group_of: BTreeMap<GroupKey, usize> = BTreeMap::new();
        for item in pending {
            let key = group_key(&item.request);
            let slot = *group_of.entry(key.clone()).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[slot].1.push(item);
        }
        let mut done = 0usize;
        let todo: usize = groups.iter().map(|g| g.1.len()).sum();
        for (_, items) in groups {
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                let chunk: Vec<Item> = items.by_ref().take(args.batch).collect();
                let results = edit_chunk(&editor, &chunk);
                for (item, result) in chunk.iter().zip(results) {
                    done += 1;
                    match result {
                        Ok(timing) => {
                            if !quiet {
                                eprintln!(
                                    "editmgt batch: [{done}/{todo}] line {} -> {} ({:.2} s)",
                                    item.line,
                                    item.out.display(),
                                    timing.edit_seconds
                                );
                            }
                            report.write(json!({
                                "line": item.line,
                                "out": item.out,
                                "status": "ok",
                                "batch": timing.batch,
                                "load_seconds": timing.load_seconds,
                                "edit_seconds": timing.edit_seconds,
                                "write_seconds": timing.write_seconds,
                            }))?;
                        }
                        Err(error) => {
                            failed += 1;
                            if !quiet {
                                eprintln!(
                                    "editmgt batch: [{done}/{todo}] line {} failed: {error}",
                                    item.line
                                );
                            }
                            report.error(item.line, Some(&item.out), &error)?;
                        }
                    }
                }
            }
        }
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {total} lines failed (see `{}`)",
            report_path.display()
        )
        .into());
    }
    Ok(())
}

/// Seconds spent on one line.
struct Timing {
    batch: usize,
    load_seconds: f64,
    edit_seconds: f64,
    write_seconds: f64,
}

/// Edits a chunk of compatible items in one guidance batch; when the batch fails, edits the
/// items one by one so that only the bad ones fail.
fn edit_chunk(editor: &Editor, chunk: &[Item]) -> Vec<Result<Timing, String>> {
    let load_start = Instant::now();
    let inputs: Vec<Result<(RgbImage, EditRequest), String>> = chunk.iter().map(inputs).collect();
    let load_seconds = load_start.elapsed().as_secs_f64() / chunk.len() as f64;
    let ready: Vec<usize> = (0..chunk.len()).filter(|&k| inputs[k].is_ok()).collect();
    let mut results: Vec<Result<Timing, String>> = inputs
        .iter()
        .map(|r| match r {
            Ok(_) => Err(String::new()),
            Err(e) => Err(e.clone()),
        })
        .collect();
    let pairs: Vec<(&RgbImage, &EditRequest)> = ready
        .iter()
        .filter_map(|&k| inputs[k].as_ref().ok().map(|(i, r)| (i, r)))
        .collect();
    if pairs.is_empty() {
        return results;
    }
    let start = Instant::now();
    let outcome = editor.edit_batch(&pairs);
    let edit_seconds = start.elapsed().as_secs_f64();
    match outcome {
        Ok(outputs) => {
            let share = edit_seconds / outputs.len() as f64;
            for (&k, output) in ready.iter().zip(outputs) {
                let (image, _) = inputs[k].as_ref().expect("ready");
                results[k] = finish(&chunk[k], image, &output, pairs.len(), load_seconds, share);
            }
        }
        Err(error) if pairs.len() == 1 => {
            results[ready[0]] = Err(crate::run::describe(&error));
        }
        Err(_) => {
            for &k in &ready {
                let (image, request) = inputs[k].as_ref().expect("ready");
                let start = Instant::now();
                results[k] = match editor.edit(image, request) {
                    Ok(output) => {
                        let seconds = start.elapsed().as_secs_f64();
                        finish(&chunk[k], image, &output, 1, load_seconds, seconds)
                    }
                    Err(error) => Err(crate::run::describe(&error)),
                };
            }
        }
    }
    results
}

/// Reads an item's image and mask.
fn inputs(item: &Item) -> Result<(RgbImage, EditRequest), String> {
    let image = editmgt_pipeline::load_image(&item.image).map_err(|e| crate::run::describe(&e))?;
    let mut request = item.request.clone();
    if let Some(mask) = &item.mask {
        let mask: GrayImage =
            editmgt_pipeline::load_mask(mask).map_err(|e| crate::run::describe(&e))?;
        request = request.mask(mask);
    }
    Ok((image, request))
}

/// Writes an item's outputs (heatmap first, the image last: an existing image means done).
fn finish(
    item: &Item,
    source: &RgbImage,
    output: &EditOutput,
    batch: usize,
    load_seconds: f64,
    edit_seconds: f64,
) -> Result<Timing, String> {
    let start = Instant::now();
    if let Some(path) = &item.heatmap {
        let mean = mean_map(&output.localisation).ok_or("no localisation maps were recorded")?;
        let heat = mean
            .heatmap(0, source, 0.6)
            .map_err(|e| crate::run::describe(&e))?;
        save_atomically(&heat, path)?;
    }
    save_atomically(&output.image, &item.out)?;
    Ok(Timing {
        batch,
        load_seconds,
        edit_seconds,
        write_seconds: start.elapsed().as_secs_f64(),
    })
}

/// The temporary name an output is written to before it is renamed.
fn partial_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    checks::parent(path).join(format!(".{name}.partial"))
}

/// Writes `image` to a temporary file next to `path`, syncs it and renames it to `path`.
fn save_atomically(image: &RgbImage, path: &Path) -> Result<(), String> {
    let format = ImageFormat::from_path(path).map_err(|e| format!("`{}`: {e}", path.display()))?;
    let partial = partial_name(path);
    let write = || -> Result<(), Box<dyn std::error::Error>> {
        let mut file = std::io::BufWriter::new(File::create(&partial)?);
        image.write_to(&mut file, format)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&partial, path)?;
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        format!("cannot write `{}`: {e}", path.display())
    })
}

/// Parses a manifest line into an item.
fn parse_line(text: &str, line: usize, base: &Path, args: &BatchArgs) -> Result<Item, String> {
    let fields: Line =
        serde_json::from_str(text).map_err(|e| format!("not a manifest line: {e}"))?;
    let image = base.join(&fields.image);
    let mask = fields.mask.as_ref().map(|m| base.join(m));
    for input in std::iter::once(&image).chain(&mask) {
        if !input.is_file() {
            return Err(format!("image `{}` does not exist", input.display()));
        }
    }
    let out = match &fields.out {
        Some(out) => args.out.join(out),
        None => {
            let stem = Path::new(&fields.image)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            args.out.join(format!("{line:06}-{stem}.png"))
        }
    };
    let heatmap = fields.heatmap.as_ref().map(|h| args.out.join(h));
    for path in std::iter::once(&out).chain(&heatmap) {
        let format = ImageFormat::from_path(path)
            .ok()
            .filter(|f| f.writing_enabled());
        if format.is_none() {
            return Err(format!(
                "cannot write `{}`: the extension does not name a writable image format (use .png, .jpg or .webp)",
                path.display()
            ));
        }
        let folder = checks::parent(path);
        std::fs::create_dir_all(folder)
            .map_err(|e| format!("cannot create folder `{}`: {e}", folder.display()))?;
    }
    let mut request = EditRequest::new(&fields.prompt)
        .steps(fields.steps.unwrap_or(args.sampling.steps))
        .guidance(fields.guidance.unwrap_or(args.sampling.guidance))
        .reference_strength(fields.strength.unwrap_or(args.editing.strength))
        .seed(fields.seed.unwrap_or(args.sampling.seed));
    if let Some(negative) = fields.negative.as_ref().or(args.sampling.negative.as_ref()) {
        request = request.negative_prompt(negative);
    }
    let blocks = match &fields.hold_blocks {
        None => args.editing.hold_blocks.clone(),
        Some(Value::String(text)) => {
            Some(parse_blocks(text).map_err(|e| format!("hold_blocks: {e}"))?)
        }
        Some(Value::Array(values)) => Some(BlockList(
            values
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|b| b as usize)
                        .ok_or_else(|| format!("hold_blocks: `{v}` is not a block number"))
                })
                .collect::<Result<_, _>>()?,
        )),
        Some(other) => {
            return Err(format!(
                "hold_blocks: `{other}` is neither \"a..b\" nor a list of block numbers"
            ));
        }
    };
    let hold = fields.hold.or(args.editing.hold);
    let wants_maps = hold.is_some() || heatmap.is_some() || fields.query.is_some();
    if wants_maps {
        let mut region = RegionHold::new(hold.unwrap_or(0.0));
        if let Some(blocks) = blocks {
            region = region.blocks(blocks.0);
        }
        if let Some(query) = &fields.query {
            region = region.query(query);
        }
        request = request
            .region_hold(region)
            .record_localisation(heatmap.is_some());
    }
    Ok(Item {
        line,
        image,
        mask,
        out,
        heatmap,
        request,
    })
}

/// The fields a guidance batch must share, as a string (`f32` compared bit for bit).
pub fn group_key(request: &EditRequest) -> GroupKey {
    let hold = request
        .region_hold
        .as_ref()
        .map(|h| format!("{:08x}/{:?}", h.threshold.to_bits(), h.blocks));
    format!(
        "{}|{:08x}|{:08x}|{:?}|{hold:?}|{}",
        request.steps,
        request.guidance.to_bits(),
        request.reference_strength.to_bits(),
        request.temperature,
        request.record_localisation
    )
}

/// The JSONL report, flushed after every record.
struct Report {
    file: File,
    path: PathBuf,
}

impl Report {
    fn open(path: &Path) -> Result<Self, String> {
        checks::writable_file(path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open report `{}`: {e}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, record: Value) -> Result<(), String> {
        let mut text = record.to_string();
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| format!("cannot write report `{}`: {e}", self.path.display()))
    }

    fn error(&mut self, line: usize, out: Option<&Path>, error: &str) -> Result<(), String> {
        self.write(json!({"line": line, "out": out, "status": "error", "error": error}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_come_from_the_argument_or_the_scheduler() {
        let none = |_: &str| None;
        assert_eq!(Shard::parse("2/4", &none), Ok(Shard { index: 2, count: 4 }));
        assert!(Shard::parse("4/4", &none).is_err());
        assert!(Shard::parse("1/0", &none).is_err());
        assert!(Shard::parse("x/2", &none).is_err());
        assert!(
            Shard::parse("auto/3", &none)
                .unwrap_err()
                .contains("JOB_COMPLETION_INDEX")
        );
        let k8s = |name: &str| (name == "JOB_COMPLETION_INDEX").then(|| "1".to_string());
        assert_eq!(
            Shard::parse("auto/3", &k8s),
            Ok(Shard { index: 1, count: 3 })
        );
        assert!(Shard::parse("auto", &k8s).unwrap_err().contains("count"));
        let slurm = |name: &str| match name {
            "SLURM_ARRAY_TASK_ID" => Some("5".to_string()),
            "SLURM_ARRAY_TASK_MIN" => Some("1".to_string()),
            "SLURM_ARRAY_TASK_COUNT" => Some("8".to_string()),
            _ => None,
        };
        assert_eq!(
            Shard::parse("auto", &slurm),
            Ok(Shard { index: 4, count: 8 })
        );
    }

    #[test]
    fn requests_group_by_what_a_batch_shares() {
        let a = EditRequest::new("a").seed(1).steps(4);
        let b = EditRequest::new("b").seed(2).steps(4);
        let c = EditRequest::new("a").steps(5);
        let d = EditRequest::new("a")
            .steps(4)
            .region_hold(RegionHold::new(0.1));
        assert_eq!(group_key(&a), group_key(&b));
        assert_ne!(group_key(&a), group_key(&c));
        assert_ne!(group_key(&a), group_key(&d));
    }

    #[test]
    fn outputs_are_renamed_into_place() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("o.png");
        save_atomically(&RgbImage::new(3, 2), &path).unwrap();
        assert_eq!(image::open(&path).unwrap().width(), 3);
        assert!(!partial_name(&path).exists());
        let error = save_atomically(&RgbImage::new(3, 2), &tmp.path().join("no/o.png"));
        assert!(error.unwrap_err().contains("no/o.png"));
    }
}
