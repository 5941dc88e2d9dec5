//! Running the subcommands.

use std::error::Error;
use std::time::Duration;

use editmgt_pipeline::{
    EditRequest, Editor, EditorOptions, Flow, GenerateRequest, Hooks, RegionHold, ScoreMap,
    StepEvent, TextEncoders,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{Cli, Command, EditArgs, GenerateArgs, ModelArgs};

/// Boxed errors of any layer.
pub type AnyError = Box<dyn Error + Send + Sync>;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), AnyError> {
    match cli.command {
        Command::Edit(args) => edit(args),
        Command::Generate(args) => generate(args),
        Command::Train(args) => crate::train::train(args),
        Command::Prepare(args) => crate::train::prepare(args),
        Command::Batch(args) => crate::batch::run(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => crate::serve::run(args),
    }
}

/// One line: the error and its causes.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

/// Loads the model `args` name (a folder, or a hub id with the `hub` feature).
pub fn load(args: &ModelArgs) -> Result<Editor, AnyError> {
    load_at(args, EditorOptions::default().resolution)
}

/// [`load`] for edits at another square resolution than the model's default.
pub fn load_at(args: &ModelArgs, resolution: u32) -> Result<Editor, AnyError> {
    let source = crate::checks::model_source(&args.model)?;
    let device = args.device.device()?;
    let options = EditorOptions {
        float: args.dtype,
        text_encoders: if args.low_memory {
            TextEncoders::LoadPerCall
        } else {
            TextEncoders::Keep
        },
        lora: args.lora.as_ref().map(|dir| editmgt_pipeline::LoraOptions {
            scale: args.lora_scale,
            ..editmgt_pipeline::LoraOptions::new(dir)
        }),
        resolution,
    };
    match source {
        crate::checks::ModelSource::Folder(path) => {
            Ok(Editor::from_folder(path, &device, options)?)
        }
        crate::checks::ModelSource::Hub(id) => from_hub(&id, &device, options),
    }
}

#[cfg(feature = "hub")]
fn from_hub(
    id: &str,
    device: &editmgt_pipeline::Device,
    options: EditorOptions,
) -> Result<Editor, AnyError> {
    if !id.contains('/') {
        return Err(
            format!("`{id}` is neither a model folder nor a Hugging Face repository id").into(),
        );
    }
    Ok(Editor::from_hub(id, device, options)?)
}

#[cfg(not(feature = "hub"))]
fn from_hub(
    id: &str,
    _device: &editmgt_pipeline::Device,
    _options: EditorOptions,
) -> Result<Editor, AnyError> {
    Err(format!(
        "model folder `{id}` does not exist (downloading from the Hugging Face Hub needs the `hub` feature)"
    )
    .into())
}

fn progress_bar(total: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn edit(args: EditArgs) -> Result<(), AnyError> {
    crate::checks::image_output(&args.out)?;
    if let Some(path) = &args.heatmap {
        crate::checks::image_output(path)?;
    }
    let image = editmgt_pipeline::load_image(&args.image)?;
    let mut request = EditRequest::new(&args.prompt)
        .steps(args.sampling.steps)
        .guidance(args.sampling.guidance)
        .reference_strength(args.editing.strength)
        .seed(args.sampling.seed)
        .timings(args.timings);
    if let Some(negative) = &args.sampling.negative {
        request = request.negative_prompt(negative);
    }
    if let Some(mask) = &args.mask {
        request = request.mask(editmgt_pipeline::load_mask(mask)?);
    }
    let wants_maps = args.editing.hold.is_some() || args.heatmap.is_some() || args.query.is_some();
    if args.editing.hold_blocks.is_some() && !wants_maps {
        return Err("--hold-blocks needs --hold, --query or --heatmap".into());
    }
    if wants_maps {
        let mut hold = RegionHold::new(args.editing.hold.unwrap_or(0.0));
        if let Some(blocks) = &args.editing.hold_blocks {
            hold = hold.blocks(blocks.0.iter().copied());
        }
        if let Some(query) = &args.query {
            hold = hold.query(query);
        }
        request = request
            .region_hold(hold)
            .record_localisation(args.heatmap.is_some());
    }
    let editor = load(&args.model)?;
    let load_timings = editor.load_timings().clone();
    let bar = progress_bar(request.steps, args.sampling.quiet);
    let mut on_step = |event: &StepEvent<'_>| {
        bar.set_position(event.step as u64);
        Flow::Continue
    };
    // One edit per run: the transformer is dropped before the VQ decoder runs.
    let output = editor.edit_once_with(&image, &request, Hooks::progress(&mut on_step))?;
    bar.finish_and_clear();
    output
        .image
        .save(&args.out)
        .map_err(|e| format!("cannot write `{}`: {e}", args.out.display()))?;
    if let Some(path) = &args.tokens {
        let (height, width) = output.grid;
        let json = serde_json::json!({
            "height": height,
            "width": width,
            "tokens": output.tokens,
        });
        std::fs::write(path, json.to_string())
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    }
    if let Some(path) = &args.heatmap {
        let mean = mean_map(&output.localisation).ok_or("no localisation maps were recorded")?;
        let heat = mean.heatmap(0, &image, 0.6)?;
        heat.save(path)
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    }
    if args.timings {
        eprint!("{}", output.timings.table(Some(&load_timings)));
    }
    Ok(())
}

/// The mean of the per-step maps.
pub fn mean_map(maps: &[ScoreMap]) -> Option<ScoreMap> {
    let first = maps.first()?;
    let mut sum = first.tensor().clone();
    for map in &maps[1..] {
        sum = sum + map.tensor().clone();
    }
    Some(ScoreMap::new(sum / maps.len() as f32))
}

fn generate(args: GenerateArgs) -> Result<(), AnyError> {
    crate::checks::image_output(&args.out)?;
    let mut request = GenerateRequest::new(&args.prompt)
        .steps(args.sampling.steps)
        .guidance(args.sampling.guidance)
        .seed(args.sampling.seed)
        .timings(args.timings);
    if let Some(negative) = &args.sampling.negative {
        request = request.negative_prompt(negative);
    }
    let editor = load(&args.model)?;
    let bar = progress_bar(request.steps, args.sampling.quiet);
    let mut on_step = |event: &StepEvent<'_>| {
        bar.set_position(event.step as u64);
        Flow::Continue
    };
    let output = editor.generate_with(&request, Hooks::progress(&mut on_step))?;
    bar.finish_and_clear();
    output
        .image
        .save(&args.out)
        .map_err(|e| format!("cannot write `{}`: {e}", args.out.display()))?;
    if args.timings {
        eprint!("{}", output.timings.table(Some(editor.load_timings())));
    }
    Ok(())
}
