//! `exporter`: writes what the runtime serves. Parsing lives in `cli`; each command has a module.

mod bake;
mod cli;
mod inspect;
mod networks;
mod onnx;
mod patch;
mod run_folder;
mod tokenizer_bundle;
mod weights;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let result = match cli::Cli::parse().command {
        cli::Command::Tokenizer(args) => tokenizer_bundle::run(&args),
        cli::Command::Bake(args) => match &args.patch {
            Some(onnx) => patch::run(&args, onnx),
            None => bake::run(&args),
        },
        cli::Command::Inspect(args) => inspect::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
