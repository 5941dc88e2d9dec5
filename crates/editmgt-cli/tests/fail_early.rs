//! Outputs that cannot be written and model paths that do not exist fail before any work.

use std::process::Command;
use std::time::{Duration, Instant};

use editmgt_testkit::{case_file, model_dir};

fn editmgt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_editmgt"))
}

/// Runs `command`, requires a one-line error well before an edit could finish, and returns it.
fn fails_fast(command: &mut Command) -> String {
    let start = Instant::now();
    // No hub traffic can happen: an unreachable endpoint, offline mode.
    let output = command
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.starts_with("editmgt: error: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(20), "{stderr}");
    stderr
}

#[test]
fn an_unwritable_output_fails_before_the_model_is_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("missing-folder/o.png");
    // The model does not exist either: the output is checked first, so that is not reported.
    let stderr = fails_fast(
        editmgt()
            .args(["edit", "--model", "/no/such/model", "--image"])
            .arg(case_file("source.png"))
            .args(["--prompt", "x", "--steps", "2", "--quiet", "--out"])
            .arg(&out),
    );
    assert!(stderr.contains("missing-folder"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    // A heatmap path is checked too, before the model loads.
    let stderr = fails_fast(
        editmgt()
            .args(["edit", "--model"])
            .arg(model_dir())
            .arg("--image")
            .arg(case_file("source.png"))
            .args(["--prompt", "x", "--steps", "2", "--quiet", "--hold", "0"])
            .args(["--hold-blocks", "2..4", "--out"])
            .arg(tmp.path().join("o.png"))
            .arg("--heatmap")
            .arg(tmp.path().join("heat.bmpx")),
    );
    assert!(stderr.contains("heat.bmpx"), "{stderr}");
    assert!(!tmp.path().join("o.png").exists());

    let folder = tmp.path().join("folder.png");
    std::fs::create_dir(&folder).unwrap();
    let stderr = fails_fast(
        editmgt()
            .args(["generate", "--model", "/no/such/model", "--prompt", "x"])
            .args(["--steps", "1", "--quiet", "--out"])
            .arg(&folder),
    );
    assert!(stderr.contains("is a folder"), "{stderr}");
}

#[test]
fn a_model_that_looks_like_a_path_and_does_not_exist_is_not_a_hub_request() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.png");
    let missing_in_existing_folder = tmp.path().join("EditMGT");
    for model in [
        "./EditMGT",
        "/no/such/EditMGT",
        "models/weights/EditMGT",
        missing_in_existing_folder.to_str().unwrap(),
    ] {
        let stderr = fails_fast(
            editmgt()
                .args(["edit", "--model", model, "--image"])
                .arg(case_file("source.png"))
                .args(["--prompt", "x", "--steps", "2", "--quiet", "--out"])
                .arg(&out),
        );
        assert!(
            stderr.contains(&format!("no such model folder `{model}`")),
            "{stderr}"
        );
        let stderr = fails_fast(
            editmgt()
                .args(["generate", "--model", model, "--prompt", "x", "--quiet"])
                .arg("--out")
                .arg(&out),
        );
        assert!(stderr.contains("no such model folder"), "{stderr}");
    }
}
