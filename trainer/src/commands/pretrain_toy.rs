//! `trainer pretrain-toy`: pre-trains the toy world's models (see [`trainer::pretrain`]).

use anyhow::{Context, Result};
use trainer::device::parse_device;
use trainer::pretrain::{outputs, run, PretrainConfig, PretrainOptions, PretrainOutcome};

use super::fit::{stop_on_ctrl_c, INTERRUPTED};
use crate::cli::PretrainToyArgs;

pub fn run_command(args: &PretrainToyArgs) -> Result<Option<u8>> {
    let config = match &args.config {
        Some(path) => PretrainConfig::load(path)?,
        None => PretrainConfig::default(),
    };
    if args.print_config {
        print!("{}", serde_yaml::to_string(&config)?);
        return Ok(None);
    }
    // clap requires --out unless --print-config.
    let out = args
        .out
        .as_deref()
        .context("--out DIR: the folder to pre-train into")?;
    let tokenizer = args.tokenizer.as_deref().context(
        "no tokenizer: pass --tokenizer DIR (a CLIP tokenizer folder) or set ECHODISTILL_CLIP_TOKENIZER (./run.sh env sets it)",
    )?;
    let stop = stop_on_ctrl_c("step")?;
    let options = PretrainOptions {
        out,
        config,
        tokenizer,
        resume: args.resume,
        stop: Some(&stop),
        quiet: false,
        device: parse_device(&args.device)?,
    };
    match run(&options)? {
        PretrainOutcome::Finished => {
            println!("pre-trained the toy world in {}:", out.display());
            for path in outputs(out) {
                println!("  {}", path.display());
            }
            Ok(None)
        }
        PretrainOutcome::Interrupted => {
            eprintln!(
                "stopped; continue with: trainer pretrain-toy --out {} --resume",
                out.display()
            );
            Ok(Some(INTERRUPTED))
        }
    }
}
