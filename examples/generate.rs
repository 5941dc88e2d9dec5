//! Text-to-image generation with the same model.
//!
//! `cargo run --release -p editmgt-examples --example generate -- [MODEL] [OUT]`

use editmgt_examples::{arg_or, tiny_model};
use editmgt_pipeline::{DeviceSpec, Editor, EditorOptions, GenerateRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = arg_or(1, tiny_model());
    let out = arg_or(2, "generated.png".into());

    let device = DeviceSpec::Cpu.device()?;
    let editor = Editor::from_folder(&model, &device, EditorOptions::default())?;
    let request = GenerateRequest::new("a white cat on a red sofa")
        .steps(6)
        .seed(3);
    let output = editor.generate(&request)?;
    output.image.save(&out)?;
    println!("wrote {}", out.display());
    Ok(())
}
