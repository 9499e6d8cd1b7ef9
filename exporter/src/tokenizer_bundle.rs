//! `exporter tokenizer`: the tokenizer part of a runtime bundle.

use anyhow::{Context, Result};
use runtime::ClipTokenizer;

use crate::cli::TokenizerArgs;

pub fn run(args: &TokenizerArgs) -> Result<()> {
    let mut tokenizer = ClipTokenizer::from_dir(&args.from)?;
    for token in &args.add_tokens {
        let id = tokenizer.add_token(token)?;
        println!("added {token:?} as id {id}");
    }
    tokenizer
        .save_dir(&args.out)
        .with_context(|| format!("writing the tokenizer to {}", args.out.display()))?;
    println!(
        "wrote {} ({} ids, {} added)",
        args.out.display(),
        tokenizer.len(),
        tokenizer.added_tokens().count()
    );
    Ok(())
}
