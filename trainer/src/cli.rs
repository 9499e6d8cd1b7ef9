//! The command line, in one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// EchoDistill: teach a one-step diffusion model (SD-Turbo) a subject from 3-5 photos.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the token ids the text encoder sees for a prompt (77 positions, padded).
    Tokenize(TokenizeArgs),
    /// Measure tokenizer throughput (prompts and tokens per second, one thread).
    BenchTokenize(BenchTokenizeArgs),
    /// Print the libtorch build this binary uses and the devices it can see.
    Env,
}

/// Where the tokenizer comes from.
#[derive(Debug, Args)]
pub struct TokenizerArgs {
    /// A diffusers `tokenizer/` folder, or a model folder that contains one.
    #[arg(long, env = "ECHODISTILL_CLIP_TOKENIZER", value_name = "DIR")]
    pub tokenizer: PathBuf,
    /// Add a modifier token before tokenizing (repeatable), e.g. `<new1>`.
    #[arg(long = "add-token", value_name = "TOKEN")]
    pub add_tokens: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub tokenizer: TokenizerArgs,
    /// The prompt (repeatable).
    #[arg(long, required = true, value_name = "TEXT")]
    pub prompt: Vec<String>,
    /// Print one JSON object per prompt instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchTokenizeArgs {
    #[command(flatten)]
    pub tokenizer: TokenizerArgs,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub seconds: f64,
}
