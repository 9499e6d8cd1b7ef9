//! `trainer fit`: resolve the config, then run EchoDistill into the run folder. Ctrl-C stops
//! after the current iteration with a checkpoint (a second Ctrl-C quits at once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use trainer::fit::config::FitConfig;
use trainer::fit::runner::{run as run_fit, RunOptions, RunOutcome};

use crate::cli::FitArgs;

/// Exit status after Ctrl-C (128 + SIGINT), as shells report it.
pub const INTERRUPTED: u8 = 130;

/// Installs the Ctrl-C handler of the long-running commands: the first Ctrl-C sets the returned
/// flag (the run checkpoints after its current `unit` and stops), a second one quits at once.
pub fn stop_on_ctrl_c(unit: &'static str) -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: quitting without a new checkpoint");
            std::process::exit(i32::from(INTERRUPTED));
        }
        eprintln!(
            "\ninterrupted: saving a checkpoint after this {unit} (Ctrl-C again to quit now)"
        );
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(stop)
}

/// Runs the command; `Ok(Some(code))` asks for a non-zero exit without an error message.
pub fn run(args: &FitArgs) -> Result<Option<u8>> {
    let config = if args.resume {
        FitConfig::load(Some(&args.out.join("config.yaml")), &[]).with_context(|| {
            format!(
                "--resume: {} is not a run folder started by `trainer fit`",
                args.out.display()
            )
        })?
    } else {
        let mut overrides = Vec::new();
        if let Some(method) = args.method {
            overrides.push(format!("method={}", method.id()));
        }
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
        FitConfig::load(args.config.as_deref(), &overrides)?
    };
    if args.print_config {
        print!("{}", config.to_yaml()?);
        return Ok(None);
    }
    let stop = stop_on_ctrl_c("iteration")?;
    let options = RunOptions {
        resume: args.resume,
        stop: Some(stop),
        failpoints: args.failpoint.clone(),
        quiet: false,
    };
    match run_fit(config, &args.out, &options)? {
        RunOutcome::Finished => {
            let mut files: Vec<String> = std::fs::read_dir(&args.out)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                        .map(|e| {
                            let name = e.file_name().to_string_lossy().into_owned();
                            if e.path().is_dir() {
                                format!("{name}/")
                            } else {
                                name
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            println!(
                "wrote {0}: {1} (log {0}/log.jsonl, report {0}/report.html)",
                args.out.display(),
                files.join(", ")
            );
            Ok(None)
        }
        RunOutcome::Interrupted(iteration) => {
            eprintln!(
                "stopped after iteration {iteration}; checkpoint saved. Continue with: trainer fit --resume --out {}",
                args.out.display()
            );
            Ok(Some(INTERRUPTED))
        }
    }
}
