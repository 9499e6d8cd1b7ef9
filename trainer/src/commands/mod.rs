//! One module per command.

mod bench_losses;
mod bench_sample;
mod bench_tokenize;
mod env;
mod fit;
mod init_tiny;
mod sample;
mod tokenize;

use std::path::Path;

use anyhow::{Context, Result};
use runtime::ClipTokenizer;

use crate::cli::{Command, TokenizerArgs};

/// Runs one parsed command.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Tokenize(args) => tokenize::run(&args),
        Command::BenchTokenize(args) => bench_tokenize::run(&args),
        Command::Fit(args) => fit::run(&args),
        Command::Sample(args) => sample::run(&args),
        Command::InitTiny(args) => init_tiny::run(&args),
        Command::BenchSample(args) => bench_sample::run(&args),
        Command::BenchLosses(args) => bench_losses::run(&args),
        Command::Env => env::run(),
    }
}

/// Loads the tokenizer and adds the requested modifier tokens.
fn load_tokenizer(args: &TokenizerArgs) -> Result<ClipTokenizer> {
    let mut tokenizer = ClipTokenizer::from_dir(&args.tokenizer)?;
    for token in &args.add_tokens {
        tokenizer
            .add_token(token)
            .with_context(|| format!("adding to the tokenizer in {}", display(&args.tokenizer)))?;
    }
    Ok(tokenizer)
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
