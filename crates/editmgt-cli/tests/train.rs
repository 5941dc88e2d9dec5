//! `editmgt prepare` and `editmgt train` against the repository's tiny model: a JSONL manifest
//! fine-tuned end to end (LoRA and full), the adapter used by `editmgt edit --lora`.

use std::path::Path;
use std::process::Command;

use editmgt_testkit::{case_file, model_dir};

fn editmgt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_editmgt"))
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Two edit pairs cut from the fixture image, a bad line and a missing image.
fn manifest(dir: &Path) -> std::path::PathBuf {
    let source = image::open(case_file("source.png")).unwrap().to_rgb8();
    for (i, (x, y)) in [(0u32, 0u32), (512, 512)].iter().enumerate() {
        let crop = image::imageops::crop_imm(&source, *x, *y, 256, 256).to_image();
        crop.save(dir.join(format!("before{i}.png"))).unwrap();
        image::imageops::flip_horizontal(&crop)
            .save(dir.join(format!("after{i}.png")))
            .unwrap();
    }
    let path = dir.join("manifest.jsonl");
    std::fs::write(
        &path,
        [
            r#"{"source": "before0.png", "instruction": "mirror it", "target": "after0.png"}"#,
            r#"{"source": "before1.png", "instruction": "mirror the picture", "target": "after1.png"}"#,
            r#"{"source": "before1.png", "instruction": "no target"}"#,
            r#"{"source": "missing.png", "instruction": "gone", "target": "after0.png"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    path
}

#[test]
fn trains_a_lora_adapter_from_a_manifest_and_edits_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = manifest(tmp.path());
    let out = tmp.path().join("run");
    let (ok, stderr) = run(editmgt()
        .args(["train", "--model"])
        .arg(model_dir())
        .arg("--data")
        .arg(&manifest)
        .arg("--out")
        .arg(&out)
        .args([
            "--resolution",
            "128",
            "--steps",
            "3",
            "--batch",
            "2",
            "--lora-rank",
            "2",
            "--lr",
            "1e-3",
            "--quiet",
        ]));
    assert!(ok, "stderr: {stderr}");
    // The two bad records are reported and skipped.
    assert_eq!(stderr.matches("warning: skipped").count(), 2, "{stderr}");
    assert!(stderr.contains("missing field `target`"), "{stderr}");
    assert!(out.join("adapter/adapter_model.safetensors").is_file());
    assert!(out.join("adapter/adapter_config.json").is_file());
    assert!(
        out.join("checkpoint-3/training_state.safetensors")
            .is_file()
    );

    // Resume to step 4.
    let (ok, stderr) = run(editmgt()
        .args(["train", "--model"])
        .arg(model_dir())
        .arg("--data")
        .arg(out.join("prepared"))
        .arg("--out")
        .arg(&out)
        .arg("--resume")
        .arg(out.join("checkpoint-3"))
        .args([
            "--steps",
            "4",
            "--batch",
            "2",
            "--lora-rank",
            "2",
            "--quiet",
        ]));
    assert!(ok, "stderr: {stderr}");
    assert!(
        out.join("checkpoint-4/training_state.safetensors")
            .is_file()
    );

    let edited = tmp.path().join("edited.png");
    let (ok, stderr) = run(editmgt()
        .args(["edit", "--model"])
        .arg(model_dir())
        .arg("--lora")
        .arg(out.join("adapter"))
        .arg("--image")
        .arg(tmp.path().join("before0.png"))
        .args(["--prompt", "mirror it", "--steps", "2", "--quiet", "--out"])
        .arg(&edited));
    assert!(ok, "stderr: {stderr}");
    assert!(edited.is_file());
}

#[test]
fn full_fine_tuning_writes_loadable_weights_and_empty_data_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = manifest(tmp.path());
    let prepared = tmp.path().join("prepared");
    let (ok, stderr) = run(editmgt()
        .args(["prepare", "--model"])
        .arg(model_dir())
        .arg("--data")
        .arg(&manifest)
        .arg("--out")
        .arg(&prepared)
        .args(["--resolution", "128", "--quiet"]));
    assert!(ok, "stderr: {stderr}");
    let out = tmp.path().join("run");
    let (ok, stderr) = run(editmgt()
        .args(["train", "--model"])
        .arg(model_dir())
        .arg("--data")
        .arg(&prepared)
        .arg("--out")
        .arg(&out)
        .args(["--steps", "2", "--ema", "0.99", "--quiet"]));
    assert!(ok, "stderr: {stderr}");
    let weights = out.join("editmgt");
    editmgt_mgt::MgtTransformer::load_folder(
        &weights,
        &burn::tensor::Device::flex(),
        editmgt_core::FloatType::F32,
    )
    .expect("the written weights load");

    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "{\"source\": 1}\n").unwrap();
    let (ok, stderr) = run(editmgt()
        .args(["prepare", "--model"])
        .arg(model_dir())
        .arg("--data")
        .arg(&empty)
        .arg("--out")
        .arg(tmp.path().join("p2"))
        .arg("--quiet"));
    assert!(!ok);
    assert!(stderr.contains("no usable example"), "{stderr}");
}
