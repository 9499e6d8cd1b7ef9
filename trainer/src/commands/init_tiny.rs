//! `trainer init-tiny`: a seeded random-weight model to run everything on without downloads.

use anyhow::Result;
use trainer::random_init::{write_random_model, Architecture};

use crate::cli::InitTinyArgs;

pub fn run(args: &InitTinyArgs) -> Result<()> {
    let arch = Architecture::named(&args.architecture)?;
    write_random_model(&arch, &args.out, &args.tokenizer, args.seed)?;
    println!(
        "wrote {} ({} architecture, seed {}, random weights)",
        args.out.display(),
        arch.name,
        args.seed
    );
    Ok(())
}
