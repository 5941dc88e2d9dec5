//! Show where an instruction will act: the consolidated text-to-image attention of the
//! localisation blocks, rendered as a heatmap over the source image.
//!
//! `cargo run --release -p editmgt-examples --example localize -- [MODEL] [IMAGE] [OUT]`

use editmgt_examples::{arg_or, sample_image, tiny_model};
use editmgt_pipeline::{DeviceSpec, EditRequest, Editor, EditorOptions, RegionHold};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = arg_or(1, tiny_model());
    let image_path = arg_or(2, sample_image());
    let out = arg_or(3, "heatmap.png".into());

    let device = DeviceSpec::Cpu.device()?;
    let editor = Editor::from_folder(&model, &device, EditorOptions::default())?;
    let image = editmgt_pipeline::load_image(&image_path)?;

    // Threshold 0: compute the maps without holding anything back. The released model's default
    // blocks are 28..=36; a model of another depth (the tiny one has 5) names its own.
    let mut hold = RegionHold::new(0.0).query("sky");
    if editor.num_blocks() != 42 {
        let last = editor.num_blocks() - 1;
        hold = hold.blocks([last / 2, last]);
    }
    let request = EditRequest::new("make the sky blue")
        .steps(4)
        .region_hold(hold)
        .record_localisation(true);
    let output = editor.edit(&image, &request)?;
    let last = output
        .localisation
        .last()
        .ok_or("no localisation map recorded")?;
    let heatmap = last.heatmap(0, &image, 0.6)?;
    heatmap.save(&out)?;
    println!(
        "wrote {} (the map of the last of {} steps, {}x{} attention grid)",
        out.display(),
        output.localisation.len(),
        last.height(),
        last.width()
    );
    Ok(())
}
