//! What a `trainer fit` run folder holds, read without tch: the method, the token rows, and
//! the UNet change to fold into the base (EchoDistill's or Custom Diffusion's K/V, DreamBooth's
//! whole UNet, LoRA adapters to merge, or nothing for Textual Inversion). The file layout is the
//! trainer's (`trainer/src/fit/outputs.rs`); the keys below are its metadata keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use runtime::model_files::{fingerprint, read_metadata, SafetensorsHeader};
use runtime::run_files::{lora_scale, LORA_FILE, META_BASE_MODEL, META_BASE_SHA256};
use runtime::ClipTokenizer;
use serde::Deserialize;

use crate::onnx::Array;
use crate::weights::{decode, Weights};

/// The parts of a run's `config.yaml` a bake needs.
#[derive(Debug, Clone, Deserialize)]
struct RunConfig {
    #[serde(default = "default_method")]
    method: String,
    student: String,
    teacher: String,
    #[serde(default)]
    ablation: Ablation,
    #[serde(default)]
    baseline: Baseline,
}

fn default_method() -> String {
    "echodistill".into()
}
fn default_true() -> bool {
    true
}
fn default_model() -> String {
    "student".into()
}

#[derive(Debug, Clone, Deserialize)]
struct Ablation {
    #[serde(default = "default_true")]
    shared_text_encoder: bool,
}

impl Default for Ablation {
    fn default() -> Self {
        Self {
            shared_text_encoder: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Baseline {
    #[serde(default = "default_model")]
    model: String,
}

impl Default for Baseline {
    fn default() -> Self {
        Self {
            model: default_model(),
        }
    }
}

/// How the run changes the base UNet.
#[derive(Debug)]
pub enum UnetChange {
    /// Textual Inversion: the UNet is the base's.
    None,
    /// K/V matrices replacing the base's by name, with the fingerprint of the base tensors they
    /// were trained against.
    Replace {
        /// The run's file.
        file: PathBuf,
        /// The tensors by diffusers name.
        tensors: BTreeMap<String, Array>,
        /// SHA-256 of the base tensors (see `runtime::model_files::fingerprint`).
        base_sha256: String,
    },
    /// DreamBooth: a whole UNet folder (`unet/` in the run).
    Whole(PathBuf),
    /// LoRA: W += scale · B·A for each adapted projection.
    Lora {
        /// The run's file.
        file: PathBuf,
        /// `(layer, A (rank, in), B (out, rank))` by diffusers layer name (`…attn1.to_q`).
        adapters: Vec<(String, Array, Array)>,
        /// alpha / rank.
        scale: f32,
    },
}

/// A run's learned weights.
#[derive(Debug)]
pub struct Run {
    /// `echodistill`, `custom-diffusion`, `textual-inversion`, `dreambooth` or `lora`.
    pub method: String,
    /// The model the run trained (its config's student or teacher), as configured.
    pub model: String,
    /// Whether the trained network is the one-step student.
    pub one_step: bool,
    /// The tokenizer with the added tokens.
    pub tokenizer: ClipTokenizer,
    /// The added tokens' rows in id order: (token, id, row).
    pub tokens: Vec<(String, u32, Array)>,
    /// The model whose text encoder the rows were trained in (the teacher for EchoDistill's
    /// shared encoder), as configured.
    pub text_encoder_model: String,
    /// The UNet change.
    pub unet: UnetChange,
}

fn read_all(path: &Path) -> Result<BTreeMap<String, Array>> {
    let header = SafetensorsHeader::read(path).with_context(|| {
        format!(
            "cannot read {}: is this a finished `trainer fit` run?",
            path.display()
        )
    })?;
    let mut out = BTreeMap::new();
    for (name, info) in &header.tensors {
        let data = decode(&info.dtype, &header.read_bytes(name)?)
            .with_context(|| format!("{}: {name}", path.display()))?;
        let shape = info.shape.iter().map(|&d| d as usize).collect();
        out.insert(name.clone(), Array::new(shape, data));
    }
    Ok(out)
}

fn need(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "{} is missing: the run is not finished or not a `trainer fit` run folder (finish it with `trainer fit --resume --out RUN`)",
            path.display()
        )
    }
}

impl Run {
    /// Reads a finished run folder.
    pub fn read(dir: &Path) -> Result<Self> {
        let config_path = need(dir.join("config.yaml"))?;
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let config: RunConfig = serde_yaml::from_str(&text)
            .with_context(|| format!("{}: not a `trainer fit` config", config_path.display()))?;
        let baseline = config.method != "echodistill";
        let teacher_model = baseline && config.baseline.model == "teacher";
        let model = if teacher_model {
            config.teacher.clone()
        } else {
            config.student.clone()
        };
        let role = if teacher_model { "teacher" } else { "student" };
        let (tokens_file, text_encoder_model) = if baseline {
            (dir.join("tokens.safetensors"), model.clone())
        } else if config.ablation.shared_text_encoder {
            (dir.join("tokens.safetensors"), config.teacher.clone())
        } else {
            (
                dir.join("student_tokens.safetensors"),
                config.student.clone(),
            )
        };
        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))
            .with_context(|| format!("reading the run's tokenizer in {}", dir.display()))?;
        let rows = read_all(&need(tokens_file.clone())?)?;
        let mut tokens = Vec::new();
        for (token, row) in rows {
            let id = tokenizer.token_to_id(&token).with_context(|| {
                format!(
                    "{token:?} is in {} but not in the run's tokenizer",
                    tokens_file.display()
                )
            })?;
            let width = row.data.len();
            tokens.push((token, id, row.reshaped(vec![1, width])));
        }
        tokens.sort_by_key(|(_, id, _)| *id);

        let unet = match config.method.as_str() {
            "echodistill" | "custom-diffusion" => {
                let file = need(dir.join(format!("{role}.safetensors")))?;
                let meta = read_metadata(&file)?;
                let base_sha256 = meta.get(META_BASE_SHA256).cloned().with_context(|| {
                    format!("{}: no {META_BASE_SHA256} in its metadata", file.display())
                })?;
                UnetChange::Replace {
                    tensors: read_all(&file)?,
                    file,
                    base_sha256,
                }
            }
            "textual-inversion" => UnetChange::None,
            "dreambooth" => {
                need(dir.join("unet").join("config.json"))?;
                UnetChange::Whole(dir.join("unet"))
            }
            "lora" => {
                let file = need(dir.join(LORA_FILE))?;
                // The merge runs in f32.
                let scale = lora_scale(&file)? as f32;
                let mut all = read_all(&file)?;
                let downs: Vec<String> = all
                    .keys()
                    .filter(|k| k.ends_with(".lora_A.weight"))
                    .cloned()
                    .collect();
                let mut adapters = Vec::new();
                for down in downs {
                    let layer = down.trim_end_matches(".lora_A.weight").to_string();
                    let up_name = format!("{layer}.lora_B.weight");
                    let a = all.remove(&down).expect("listed above");
                    let b = all
                        .remove(&up_name)
                        .with_context(|| format!("{}: {down} has no {up_name}", file.display()))?;
                    let layer = layer.strip_prefix("unet.").unwrap_or(&layer).to_string();
                    adapters.push((layer, a, b));
                }
                if adapters.is_empty() {
                    bail!("{} holds no LoRA adapters", file.display());
                }
                UnetChange::Lora {
                    file,
                    adapters,
                    scale,
                }
            }
            other => bail!(
                "{}: unknown method {other:?} (echodistill, custom-diffusion, textual-inversion, dreambooth, lora)",
                config_path.display()
            ),
        };
        Ok(Self {
            method: config.method,
            model,
            one_step: !teacher_model,
            tokenizer,
            tokens,
            text_encoder_model,
            unet,
        })
    }

    /// The base model recorded in the run's weights, for messages.
    pub fn recorded_base(&self) -> Option<String> {
        match &self.unet {
            UnetChange::Replace { file, .. } | UnetChange::Lora { file, .. } => {
                read_metadata(file).ok()?.get(META_BASE_MODEL).cloned()
            }
            _ => Some(self.model.clone()),
        }
    }
}

/// A UNet matrix a run changes: its diffusers name, the base value and the new value.
#[derive(Debug)]
pub struct Change {
    /// Diffusers name, e.g. `…attn2.to_k.weight`.
    pub name: String,
    /// The base model's value.
    pub base: Array,
    /// The value after the run.
    pub new: Array,
    /// The run file it comes from, for messages.
    pub source: PathBuf,
}

impl Run {
    /// The base matrices the run changes in `unet` (the base UNet's weights; `base_spec` names
    /// it in messages) with their new values: replaced K/V, checked against the fingerprint the
    /// run recorded, or LoRA-merged projections. Empty for Textual Inversion (no UNet change)
    /// and DreamBooth (a whole UNet instead).
    pub fn changed_matrices(&self, unet: &Weights, base_spec: &str) -> Result<Vec<Change>> {
        match &self.unet {
            UnetChange::None | UnetChange::Whole(_) => Ok(Vec::new()),
            UnetChange::Replace {
                file,
                tensors,
                base_sha256,
            } => {
                let names: Vec<String> = tensors.keys().cloned().collect();
                let actual = fingerprint(&unet.files(), &names).with_context(|| {
                    format!(
                        "{} replaces tensors {} lacks",
                        file.display(),
                        unet.dir.display()
                    )
                })?;
                if &actual != base_sha256 {
                    bail!(
                        "{} was trained on other base weights ({}) than {base_spec}: the K/V it replaces differ (sha256 {actual}, the run recorded {base_sha256}). Use the base the run trained",
                        file.display(),
                        self.recorded_base().unwrap_or_else(|| "unknown".into())
                    );
                }
                tensors
                    .iter()
                    .map(|(name, new)| {
                        let base = unet.peek(name)?;
                        if base.shape != new.shape {
                            bail!(
                                "{}: {name} is {:?}, the base model's is {:?}",
                                file.display(),
                                new.shape,
                                base.shape
                            );
                        }
                        Ok(Change {
                            name: name.clone(),
                            base,
                            new: new.clone(),
                            source: file.clone(),
                        })
                    })
                    .collect()
            }
            UnetChange::Lora {
                file,
                adapters,
                scale,
            } => adapters
                .iter()
                .map(|(layer, a, b)| {
                    let name = format!("{layer}.weight");
                    let base = unet.peek(&name).with_context(|| {
                        format!(
                            "{}: the adapter {layer} sits beside {name}, which the base lacks",
                            file.display()
                        )
                    })?;
                    let delta = lora_delta(a, b, *scale)?;
                    if delta.shape != base.shape {
                        bail!(
                            "{}: the update of {layer} is {:?}, the weight {:?}",
                            file.display(),
                            delta.shape,
                            base.shape
                        );
                    }
                    let mut new = base.clone();
                    for (v, d) in new.data.iter_mut().zip(&delta.data) {
                        *v += d;
                    }
                    Ok(Change {
                        name,
                        base,
                        new,
                        source: file.clone(),
                    })
                })
                .collect(),
        }
    }
}

/// B·A (out × in) scaled: the LoRA update of one weight.
fn lora_delta(a: &Array, b: &Array, scale: f32) -> Result<Array> {
    let (rank, cols) = (a.shape[0], a.shape[1]);
    let rows = b.shape[0];
    if b.shape[1] != rank {
        bail!("LoRA: B is {:?} but A is {:?}", b.shape, a.shape);
    }
    let mut out = vec![0f32; rows * cols];
    for i in 0..rows {
        for k in 0..rank {
            let bik = b.data[i * rank + k] * scale;
            if bik == 0.0 {
                continue;
            }
            let arow = &a.data[k * cols..(k + 1) * cols];
            for (o, av) in out[i * cols..(i + 1) * cols].iter_mut().zip(arow) {
                *o += bik * av;
            }
        }
    }
    Ok(Array::new(vec![rows, cols], out))
}
