//! `exporter`: writes what the runtime serves. Parsing lives in `cli`; each command has a module.

mod cli;
mod tokenizer_bundle;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let result = match cli::Cli::parse().command {
        cli::Command::Tokenizer(args) => tokenizer_bundle::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
