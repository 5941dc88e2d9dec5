//! Edit an image with an instruction.
//!
//! `cargo run --release -p editmgt-examples --example edit -- [MODEL] [IMAGE] [OUT]`

use editmgt_examples::{arg_or, sample_image, tiny_model};
use editmgt_pipeline::{DeviceSpec, EditRequest, Editor, EditorOptions, Flow, Hooks, StepEvent};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = arg_or(1, tiny_model());
    let image_path = arg_or(2, sample_image());
    let out = arg_or(3, "edited.png".into());

    let device = DeviceSpec::Cpu.device()?;
    let editor = Editor::from_folder(&model, &device, EditorOptions::default())?;
    let image = editmgt_pipeline::load_image(&image_path)?;

    // The released defaults are 36 steps; 6 keep the example quick.
    let request = EditRequest::new("make it into Ghibli style")
        .steps(6)
        .seed(42);
    let mut report = |e: &StepEvent<'_>| {
        println!("step {}/{}", e.step, e.total);
        Flow::Continue
    };
    // One edit: `edit_once_with` consumes the editor and drops the transformer before the VQ
    // decoder runs, for a lower peak. To make several edits, keep the editor and call
    // `edit_with` (or `edit`) for each.
    let output = editor.edit_once_with(&image, &request, Hooks::progress(&mut report))?;
    output.image.save(&out)?;
    println!(
        "wrote {} ({}x{}, {}x{} tokens)",
        out.display(),
        output.image.width(),
        output.image.height(),
        output.grid.0,
        output.grid.1
    );
    Ok(())
}
