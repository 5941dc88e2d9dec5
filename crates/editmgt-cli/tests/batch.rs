//! `editmgt batch` against the tiny model: bad lines do not stop a run, a run killed midway
//! and started again finishes the rest without writing any output twice or leaving one
//! half-written, and shards split the lines.

#![cfg(unix)]

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use editmgt_testkit::{case_file, model_dir};

fn batch(manifest: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_editmgt"));
    command
        .args(["batch", "--model"])
        .arg(model_dir())
        .arg("--manifest")
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .args(["--resolution", "256", "--quiet"])
        .args(extra);
    command
}

/// Writes `count` good lines (images of different sizes) plus a line whose image is missing
/// and a line that is not JSON; returns the manifest path and the good lines' sizes.
fn manifest(dir: &Path, count: usize, steps: usize) -> (PathBuf, Vec<(u32, u32)>) {
    let source = image::open(case_file("source.png")).unwrap().to_rgb8();
    let mut lines = Vec::new();
    let mut sizes = Vec::new();
    for k in 0..count {
        let size = (96 + 16 * k as u32, 80 + 8 * k as u32);
        let name = format!("in-{k}.png");
        image::imageops::resize(
            &source,
            size.0,
            size.1,
            image::imageops::FilterType::Triangle,
        )
        .save(dir.join(&name))
        .unwrap();
        lines.push(format!(
            r#"{{"image": "{name}", "prompt": "make it snowy", "out": "edited/{k}.png", "seed": {k}, "steps": {steps}}}"#
        ));
        sizes.push(size);
        if k == 1 {
            lines.push(
                r#"{"image": "missing.png", "prompt": "x", "out": "edited/missing.png"}"#.into(),
            );
            lines.push("{not json".into());
        }
    }
    let path = dir.join("edits.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, sizes)
}

fn records(report: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(report)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn partial_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(partial_files(&path));
        } else if path.to_string_lossy().contains(".partial") {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_killed_run_started_again_finishes_without_rewriting_or_half_written_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (manifest, sizes) = manifest(tmp.path(), 6, 6);
    let out = tmp.path().join("out");
    let report = out.join("report.jsonl");

    // First run: killed (SIGKILL) as soon as the first outputs are reported.
    let mut child = batch(&manifest, &out, &["--batch", "2"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let ok = records(&report)
            .iter()
            .filter(|r| r["status"] == "ok")
            .count();
        if ok >= 1 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first run ended before any output was reported"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no output in 300 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first = records(&report);
    let done_before: HashMap<PathBuf, (SystemTime, u64)> = first
        .iter()
        .filter(|r| r["status"] == "ok")
        .map(|r| {
            let path = PathBuf::from(r["out"].as_str().unwrap());
            let meta = std::fs::metadata(&path).unwrap();
            (path, (meta.modified().unwrap(), meta.ino()))
        })
        .collect();
    assert!(
        done_before.len() < sizes.len(),
        "the kill came after every line was done; the test needs a longer run"
    );
    // The two bad lines were reported without stopping the run.
    assert_eq!(first.iter().filter(|r| r["status"] == "error").count(), 2);

    // Second run: finishes the rest; the bad lines make it exit 1 with a one-line summary.
    let output = batch(&manifest, &out, &["--batch", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("2 of 8 lines failed"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    for (k, size) in sizes.iter().enumerate() {
        let path = out.join(format!("edited/{k}.png"));
        let image = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!((image.width(), image.height()), *size, "{}", path.display());
    }
    assert_eq!(partial_files(&out), Vec::<PathBuf>::new());
    // Outputs of the first run were not written again.
    for (path, (modified, inode)) in &done_before {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(meta.modified().unwrap(), *modified, "{}", path.display());
        assert_eq!(meta.ino(), *inode, "{}", path.display());
    }
    // Every good line is reported ok exactly once over both runs; the rest skipped.
    let all = records(&report);
    let second = &all[first.len()..];
    for k in 0..sizes.len() {
        let path = out.join(format!("edited/{k}.png"));
        let is = |r: &serde_json::Value, status: &str| {
            r["status"] == status && Path::new(r["out"].as_str().unwrap_or("")) == path
        };
        assert_eq!(all.iter().filter(|r| is(r, "ok")).count(), 1, "line of {k}");
        let skipped = second.iter().filter(|r| is(r, "skipped")).count();
        assert_eq!(
            skipped,
            usize::from(done_before.contains_key(&path)),
            "line of {k}"
        );
    }
    let ok = second.iter().find(|r| r["status"] == "ok").unwrap();
    assert!(ok["edit_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(ok["batch"], 2);
    let error = second.iter().find(|r| r["status"] == "error").unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("missing.png"),
        "{error}"
    );
    assert_eq!(error["line"], 3);
}

#[test]
fn shards_split_the_lines_between_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let (manifest, sizes) = manifest(tmp.path(), 3, 1);
    let out = tmp.path().join("out");
    // Lines 0..5 (0-based): 0, 1, 4 are good; 2 (missing image) and 3 (not JSON) are bad.
    // Shard 0/2 takes lines 0, 2, 4; shard 1/2 takes lines 1, 3 (Kubernetes' variable).
    let zero = batch(&manifest, &out, &["--shard", "0/2"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&zero.stderr).contains("1 of 3 lines failed"));
    let one = batch(&manifest, &out, &["--shard", "auto/2"])
        .env("JOB_COMPLETION_INDEX", "1")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&one.stderr).contains("1 of 2 lines failed"));
    let zero_report = records(&out.join("report-0-of-2.jsonl"));
    let one_report = records(&out.join("report-1-of-2.jsonl"));
    let lines = |r: &[serde_json::Value]| -> Vec<u64> {
        let mut lines: Vec<u64> = r.iter().map(|r| r["line"].as_u64().unwrap()).collect();
        lines.sort_unstable();
        lines
    };
    assert_eq!(lines(&zero_report), vec![1, 3, 5]);
    assert_eq!(lines(&one_report), vec![2, 4]);
    for k in 0..sizes.len() {
        assert!(out.join(format!("edited/{k}.png")).exists());
    }
    // A shard that does not exist is an error before any work.
    let bad = batch(&manifest, &out, &["--shard", "2/2"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not exist"));
}
