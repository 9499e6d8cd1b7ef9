//! One module per command.

mod bench;
mod bench_losses;
mod bench_sample;
mod bench_tokenize;
mod discriminate;
mod env;
mod eval;
mod fit;
mod init_tiny;
mod pretrain_toy;
mod sample;
mod tokenize;
mod toy_data;
mod toy_pack;

use std::path::Path;

use anyhow::{Context, Result};
use runtime::ClipTokenizer;

use crate::cli::{Command, TokenizerArgs};

/// Runs one parsed command; `Ok(Some(code))` asks for a non-zero exit without an error.
pub fn run(command: Command) -> Result<Option<u8>> {
    let done = |r: Result<()>| r.map(|()| None);
    match command {
        Command::Tokenize(args) => done(tokenize::run(&args)),
        Command::BenchTokenize(args) => done(bench_tokenize::run(&args)),
        Command::Fit(args) => fit::run(&args),
        Command::Bench(args) => done(bench::run(&args)),
        Command::Sample(args) => done(sample::run(&args)),
        Command::InitTiny(args) => done(init_tiny::run(&args)),
        Command::BenchSample(args) => done(bench_sample::run(&args)),
        Command::BenchLosses(args) => done(bench_losses::run(&args)),
        Command::Eval(args) => done(eval::run(&args)),
        Command::BenchEval(args) => done(eval::bench(&args)),
        Command::BenchTable(args) => done(eval::bench_table(&args)),
        Command::MergeTables(args) => done(eval::merge_tables(&args)),
        Command::Discriminate(args) => done(discriminate::run(&args)),
        Command::ToyData(args) => done(toy_data::run(&args)),
        Command::PretrainToy(args) => pretrain_toy::run_command(&args),
        Command::ToyPack(args) => done(toy_pack::run(&args)),
        Command::Env => done(env::run()),
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
