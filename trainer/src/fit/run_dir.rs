//! Using a finished run: the learned cross-attention K/V and token rows applied to the base
//! models, so `trainer sample --run RUN_DIR` draws the concept.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use runtime::ClipTokenizer;
use tch::Tensor;

use super::config::FitConfig;
use crate::checkpoint::{load_text_encoder, model_dir, LoadOptions};
use crate::sampling::Pipeline;

/// Which trained network to sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trained {
    /// The one-step student.
    Student,
    /// The multi-step teacher.
    Teacher,
}

fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(Tensor::read_safetensors(path)
        .with_context(|| {
            format!(
                "cannot read {}: is this a finished `trainer fit` run?",
                path.display()
            )
        })?
        .into_iter()
        .collect())
}

/// The resolved settings a `trainer fit` run folder was trained with (its `config.yaml`).
pub fn run_config(run: &Path) -> Result<FitConfig> {
    FitConfig::load(Some(&run.join("config.yaml")), &[])
        .with_context(|| format!("{} is not a `trainer fit` run folder", run.display()))
}

/// Loads the run's base model (student or teacher, from its config.yaml) with the run's
/// tokenizer, the teacher's text encoder with the learned token rows (the encoder both were
/// trained with) and the learned K/V weights.
pub fn load_trained(run: &Path, which: Trained, opts: LoadOptions) -> Result<Pipeline> {
    let config = run_config(run)?;
    if which == Trained::Teacher && !config.ablation.teacher {
        bail!(
            "{} trained no teacher (ablation.teacher=false): sample its student",
            run.display()
        );
    }
    let base = match which {
        Trained::Student => model_dir(&config.student)?,
        Trained::Teacher => model_dir(&config.teacher)?,
    };
    let mut p = Pipeline::load(&base, opts)?;
    p.tokenizer = ClipTokenizer::from_dir(&run.join("tokenizer"))?;
    // The encoder the network was trained with: the shared one (the teacher's), or the student's
    // own in the unshared-encoder ablation, with the rows learned for it.
    let own_encoder = which == Trained::Student && !config.ablation.shared_text_encoder;
    let tokens_file = if own_encoder {
        run.join("student_tokens.safetensors")
    } else {
        p.text_encoder =
            load_text_encoder(&model_dir(&config.teacher)?.join("text_encoder"), opts)?;
        run.join("tokens.safetensors")
    };

    // Token rows in id order.
    let tokens = read(&tokens_file)?;
    let mut rows: Vec<(u32, Tensor)> = Vec::new();
    for (token, row) in tokens {
        let id = p.tokenizer.token_to_id(&token).with_context(|| {
            format!(
                "{token:?} is in {} but not in the run's tokenizer",
                tokens_file.display()
            )
        })?;
        rows.push((id, row));
    }
    rows.sort_by_key(|(id, _)| *id);
    let first = p.text_encoder.model.num_ids();
    for (i, (id, _)) in rows.iter().enumerate() {
        if i64::from(*id) != first + i as i64 {
            bail!("token id {id} does not follow the text encoder's {first} rows: the run's tokenizer does not match its teacher");
        }
    }
    let stacked = Tensor::stack(&rows.into_iter().map(|(_, r)| r).collect::<Vec<_>>(), 0)
        .to_device(opts.device);
    p.text_encoder.model.set_added_rows(Some(stacked));

    // K/V weights copied over the base ones, by diffusers name.
    let file = match which {
        Trained::Student => run.join("student.safetensors"),
        Trained::Teacher => run.join("teacher.safetensors"),
    };
    let kv = read(&file)?;
    let vars = p.unet.vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, value) in &kv {
            let var = vars.get(name).with_context(|| {
                format!(
                    "{}: {name} is not a weight of {}",
                    file.display(),
                    base.display()
                )
            })?;
            if var.size() != value.size() {
                bail!(
                    "{}: {name} is {:?}, the model's {:?}",
                    file.display(),
                    value.size(),
                    var.size()
                );
            }
            var.shallow_clone().copy_(value);
        }
        Ok(())
    })?;
    Ok(p)
}
