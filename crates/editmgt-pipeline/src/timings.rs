//! Stage timings of loading an [`Editor`](crate::Editor) and of one edit or generation.

use std::fmt::Write as _;
use std::time::Duration;

/// How long loading each component of an [`Editor`](crate::Editor) took: host wall time of
/// [`Editor::from_folder`](crate::Editor::from_folder) (which does not wait for uploads a GPU
/// backend may still have queued).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadTimings {
    /// The VQ tokenizer (encoder, codebook and decoder).
    pub vq: Duration,
    /// The transformer, with the LoRA adapter when one is applied.
    pub transformer: Duration,
    /// The text encoders (CLIP and Gemma-2) with their tokenizers; with
    /// [`TextEncoders::LoadPerCall`](crate::TextEncoders::LoadPerCall) only the tokenizers (the
    /// encoders then load inside every edit's [`Timings::text_encoding`]).
    pub text_encoders: Duration,
    /// All of loading: the components above, the configurations and the checks.
    pub total: Duration,
    /// The peak resident memory of the process in bytes when loading finished (`VmHWM`, see
    /// [`Timings::peak_rss`]).
    pub peak_rss: Option<u64>,
}

/// How long the stages of one edit or generation took (for a batch: the whole batch's, the same
/// in every item's output).
///
/// Every time is host wall-clock time ([`std::time::Instant`]). On the CPU backend the
/// operations run as they are issued, so a stage's time is its work. On a GPU backend the host
/// only queues work: unless [`EditRequest::timings`](crate::EditRequest::timings) (or
/// [`GenerateRequest::timings`](crate::GenerateRequest::timings)) asks the editor to wait for
/// the device at every stage boundary, a stage's time is how long queueing it took, and the
/// queued work is waited for at the final read-back (whose time then holds most of the loop's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timings {
    /// Whether the device was waited for at every stage boundary (the request's `timings`
    /// flag). When `false`, on a GPU backend the stage times are the host's queueing times.
    pub synced: bool,
    /// Tokenizing and encoding the prompts (and negative prompts) with CLIP and Gemma-2,
    /// including loading the encoders with
    /// [`TextEncoders::LoadPerCall`](crate::TextEncoders::LoadPerCall).
    pub text_encoding: Duration,
    /// Uploading the source images and tokenizing them with the VQ encoder; `None` for a
    /// generation, which has no source image.
    pub vq_encode: Option<Duration>,
    /// Per step, in order: the transformer's blocks and, with region hold, the localisation of
    /// their attention maps.
    pub transformer: Vec<Duration>,
    /// Per step, in order: the transformer's head (logits), guidance, drawing and uploading
    /// the noise, and the sampler's step, for every group of items.
    pub sampler: Vec<Duration>,
    /// Reading the final tokens and the sampler's fault report back after the loop.
    pub readback: Duration,
    /// Decoding the final tokens to images with the VQ decoder and reading them back.
    pub vq_decode: Duration,
    /// The whole call, from the request to the returned images (without loading the editor).
    pub total: Duration,
    /// The peak resident memory of the process in bytes when the call returned (`VmHWM` of
    /// `/proc/self/status`; `None` where that is not available, i.e. outside Linux). Host
    /// memory only: a GPU's memory is not included.
    pub peak_rss: Option<u64>,
    /// The peak resident memory so far at the end of each stage, in order (`"text encoding"`,
    /// `"VQ encode"`, `"steps"`, `"VQ decode"`): the first stage whose value reaches
    /// [`Timings::peak_rss`] is the one that set it. Empty outside Linux.
    pub peak_rss_by_stage: Vec<(&'static str, u64)>,
}

impl Timings {
    /// Records the peak resident memory so far as that at the end of `stage`.
    pub(crate) fn mark_peak(&mut self, stage: &'static str) {
        if let Some(bytes) = peak_rss() {
            self.peak_rss_by_stage.push((stage, bytes));
        }
    }

    /// The transformer's time at the first step (which also pays one-time costs such as
    /// kernel compilation on a GPU); `None` when no step ran.
    pub fn transformer_first(&self) -> Option<Duration> {
        self.transformer.first().copied()
    }

    /// The mean of the transformer's time over the steps after the first; `None` with fewer
    /// than two steps.
    pub fn transformer_rest_mean(&self) -> Option<Duration> {
        mean(self.transformer.get(1..).unwrap_or(&[]))
    }

    /// The mean of the sampler's time per step; `None` when no step ran.
    pub fn sampler_mean(&self) -> Option<Duration> {
        mean(&self.sampler)
    }

    /// A readable table of these timings (and of `load`, when given), for a terminal: a
    /// `stage  ms` header, one aligned row per stage in milliseconds (the transformer's first
    /// step, then its mean over the other steps), and the peak resident memory in MiB (`n/a`
    /// where unknown). When the device was not waited for between stages, a last line says that
    /// on a GPU the times are queueing times.
    pub fn table(&self, load: Option<&LoadTimings>) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        if let Some(load) = load {
            rows.push(("load VQ".into(), millis(load.vq)));
            rows.push(("load transformer".into(), millis(load.transformer)));
            rows.push(("load text encoders".into(), millis(load.text_encoders)));
            rows.push(("load total".into(), millis(load.total)));
        }
        rows.push(("text encoding".into(), millis(self.text_encoding)));
        if let Some(vq_encode) = self.vq_encode {
            rows.push(("VQ encode".into(), millis(vq_encode)));
        }
        if let Some(first) = self.transformer_first() {
            rows.push(("transformer, step 1".into(), millis(first)));
        }
        if let Some(rest) = self.transformer_rest_mean() {
            let label = format!("transformer, mean of steps 2..{}", self.transformer.len());
            rows.push((label, millis(rest)));
        }
        if let Some(sampler) = self.sampler_mean() {
            rows.push(("sampler, mean per step".into(), millis(sampler)));
        }
        rows.push(("final read-back".into(), millis(self.readback)));
        rows.push(("VQ decode".into(), millis(self.vq_decode)));
        rows.push(("edit total".into(), millis(self.total)));
        if let Some(load) = load {
            rows.push((
                "load + edit".into(),
                millis(load.total.saturating_add(self.total)),
            ));
        }
        let rss = match self.peak_rss {
            Some(bytes) => format!("{} MiB", bytes.div_ceil(1 << 20)),
            None => "n/a".into(),
        };

        let label_width = rows
            .iter()
            .map(|(label, _)| label.len())
            .chain(["stage".len(), "peak RSS".len()])
            .chain(
                self.peak_rss_by_stage
                    .iter()
                    .map(|(stage, _)| "peak RSS after ".len() + stage.len())
                    .chain(["peak RSS after load".len()]),
            )
            .max()
            .unwrap_or(0);
        let value_width = rows
            .iter()
            .map(|(_, value)| value.len())
            .chain([rss.len(), "ms".len(), "00000 MiB".len()])
            .max()
            .unwrap_or(0);
        let mut table = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(table, "{:<label_width$}  {:>value_width$}", "stage", "ms");
        for (label, value) in &rows {
            let _ = writeln!(table, "{label:<label_width$}  {value:>value_width$}");
        }
        let load_peak = load.and_then(|l| l.peak_rss).map(|bytes| ("load", bytes));
        for (stage, bytes) in load_peak.iter().chain(&self.peak_rss_by_stage) {
            let _ = writeln!(
                table,
                "{:<label_width$}  {:>value_width$}",
                format!("peak RSS after {stage}"),
                format!("{} MiB", bytes.div_ceil(1 << 20)),
            );
        }
        let _ = writeln!(table, "{:<label_width$}  {rss:>value_width$}", "peak RSS");
        if !self.synced {
            table.push_str(
                "(the device was not waited for between stages: on a GPU these are queueing times)\n",
            );
        }
        table
    }
}

/// The mean of `durations`, `None` when empty.
fn mean(durations: &[Duration]) -> Option<Duration> {
    let n = u32::try_from(durations.len()).ok().filter(|&n| n > 0)?;
    let sum = durations
        .iter()
        .fold(Duration::ZERO, |sum, &d| sum.saturating_add(d));
    Some(sum / n)
}

/// Milliseconds with one decimal.
fn millis(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1e3)
}

/// The peak resident memory of this process in bytes (`VmHWM` of `/proc/self/status`); `None`
/// outside Linux or when it cannot be read.
pub fn peak_rss() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        parse_vm_hwm(&status)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The `VmHWM` (peak resident set size) of the text of a Linux `/proc/<pid>/status` file, in
/// bytes; `None` when the line is missing or malformed.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let mut fields = line.split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    // The kernel writes the value in kB (KiB).
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_parsed_in_bytes() {
        let status =
            "Name:\teditmgt\nVmPeak:\t 9000000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t  100000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(123_456 * 1024));
        assert_eq!(parse_vm_hwm("VmRSS:\t 1 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t lots kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t 12\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t 12 furlongs\n"), None);
        assert_eq!(parse_vm_hwm(""), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_peak_rss() {
        assert!(peak_rss().is_some_and(|bytes| bytes > 0));
    }

    #[test]
    fn means_skip_the_first_transformer_step() {
        let ms = Duration::from_millis;
        let t = Timings {
            transformer: vec![ms(100), ms(10), ms(20)],
            sampler: vec![ms(1), ms(2), ms(3)],
            ..Timings::default()
        };
        assert_eq!(t.transformer_first(), Some(ms(100)));
        assert_eq!(t.transformer_rest_mean(), Some(ms(15)));
        assert_eq!(t.sampler_mean(), Some(ms(2)));
        let empty = Timings::default();
        assert_eq!(empty.transformer_first(), None);
        assert_eq!(empty.transformer_rest_mean(), None);
        assert_eq!(empty.sampler_mean(), None);
    }

    #[test]
    fn the_table_is_aligned() {
        let ms = Duration::from_millis;
        let load = LoadTimings {
            vq: ms(12),
            transformer: ms(850),
            text_encoders: ms(1203),
            total: ms(2070),
            peak_rss: Some(900 << 20),
        };
        let run = Timings {
            synced: true,
            text_encoding: ms(45),
            vq_encode: Some(ms(10)),
            transformer: vec![ms(120), ms(100), ms(102)],
            sampler: vec![ms(5), ms(5), ms(5)],
            readback: Duration::from_micros(200),
            vq_decode: ms(30),
            total: ms(3900),
            peak_rss: Some(1234 << 20),
            peak_rss_by_stage: vec![("text encoding", 1000 << 20), ("VQ decode", 1234 << 20)],
        };
        let table = run.table(Some(&load));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 18, "{table}");
        // Every line has the same width and the values end in the same column.
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
        assert!(lines[0].starts_with("stage") && lines[0].ends_with("ms"));
        assert!(table.contains("transformer, step 1"), "{table}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("transformer, mean of steps 2..3") && l.ends_with(" 101.0")),
            "{table}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("load text encoders") && l.ends_with(" 1203.0")),
            "{table}"
        );
        assert!(lines.iter().any(|l| l.ends_with(" 0.2")), "{table}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("load + edit") && l.ends_with(" 5970.0"))
        );
        assert!(lines[14].starts_with("peak RSS after load") && lines[14].ends_with(" 900 MiB"));
        assert!(
            lines[15].starts_with("peak RSS after text encoding")
                && lines[15].ends_with(" 1000 MiB")
        );
        assert!(lines[16].starts_with("peak RSS after VQ decode"));
        assert!(lines[17].starts_with("peak RSS ") && lines[17].ends_with(" 1234 MiB"));

        // A generation without load rows, one step, unknown memory and no synchronisation.
        let run = Timings {
            vq_encode: None,
            transformer: vec![ms(7)],
            sampler: vec![ms(1)],
            peak_rss: None,
            peak_rss_by_stage: Vec::new(),
            synced: false,
            ..run
        };
        let table = run.table(None);
        assert!(
            !table.contains("load") && !table.contains("VQ encode"),
            "{table}"
        );
        assert!(!table.contains("mean of steps"), "{table}");
        assert!(table.contains("sampler, mean per step"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("peak RSS") && l.ends_with("n/a"))
        );
        assert!(table.trim_end().ends_with("queueing times)"), "{table}");
    }
}
