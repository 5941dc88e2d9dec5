//! `editmgt edit` on the test device (`$EDITMGT_TEST_DEVICE`, e.g. `wgpu` with the CLI built
//! `--features wgpu`) writes the same tokens as on the CPU for the same seed (>= 99.5%
//! identical: the sampler's `f32` sums may round differently between backends). On the CPU
//! (the default) the two runs must agree exactly.

use std::path::Path;
use std::process::Command;

use editmgt_testkit::{case_file, model_dir};

fn edit(device: &str, tokens: &Path, out: &Path) -> Vec<u64> {
    let output = Command::new(env!("CARGO_BIN_EXE_editmgt"))
        .args(["edit", "--model"])
        .arg(model_dir())
        .arg("--image")
        .arg(case_file("source.png"))
        .args([
            "--prompt",
            "make it into Ghibli style",
            "--steps",
            "4",
            "--seed",
            "7",
            "--quiet",
            "--device",
            device,
        ])
        .arg("--out")
        .arg(out)
        .arg("--tokens")
        .arg(tokens)
        .output()
        .expect("run editmgt");
    assert!(
        output.status.success(),
        "editmgt --device {device}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokens).unwrap()).unwrap();
    let tokens: Vec<u64> = json["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect();
    let (h, w) = (
        json["height"].as_u64().unwrap() as usize,
        json["width"].as_u64().unwrap() as usize,
    );
    assert_eq!(tokens.len(), h * w);
    tokens
}

#[test]
fn the_test_device_edits_like_the_cpu() {
    let device = std::env::var(editmgt_testkit::DEVICE_ENV).unwrap_or_else(|_| "cpu".into());
    let tmp = tempfile::tempdir().unwrap();
    let on_device = edit(
        &device,
        &tmp.path().join("device.json"),
        &tmp.path().join("device.png"),
    );
    let on_cpu = edit(
        "cpu",
        &tmp.path().join("cpu.json"),
        &tmp.path().join("cpu.png"),
    );
    let same = on_device
        .iter()
        .zip(&on_cpu)
        .filter(|(a, b)| a == b)
        .count();
    println!(
        "editmgt edit --device {device}: {same}/{} tokens identical to --device cpu",
        on_cpu.len()
    );
    if editmgt_testkit::on_cpu() {
        assert_eq!(same, on_cpu.len());
    } else {
        assert!(
            same * 1000 >= on_cpu.len() * 995,
            "only {same}/{} tokens identical",
            on_cpu.len()
        );
    }
}
