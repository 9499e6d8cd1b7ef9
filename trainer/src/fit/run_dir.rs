//! Using a finished run: what it learned (EchoDistill's or Custom Diffusion's K/V, DreamBooth's
//! UNet, LoRA's adapters merged into the weights, and the token rows) applied to the base model,
//! so `trainer sample --run RUN_DIR` and `trainer eval` draw the concept.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use runtime::run_files::lora_scale;
use runtime::ClipTokenizer;
use tch::Tensor;

use super::config::{BaselineModel, FitConfig, MethodKind};
use super::outputs::LORA_FILE;
use super::trainable::merge_lora;
use crate::checkpoint::{load_text_encoder, load_unet, model_dir, LoadOptions};
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

/// The network of a run to sample: EchoDistill's student, or its teacher when `teacher` is
/// asked for; a baseline's one fine-tuned model (asking for the teacher of a baseline that
/// fine-tuned the student is refused).
pub fn trained_network(run: &Path, config: &FitConfig, teacher: bool) -> Result<Trained> {
    if !config.method.is_baseline() {
        if teacher && !config.ablation.teacher {
            bail!(
                "{} trained no teacher (ablation.teacher=false): sample its student",
                run.display()
            );
        }
        return Ok(if teacher {
            Trained::Teacher
        } else {
            Trained::Student
        });
    }
    match config.baseline.model {
        BaselineModel::Teacher => Ok(Trained::Teacher),
        BaselineModel::Student if teacher => bail!(
            "{} is a {} run of the student; it has no teacher to sample",
            run.display(),
            config.method.id()
        ),
        BaselineModel::Student => Ok(Trained::Student),
    }
}

/// The run's label in tables: "EchoDistill", "EchoDistill teacher", or the baseline's name
/// (with "(teacher model)" when it fine-tuned the teacher).
pub fn method_label(config: &FitConfig, which: Trained) -> String {
    let name = config.method.display_name();
    match (config.method.is_baseline(), which) {
        (false, Trained::Teacher) => format!("{name} teacher"),
        (true, Trained::Teacher) => format!("{name} (teacher model)"),
        _ => name.to_string(),
    }
}

/// Whether `run` holds a finished `trainer fit` run (its config and its method's results).
pub fn is_finished(run: &Path) -> bool {
    let Ok(config) = run_config(run) else {
        return false;
    };
    let role = match config.baseline.model {
        BaselineModel::Student => "student.safetensors",
        BaselineModel::Teacher => "teacher.safetensors",
    };
    let result = match config.method {
        MethodKind::Echodistill => "student.safetensors",
        MethodKind::CustomDiffusion => role,
        MethodKind::TextualInversion => "tokens.safetensors",
        MethodKind::Dreambooth => "unet/diffusion_pytorch_model.safetensors",
        MethodKind::Lora => LORA_FILE,
    };
    run.join(result).is_file() && run.join("tokens.safetensors").is_file()
}

/// Loads the run's base model (from its config.yaml) with the run's tokenizer, the text encoder
/// it trained the token rows in (EchoDistill: the teacher's, shared; a baseline: the model's
/// own) with those rows, and the method's learned weights. `which` comes from
/// [`trained_network`].
pub fn load_trained(run: &Path, which: Trained, opts: LoadOptions) -> Result<Pipeline> {
    let config = run_config(run)?;
    trained_network(run, &config, which == Trained::Teacher)?;
    if !is_finished(run) {
        bail!(
            "{} has no results yet: finish the run (trainer fit --resume --out {0}) first",
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
    let own_encoder = config.method.is_baseline()
        || (which == Trained::Student && !config.ablation.shared_text_encoder);
    let tokens_file = if config.method.is_baseline() {
        run.join("tokens.safetensors")
    } else if own_encoder {
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

    match config.method {
        MethodKind::Echodistill | MethodKind::CustomDiffusion => {}
        MethodKind::TextualInversion => return Ok(p),
        MethodKind::Dreambooth => {
            p.unet = load_unet(&run.join("unet"), opts)?;
            return Ok(p);
        }
        MethodKind::Lora => {
            let file = run.join(LORA_FILE);
            let scale = lora_scale(&file)?;
            let merged = merge_lora(&p.unet.vs.variables(), &read(&file)?, scale)
                .with_context(|| format!("{} does not fit {}", file.display(), base.display()))?;
            if merged == 0 {
                bail!("{} holds no LoRA adapters", file.display());
            }
            return Ok(p);
        }
    }

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
