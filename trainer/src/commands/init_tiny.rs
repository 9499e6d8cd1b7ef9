//! `trainer init-tiny`: a seeded random-weight model to run everything on without downloads.

use anyhow::Result;
use trainer::random_init::{write_random_model, Architecture, TowerSet};

use crate::cli::InitTinyArgs;

pub fn run(args: &InitTinyArgs) -> Result<()> {
    let arch = Architecture::named(&args.architecture)?;
    let towers = TowerSet::named(&args.towers)?;
    write_random_model(&arch, &args.out, &args.tokenizer, args.seed, towers)?;
    println!(
        "wrote {} ({} architecture, {} towers, seed {}, random weights)",
        args.out.display(),
        arch.name,
        args.towers,
        args.seed
    );
    Ok(())
}
