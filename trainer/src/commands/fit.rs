//! `trainer fit`: resolve the config, then run the distillation stage into the run folder.

use anyhow::Result;
use trainer::fit::config::FitConfig;

use crate::cli::FitArgs;

pub fn run(args: &FitArgs) -> Result<()> {
    if args.resume {
        let config = FitConfig::load(Some(&args.out.join("config.yaml")), &[])?;
        let log = trainer::fit::distill::run(config, &args.out, true)?;
        println!(
            "resumed and finished {} (log {})",
            args.out.display(),
            log.display()
        );
        return Ok(());
    }
    let mut overrides = Vec::new();
    if let (Some(images), Some(token), Some(class)) = (&args.images, &args.token, &args.class) {
        // One concept from the flags, written as YAML so it goes through the same validation.
        let concept = serde_json::json!([{
            "images": images,
            "token": token,
            "class": class,
            "init_word": args.init_word,
        }]);
        overrides.push(format!("concepts={concept}"));
    }
    overrides.extend(args.set.iter().cloned());
    let config = FitConfig::load(args.config.as_deref(), &overrides)?;
    if args.print_config {
        print!("{}", config.to_yaml()?);
        return Ok(());
    }
    let log = trainer::fit::distill::run(config, &args.out, false)?;
    println!(
        "wrote {} (student.safetensors, teacher.safetensors, tokens.safetensors, tokenizer/, config.yaml; log {})",
        args.out.display(),
        log.display()
    );
    Ok(())
}
