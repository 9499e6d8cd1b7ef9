//! The command line, in one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Export EchoDistill results for the ONNX runtime and the web page.
#[derive(Debug, Parser)]
#[command(name = "exporter", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a tokenizer folder with added modifier tokens (e.g. `<new1>`) for a runtime bundle.
    Tokenizer(TokenizerArgs),
}

#[derive(Debug, Args)]
pub struct TokenizerArgs {
    /// The source: a diffusers `tokenizer/` folder, or a model folder that contains one.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// A token to add with the next free id (repeatable, in id order).
    #[arg(long = "add-token", value_name = "TOKEN")]
    pub add_tokens: Vec<String>,
    /// Where to write the folder (created if missing; files are replaced one by one, atomically).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}
