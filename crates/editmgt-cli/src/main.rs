//! `editmgt`: instruction-based image editing with EditMGT from the command line.
//!
//! ```text
//! editmgt edit --image photo.jpg --prompt "make it into Ghibli style" --out edited.png
//! editmgt generate --prompt "a white cat on a red sofa" --out cat.png
//! ```
//!
//! `--model` takes a local folder in the released layout or a Hugging Face repository id
//! (default `WeiChow/EditMGT`, with the `hub` feature). Errors are printed as one line and exit
//! with status 1.

mod allocator;
mod args;
mod batch;
mod checks;
mod run;
#[cfg(feature = "serve")]
mod serve;
mod train;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    if cli.keeps_freed_memory() {
        allocator::keep_freed_memory();
    }
    match run::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("editmgt: error: {}", run::describe(&*error));
            ExitCode::FAILURE
        }
    }
}
