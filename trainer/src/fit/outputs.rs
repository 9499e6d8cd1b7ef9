//! What a finished run leaves in its folder: the learned K/V of each UNet and the token rows as
//! safetensors with provenance metadata (the base model and a SHA-256 of the base weights they
//! replace, so a bake can refuse the wrong base), the tokenizer with the new tokens, the resolved
//! config, and a diffusers Custom Diffusion export of the student for Python users. A baseline's
//! run leaves its method's weights instead (see [`save_baseline`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use runtime::model_files;
pub use runtime::model_files::read_metadata;
use tch::{Device, Kind, Tensor};

use super::baseline::Baseline;
use super::config::MethodKind;
use super::distill::Distiller;
use super::trainable::{CrossAttentionKv, TokenRows};
use crate::checkpoint::component::Component;
use crate::checkpoint::{write_beside, write_text_atomic};

// The run folder's metadata keys and LoRA file name live in the runtime core, shared with the
// exporter that reads them; the base fingerprint is [`fingerprint`].
pub use runtime::run_files::{
    LORA_FILE, META_BASE_MODEL, META_BASE_SHA256, META_KIND, META_LORA_ALPHA, META_LORA_RANK,
    META_TOKENS,
};
/// The file name diffusers' `load_attn_procs` looks for in a folder.
pub const DIFFUSERS_WEIGHTS: &str = "pytorch_custom_diffusion_weights.safetensors";

/// SHA-256 (hex) of the named tensors as stored in a diffusers component folder (`unet/`), see
/// [`runtime::model_files::fingerprint`]. The exporter recomputes it from the base it bakes into
/// and refuses a mismatch.
pub fn fingerprint(component_dir: &Path, names: &[String]) -> Result<String> {
    let files = Component::open(component_dir, "diffusion_pytorch_model")?.weight_files(None)?;
    model_files::fingerprint(&files, names)
}

/// Writes f32 copies of `tensors` as safetensors with `metadata` (plus `format: pt`, which
/// transformers and diffusers expect), through a temporary file beside `path`.
pub fn write_with_metadata(
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
    path: &Path,
) -> Result<()> {
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let t = t
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let values: Vec<f32> = Vec::try_from(t.flatten(0, -1))?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.clone(), shape, bytes));
    }
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow::anyhow!("{name}: {e:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    meta.insert("format".into(), "pt".into());
    write_beside(path, |tmp| {
        safetensors::tensor::serialize_to_file(views, &Some(meta), tmp)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e:?}", path.display()))
    })
}

/// The self-attention (attn1) layers of a UNet's weights by diffusers path, sorted.
pub fn self_attention_layers(unet: &tch::nn::VarStore) -> Vec<String> {
    let mut layers: Vec<String> = unet
        .variables()
        .into_keys()
        .filter_map(|k| {
            k.strip_suffix(".attn1.to_q.weight")
                .map(|s| format!("{s}.attn1"))
        })
        .collect();
    layers.sort();
    layers
}

/// The diffusers Custom Diffusion name of a trained K/V weight:
/// `…attn2.to_k.weight` → `…attn2.processor.to_k_custom_diffusion.weight`.
pub fn custom_diffusion_name(name: &str) -> Result<String> {
    for proj in ["to_k", "to_v"] {
        let suffix = format!(".attn2.{proj}.weight");
        if let Some(stem) = name.strip_suffix(&suffix) {
            return Ok(format!(
                "{stem}.attn2.processor.{proj}_custom_diffusion.weight"
            ));
        }
    }
    bail!("{name} is not a cross-attention to_k/to_v weight")
}

/// A safe file name for a token (diffusers' Custom Diffusion script names it after the token).
fn token_file(token: &str) -> String {
    let safe: String = token
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c == '\0' {
                '_'
            } else {
                c
            }
        })
        .collect();
    format!("{safe}.safetensors")
}

fn tokens_json(tokens: &[String]) -> String {
    serde_json::to_string(tokens).unwrap_or_default()
}

/// Writes `kv` as safetensors with its provenance (base model, fingerprint of the base K/V it
/// replaces, tokens).
fn write_kv(
    kv: &CrossAttentionKv,
    base: &str,
    base_dir: &Path,
    tokens: &[String],
    path: &Path,
) -> Result<()> {
    let mut meta = BTreeMap::new();
    meta.insert(META_KIND.into(), "cross-attention-kv".into());
    meta.insert(META_BASE_MODEL.into(), base.to_string());
    meta.insert(
        META_BASE_SHA256.into(),
        fingerprint(&base_dir.join("unet"), kv.names())?,
    );
    meta.insert(META_TOKENS.into(), tokens_json(tokens));
    write_with_metadata(&kv.tensors(), &meta, path)
}

/// Writes token rows (one tensor per token) with the encoder they belong to.
fn write_rows(rows: &TokenRows, encoder: &str, path: &Path) -> Result<()> {
    let mut meta = BTreeMap::new();
    meta.insert(META_KIND.into(), "token-rows".into());
    meta.insert(META_BASE_MODEL.into(), encoder.to_string());
    meta.insert(META_TOKENS.into(), tokens_json(&rows.tokens));
    write_with_metadata(&rows.tensors(), &meta, path)
}

/// Writes the run's results into `out` (see the module documentation).
pub fn save(d: &Distiller, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let config = d.config();
    let tokens = d.rows.tokens.clone();
    write_kv(
        &d.kv_student,
        &config.student,
        &d.student_source,
        &tokens,
        &out.join("student.safetensors"),
    )?;
    if let Some(t) = &d.teacher {
        write_kv(
            &t.kv,
            &config.teacher,
            &t.source,
            &tokens,
            &out.join("teacher.safetensors"),
        )?;
    }
    write_rows(
        &d.rows,
        &format!("{} (text_encoder)", config.teacher),
        &out.join("tokens.safetensors"),
    )?;
    if let Some(own) = &d.student_text {
        write_rows(
            &own.rows,
            &format!("{} (text_encoder)", config.student),
            &out.join("student_tokens.safetensors"),
        )?;
    }
    d.tokenizer.save_dir(&out.join("tokenizer"))?;
    write_text_atomic(&out.join("config.yaml"), &config.to_yaml()?)?;
    export_diffusers(d, &out.join("diffusers"))
}

/// The student in diffusers' Custom Diffusion format: `pytorch_custom_diffusion_weights.safetensors`
/// for `unet.load_attn_procs` and one `<token>.safetensors` per token for `load_textual_inversion`
/// (the rows the student reads: its own in the unshared ablation, else the shared encoder's).
pub fn export_diffusers(d: &Distiller, dir: &Path) -> Result<()> {
    let rows = match &d.student_text {
        Some(own) => &own.rows,
        None => &d.rows,
    };
    let encoder = if d.student_text.is_some() {
        &d.config().student
    } else {
        &d.config().teacher
    };
    export_custom_diffusion(
        &d.kv_student,
        &d.student_self_attention_layers(),
        rows,
        &d.config().student,
        encoder,
        d.subjects().first().map(String::as_str).unwrap_or_default(),
        dir,
    )
}

/// One `<token>.safetensors` per token (the `{token: row}` layout of diffusers' Textual
/// Inversion script, which `load_textual_inversion` reads).
fn write_token_files(rows: &TokenRows, dir: &Path) -> Result<String> {
    let mut loads = String::new();
    for (token, row) in rows.tensors() {
        let path = dir.join(token_file(&token));
        write_with_metadata(&[(token.clone(), row)], &BTreeMap::new(), &path)?;
        loads.push_str(&format!(
            "pipe.load_textual_inversion(\"{}\", token=\"{token}\")\n",
            path.display()
        ));
    }
    Ok(loads)
}

/// A model's trained K/V in diffusers' Custom Diffusion format, with the token files and a
/// README showing how to load them.
fn export_custom_diffusion(
    kv: &CrossAttentionKv,
    self_attention_layers: &[String],
    rows: &TokenRows,
    model: &str,
    encoder: &str,
    example: &str,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tensors = Vec::new();
    for (name, t) in kv.tensors() {
        tensors.push((custom_diffusion_name(&name)?, t));
    }
    // diffusers installs one processor per attention layer and counts them: the untrained
    // self-attention layers appear as empty tensors (its "plain processor" marker).
    for layer in self_attention_layers {
        tensors.push((
            format!("{layer}.processor"),
            Tensor::zeros([0], (Kind::Float, Device::Cpu)),
        ));
    }
    let mut meta = BTreeMap::new();
    meta.insert(META_BASE_MODEL.into(), model.to_string());
    write_with_metadata(&tensors, &meta, &dir.join(DIFFUSERS_WEIGHTS))?;
    let loads = write_token_files(rows, dir)?;
    let readme = format!(
        "Custom Diffusion weights of {model} trained by `trainer fit`.\n\n\
         ```python\n\
         import torch\n\
         from diffusers import AutoPipelineForText2Image\n\n\
         pipe = AutoPipelineForText2Image.from_pretrained(\"{model}\")\n\
         # `_pipeline=pipe` works around diffusers issue 9320 (without it nothing is installed).\n\
         pipe.unet.load_attn_procs(\"{dir}\", weight_name=\"{DIFFUSERS_WEIGHTS}\", _pipeline=pipe)\n\
         {loads}\
         image = pipe(\"a photo of {example}\").images[0]\n\
         ```\n\n\
         The run trained the token rows in {encoder}'s text encoder; SD-Turbo's and SD 2.1's encoders\n\
         are the same OpenCLIP ViT-H/14, so the rows load into either. Without the private `_pipeline`\n\
         argument, the plain-named K/V in the run's safetensors load with\n\
         `pipe.unet.load_state_dict(safetensors.torch.load_file(...), strict=False)`.\n",
        dir = dir.display(),
    );
    write_text_atomic(&dir.join("README.md"), &readme)
}

/// The file name diffusers' `load_lora_weights` looks for in a folder.
pub const DIFFUSERS_LORA: &str = "pytorch_lora_weights.safetensors";

/// Writes a baseline's results into `out`: always `tokens.safetensors` (the rows of the model's
/// own text encoder), `tokenizer/` and `config.yaml`; then by method Custom Diffusion's K/V
/// (`student.safetensors` or `teacher.safetensors`, by the model), DreamBooth's whole `unet/`
/// (a diffusers component folder), LoRA's `lora.safetensors`; and `diffusers/` with the same in
/// the layouts diffusers loads, and a README.
pub fn save_baseline(b: &Baseline, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let config = b.config();
    let model = config.baseline_model();
    let encoder = format!("{model} (text_encoder)");
    let tokens = b.rows.tokens.clone();
    write_rows(&b.rows, &encoder, &out.join("tokens.safetensors"))?;
    b.tokenizer.save_dir(&out.join("tokenizer"))?;
    write_text_atomic(&out.join("config.yaml"), &config.to_yaml()?)?;
    let diffusers = out.join("diffusers");
    std::fs::create_dir_all(&diffusers)
        .with_context(|| format!("cannot create {}", diffusers.display()))?;
    let example = b.subjects().first().cloned().unwrap_or_default();
    let role = if b.one_step() { "student" } else { "teacher" };
    let call = if b.one_step() {
        format!("pipe(\"a photo of {example}\", num_inference_steps=1, guidance_scale=0.0)")
    } else {
        format!("pipe(\"a photo of {example}\")")
    };
    match b.method() {
        MethodKind::CustomDiffusion => {
            let kv = b.kv.as_ref().context("no K/V")?;
            write_kv(
                kv,
                model,
                &b.source,
                &tokens,
                &out.join(format!("{role}.safetensors")),
            )?;
            export_custom_diffusion(
                kv,
                &b.self_attention_layers(),
                &b.rows,
                model,
                model,
                &example,
                &diffusers,
            )
        }
        MethodKind::TextualInversion => {
            let loads = write_token_files(&b.rows, &diffusers)?;
            let readme = format!(
                "Textual Inversion embeddings for {model} trained by `trainer fit`.\n\n\
                 ```python\n\
                 from diffusers import AutoPipelineForText2Image\n\n\
                 pipe = AutoPipelineForText2Image.from_pretrained(\"{model}\")\n\
                 {loads}\
                 image = {call}.images[0]\n\
                 ```\n"
            );
            write_text_atomic(&diffusers.join("README.md"), &readme)
        }
        MethodKind::Dreambooth => {
            let unet_dir = out.join("unet");
            std::fs::create_dir_all(&unet_dir)
                .with_context(|| format!("cannot create {}", unet_dir.display()))?;
            let config_src = b.source.join("unet").join("config.json");
            let config_text = std::fs::read_to_string(&config_src)
                .with_context(|| format!("cannot read {}", config_src.display()))?;
            write_text_atomic(&unet_dir.join("config.json"), &config_text)?;
            let mut meta = BTreeMap::new();
            meta.insert(META_KIND.into(), "unet".into());
            meta.insert(META_BASE_MODEL.into(), model.to_string());
            meta.insert(META_TOKENS.into(), tokens_json(&tokens));
            write_with_metadata(
                &b.unet_tensors(),
                &meta,
                &unet_dir.join("diffusion_pytorch_model.safetensors"),
            )?;
            let loads = write_token_files(&b.rows, &diffusers)?;
            let readme = format!(
                "DreamBooth fine-tune of {model} trained by `trainer fit`: the whole UNet is in\n\
                 {unet}, a diffusers component folder.\n\n\
                 ```python\n\
                 from diffusers import AutoPipelineForText2Image, UNet2DConditionModel\n\n\
                 unet = UNet2DConditionModel.from_pretrained(\"{unet}\")\n\
                 pipe = AutoPipelineForText2Image.from_pretrained(\"{model}\", unet=unet)\n\
                 {loads}\
                 image = {call}.images[0]\n\
                 ```\n",
                unet = unet_dir.display()
            );
            write_text_atomic(&diffusers.join("README.md"), &readme)
        }
        MethodKind::Lora => {
            let lora = b.lora.as_ref().context("no LoRA adapters")?;
            let cfg = &config.baseline;
            let alpha = cfg.lora_alpha.unwrap_or(cfg.lora_rank as f64);
            let mut meta = BTreeMap::new();
            meta.insert(META_KIND.into(), "lora".into());
            meta.insert(META_BASE_MODEL.into(), model.to_string());
            meta.insert(META_TOKENS.into(), tokens_json(&tokens));
            meta.insert(META_LORA_RANK.into(), cfg.lora_rank.to_string());
            meta.insert(META_LORA_ALPHA.into(), alpha.to_string());
            let tensors = lora.tensors();
            write_with_metadata(&tensors, &meta, &out.join(LORA_FILE))?;
            // diffusers reads alpha = rank when the file names none: fold alpha / rank into B.
            let scaled: Vec<(String, Tensor)> = tensors
                .into_iter()
                .map(|(k, t)| {
                    let t = if k.ends_with(".lora_B.weight") {
                        t.detach() * lora.scale
                    } else {
                        t
                    };
                    (format!("unet.{k}"), t)
                })
                .collect();
            write_with_metadata(&scaled, &BTreeMap::new(), &diffusers.join(DIFFUSERS_LORA))?;
            let loads = write_token_files(&b.rows, &diffusers)?;
            let readme = format!(
                "LoRA adapters (rank {rank}) for {model}'s UNet trained by `trainer fit`.\n\n\
                 ```python\n\
                 from diffusers import AutoPipelineForText2Image\n\n\
                 pipe = AutoPipelineForText2Image.from_pretrained(\"{model}\")\n\
                 pipe.load_lora_weights(\"{dir}\", weight_name=\"{DIFFUSERS_LORA}\")\n\
                 {loads}\
                 image = {call}.images[0]\n\
                 ```\n\n\
                 In this file alpha / rank is folded into `lora_B`; the run's {LORA_FILE} keeps the\n\
                 raw adapters with rank and alpha in its metadata.\n",
                rank = cfg.lora_rank,
                dir = diffusers.display()
            );
            write_text_atomic(&diffusers.join("README.md"), &readme)
        }
        MethodKind::Echodistill => bail!("EchoDistill runs are saved by `save`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_diffusion_names_follow_diffusers() {
        assert_eq!(
            custom_diffusion_name("down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_v.weight")
                .unwrap(),
            "down_blocks.0.attentions.1.transformer_blocks.0.attn2.processor.to_v_custom_diffusion.weight"
        );
        assert!(custom_diffusion_name(
            "mid_block.attentions.0.transformer_blocks.0.attn1.to_k.weight"
        )
        .is_err());
    }

    #[test]
    fn metadata_and_fingerprint_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let unet = dir.path().join("unet");
        std::fs::create_dir_all(&unet).unwrap();
        std::fs::write(unet.join("config.json"), "{}").unwrap();
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[5.0f32, 6.0]).view([2, 1]);
        let weights = unet.join("diffusion_pytorch_model.safetensors");
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v".to_string());
        write_with_metadata(&[("a".into(), a.copy()), ("b".into(), b)], &meta, &weights).unwrap();
        let read = read_metadata(&weights).unwrap();
        assert_eq!(read["k"], "v");
        assert_eq!(read["format"], "pt");
        let back = Tensor::read_safetensors(&weights).unwrap();
        assert!(back.iter().any(|(n, t)| n == "a" && t.equal(&a)));

        let names = vec!["a".to_string()];
        let h1 = fingerprint(&unet, &names).unwrap();
        assert_eq!(h1.len(), 64);
        // Changing a value of `a` changes the fingerprint; `b` is not part of it.
        let a2 = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.5]).view([2, 2]);
        write_with_metadata(
            &[
                ("a".into(), a2),
                (
                    "b".into(),
                    Tensor::zeros([2, 1], (Kind::Float, Device::Cpu)),
                ),
            ],
            &meta,
            &weights,
        )
        .unwrap();
        assert_ne!(fingerprint(&unet, &names).unwrap(), h1);
        let err = fingerprint(&unet, &["missing".to_string()]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
