//! `trainer toy-pack`: a finished pre-training run's models with f16 weights (see
//! [`trainer::pretrain::pack`]).

use anyhow::Result;
use trainer::pretrain::pack::pack;

use crate::cli::ToyPackArgs;

pub fn run(args: &ToyPackArgs) -> Result<()> {
    let written = pack(&args.from, &args.out)?;
    let bytes: u64 = written
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "packed {} into {}: {} weight files in f16, {:.1} MB",
        args.from.display(),
        args.out.display(),
        written.len(),
        bytes as f64 / 1e6
    );
    Ok(())
}
