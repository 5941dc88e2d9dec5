//! The `editmgt` binary against the repository's tiny model.

use std::process::Command;

use editmgt_testkit::{case_file, model_dir};

fn editmgt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_editmgt"))
}

/// Runs `command` and requires success, showing its stderr otherwise.
fn succeeds(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `command`, requires a non-zero exit and returns its stderr.
fn fails(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn edits_an_image_and_writes_a_png_of_the_input_size() {
    let tmp = tempfile::tempdir().unwrap();
    // An input that is not the model resolution: the result must come back at 320x240.
    let source = image::open(case_file("source.png")).unwrap().to_rgb8();
    let input = tmp.path().join("input.jpg");
    image::imageops::resize(&source, 320, 240, image::imageops::FilterType::Triangle)
        .save(&input)
        .unwrap();
    let out = tmp.path().join("edited.png");
    let heatmap = tmp.path().join("heatmap.png");
    succeeds(
        editmgt()
            .args(["edit", "--model"])
            .arg(model_dir())
            .arg("--image")
            .arg(&input)
            .args([
                "--prompt",
                "make the sky blue",
                "--steps",
                "2",
                "--seed",
                "5",
                "--quiet",
            ])
            .args([
                "--hold",
                "0.2",
                "--hold-blocks",
                &editmgt_testkit::hold_blocks_arg(),
            ])
            .args(["--query", "sky", "--heatmap"])
            .arg(&heatmap)
            .arg("--out")
            .arg(&out),
    );
    let edited = image::open(&out).unwrap();
    assert_eq!((edited.width(), edited.height()), (320, 240));
    let heat = image::open(&heatmap).unwrap();
    assert_eq!((heat.width(), heat.height()), (320, 240));
}

#[test]
fn generates_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cat.png");
    let output = editmgt()
        .args(["generate", "--model"])
        .arg(model_dir())
        .args([
            "--prompt",
            "a white cat",
            "--steps",
            "2",
            "--quiet",
            "--timings",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr: {stderr}");
    let image = image::open(&out).unwrap();
    assert_eq!((image.width(), image.height()), (1024, 1024));
    // `--timings` prints the stage table to stderr.
    for row in [
        "load transformer",
        "transformer, step 1",
        "edit total",
        "peak RSS",
    ] {
        assert!(
            stderr.lines().any(|line| line.starts_with(row)),
            "no `{row}` row in stderr: {stderr}"
        );
    }
}

#[test]
fn errors_are_one_line_and_exit_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-model");
    let stderr = fails(
        editmgt()
            .args(["edit", "--image"])
            .arg(case_file("source.png"))
            .args(["--prompt", "x", "--out"])
            .arg(tmp.path().join("o.png"))
            .arg("--model")
            .arg(&missing),
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("editmgt: error: "), "{stderr}");

    let stderr = fails(
        editmgt()
            .args(["edit", "--model"])
            .arg(model_dir())
            .args([
                "--image",
                "/nonexistent.png",
                "--prompt",
                "x",
                "--steps",
                "0",
                "--out",
            ])
            .arg(tmp.path().join("o.png")),
    );
    assert!(stderr.contains("/nonexistent.png"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    let stderr = fails(
        editmgt()
            .args(["edit", "--model"])
            .arg(model_dir())
            .arg("--image")
            .arg(case_file("source.png"))
            .args(["--prompt", "x", "--steps", "0", "--out"])
            .arg(tmp.path().join("o.png")),
    );
    assert!(stderr.contains("steps"), "{stderr}");
}
