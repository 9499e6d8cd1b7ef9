//! `exporter bake`: the base model with a run's learned weights folded in, written as a model
//! folder the ONNX runtime and the web page load: `text_encoder.onnx`, `unet.onnx`,
//! `vae_decoder.onnx` (each with `<file>_data` when its weights pass 2 GiB), `tokenizer/`,
//! `scheduler/scheduler_config.json` and `manifest.yaml`. The folder is written beside the
//! target and renamed into place, so a failed bake leaves nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use runtime::hub::model_dir;
use runtime::manifest::{
    file_hashes, Latent, Manifest, ManifestToken, Network, Resolution, FORMAT, FORMAT_VERSION,
    MANIFEST_FILE,
};
use runtime::model_config::{ClipTextConfig, UNetConfig, VaeConfig};
use runtime::{ClipTokenizer, SchedulerConfig};

use crate::cli::BakeArgs;
use crate::networks::pipeline::{self, PipelineSpec};
use crate::networks::{clip_text, unet, vae_decoder};
use crate::onnx::model_file::{write_model, ExternalData, PROTOBUF_LIMIT};
use crate::onnx::{Array, Graph, WeightType};
use crate::run_folder::{Run, UnetChange};
use crate::weights::Weights;

fn read_config(dir: &Path) -> Result<String> {
    let path = dir.join("config.json");
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// A temporary folder beside `out` that is removed unless [`Staging::commit`] renames it.
struct Staging {
    tmp: PathBuf,
    out: PathBuf,
    done: bool,
}

impl Staging {
    fn new(out: &Path, force: bool) -> Result<Self> {
        if out.exists() && !force {
            bail!(
                "{} already exists: pass --force to replace it, or choose another --out",
                out.display()
            );
        }
        let name = out
            .file_name()
            .with_context(|| format!("{} is not a folder path", out.display()))?;
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let tmp = out.with_file_name(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        Ok(Self {
            tmp,
            out: out.to_path_buf(),
            done: false,
        })
    }

    /// Moves the finished folder into place (replacing an old one only now).
    fn commit(mut self) -> Result<()> {
        let old = self.out.with_file_name(format!(
            ".{}.old-{}",
            self.out.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let had_old = self.out.exists();
        if had_old {
            std::fs::rename(&self.out, &old)
                .with_context(|| format!("cannot move the old {} aside", self.out.display()))?;
        }
        std::fs::rename(&self.tmp, &self.out)
            .with_context(|| format!("cannot rename into {}", self.out.display()))?;
        self.done = true;
        if had_old {
            if old.is_dir() {
                std::fs::remove_dir_all(&old)?;
            } else {
                std::fs::remove_file(&old)?;
            }
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// The text encoder folder the run's token rows belong to.
fn text_encoder_dir(args: &BakeArgs, base: &Path, run: Option<&Run>) -> Result<PathBuf> {
    if let Some(dir) = &args.text_encoder {
        return Ok(dir.clone());
    }
    match run {
        Some(run) if run.text_encoder_model != run.model => {
            let dir = model_dir(&run.text_encoder_model).with_context(|| {
                format!(
                    "the run trained its token rows in the text encoder of {} (EchoDistill shares the teacher's); pass it with --text-encoder DIR",
                    run.text_encoder_model
                )
            })?;
            Ok(dir.join("text_encoder"))
        }
        _ => Ok(base.join("text_encoder")),
    }
}

/// The token rows stacked in id order, checked to follow the vocabulary.
fn added_rows(run: &Run, vocab: i64) -> Result<Option<Array>> {
    let mut stacked: Option<Array> = None;
    for (i, (token, id, row)) in run.tokens.iter().enumerate() {
        if i64::from(*id) != vocab + i as i64 {
            bail!(
                "token {token:?} has id {id} in the run's tokenizer, but the text encoder has {vocab} rows: the run was trained with another text encoder"
            );
        }
        stacked = Some(match stacked {
            None => row.clone(),
            Some(s) => s.concat_rows(row),
        });
    }
    Ok(stacked)
}

/// Checks that DreamBooth's UNet has the base UNet's tensors and shapes.
fn check_same_architecture(run_unet: &Weights, base_unet: &Path) -> Result<()> {
    let base = Weights::open(base_unet, "diffusion_pytorch_model")?;
    let names = base.names();
    if names != run_unet.names() || names.iter().any(|n| base.shape(n) != run_unet.shape(n)) {
        bail!(
            "{} is not the architecture of {}: bake a DreamBooth run into the base it fine-tuned",
            run_unet.dir.display(),
            base_unet.display()
        );
    }
    Ok(())
}

/// Where built graphs go: written one by one as the split networks, or kept for the fused
/// pipeline.
struct Output<'a> {
    dir: &'a Path,
    external: ExternalData,
    metadata: &'a [(String, String)],
    fused: bool,
    kept: Vec<Graph>,
    networks: BTreeMap<String, Network>,
}

impl Output<'_> {
    /// Writes `graph` as `<role>.onnx` (or keeps it for the pipeline) and reports it.
    fn emit(&mut self, role: &str, graph: Graph, note: &str, started: Instant) -> Result<()> {
        let parameters = graph.parameters();
        let what = if self.fused {
            self.kept.push(graph);
            format!("{role} (for pipeline.onnx)")
        } else {
            let file = format!("{role}.onnx");
            let entry = write_network(graph, self.dir, &file, self.external, self.metadata)?;
            self.networks.insert(role.to_string(), entry);
            file
        };
        println!(
            "{what}: {:.1} M parameters{note}, {:.1} s",
            parameters as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// Writes one graph and returns its manifest entry.
fn write_network(
    graph: Graph,
    dir: &Path,
    file: &str,
    external: ExternalData,
    metadata: &[(String, String)],
) -> Result<Network> {
    let inputs = graph.inputs.iter().map(|v| v.name.clone()).collect();
    let outputs = graph.outputs.iter().map(|v| v.name.clone()).collect();
    let path = dir.join(file);
    let written = write_model(graph, &path, external, metadata, PROTOBUF_LIMIT)?;
    Ok(Network {
        file: file.into(),
        external_data: written
            .files
            .get(1)
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
        inputs,
        outputs,
        parameters: written.parameters,
    })
}

fn parse_steps(text: &str) -> Result<Vec<u32>> {
    let steps = text
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<u32>()
                .ok()
                .filter(|&n| n >= 1)
                .with_context(|| {
                    format!("--steps {text:?}: {s:?} is not a step count of 1 or more")
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(steps)
}

/// Runs `exporter bake`.
pub fn run(args: &BakeArgs) -> Result<()> {
    let started = Instant::now();
    let weight_type = args.dtype;
    let base = model_dir(&args.base)?;
    let run = args.run.as_deref().map(Run::read).transpose()?;
    let vae_config = VaeConfig::from_json(&read_config(&base.join("vae"))?)
        .with_context(|| format!("{}/config.json", base.join("vae").display()))?;
    let factor = vae_config.downscale_factor() as u32;
    for (name, v) in [("--height", args.height), ("--width", args.width)] {
        if v == 0 || v % factor != 0 {
            bail!("{name} {v} is not a positive multiple of {factor} (the VAE's downscale factor)");
        }
    }
    let steps = match &args.steps {
        Some(s) => parse_steps(s)?,
        None if run.as_ref().is_none_or(|r| r.one_step) => vec![1, 2, 4],
        None => vec![25],
    };
    let scheduler_path = base.join("scheduler").join("scheduler_config.json");
    let scheduler_text = std::fs::read_to_string(&scheduler_path)
        .with_context(|| format!("cannot read {}", scheduler_path.display()))?;
    let scheduler = SchedulerConfig::from_json(&scheduler_text).with_context(|| {
        format!(
            "{}: not a scheduler this runtime drives",
            scheduler_path.display()
        )
    })?;
    if args.fused {
        if let Some(r) = run.as_ref().filter(|r| !r.one_step) {
            bail!(
                "--fused builds the one-step student's unguided sampler, but this {} run trained {}, which samples with classifier-free guidance: bake it without --fused",
                r.method,
                r.model
            );
        }
        pipeline::check_schedule(&scheduler, &steps)?;
    }

    let staging = Staging::new(&args.out, args.force)?;
    let dir = staging.tmp.clone();
    let mut metadata = vec![("echodistill.base_model".to_string(), args.base.clone())];
    if let Some(r) = &run {
        metadata.push(("echodistill.method".into(), r.method.clone()));
    }
    let mut output = Output {
        dir: &dir,
        external: args.external_data,
        metadata: &metadata,
        fused: args.fused,
        kept: Vec::new(),
        networks: BTreeMap::new(),
    };

    // The text encoder, with the run's token rows.
    let t = Instant::now();
    let te_dir = text_encoder_dir(args, &base, run.as_ref())?;
    let te_config = ClipTextConfig::from_json(&read_config(&te_dir)?)
        .with_context(|| format!("{}/config.json", te_dir.display()))?;
    let mut te = Weights::open(&te_dir, "model")?;
    let rows = match &run {
        Some(r) => added_rows(r, te_config.vocab_size)?,
        None => None,
    };
    let graph = clip_text::build(&te_config, &mut te, rows.as_ref(), weight_type)
        .with_context(|| format!("building the text encoder from {}", te_dir.display()))?;
    drop(te);
    let note = format!(", {} added tokens", rows.as_ref().map_or(0, |r| r.shape[0]));
    output.emit("text_encoder", graph, &note, t)?;

    // The UNet, with the run's change folded in.
    let t = Instant::now();
    let base_unet = base.join("unet");
    let unet_dir = match run.as_ref().map(|r| &r.unet) {
        Some(UnetChange::Whole(dir)) => dir.clone(),
        _ => base_unet.clone(),
    };
    let unet_config = UNetConfig::from_json(&read_config(&unet_dir)?)
        .with_context(|| format!("{}/config.json", unet_dir.display()))?;
    let mut uw = Weights::open(&unet_dir, "diffusion_pytorch_model")?;
    if let Some(r) = &run {
        if matches!(r.unet, UnetChange::Whole(_)) {
            check_same_architecture(&uw, &base_unet)?;
        }
        for change in r.changed_matrices(&uw, &args.base)? {
            uw.replace(&change.name, change.new, &change.source)?;
        }
    }
    let graph = unet::build(&unet_config, &mut uw, weight_type)
        .with_context(|| format!("building the UNet from {}", unet_dir.display()))?;
    drop(uw);
    let note = match &run {
        Some(r) => format!(", {} weights folded in", r.method),
        None => String::new(),
    };
    output.emit("unet", graph, &note, t)?;

    // The VAE decoder.
    let t = Instant::now();
    let vae_dir = base.join("vae");
    let mut vw = Weights::open(&vae_dir, "diffusion_pytorch_model")?;
    let graph = vae_decoder::build(&vae_config, &mut vw, weight_type)
        .with_context(|| format!("building the VAE decoder from {}", vae_dir.display()))?;
    drop(vw);
    output.emit("vae_decoder", graph, "", t)?;

    // The fused pipeline, from the three graphs just built.
    let mut networks = std::mem::take(&mut output.networks);
    if args.fused {
        let t = Instant::now();
        let mut kept = std::mem::take(&mut output.kept).into_iter();
        let (Some(text_encoder), Some(unet), Some(vae_decoder)) =
            (kept.next(), kept.next(), kept.next())
        else {
            unreachable!("the three networks were kept in order");
        };
        let spec = PipelineSpec {
            scheduler: &scheduler,
            steps: &steps,
            latent_channels: vae_config.latent_channels,
            scaling_factor: vae_config.scaling_factor,
        };
        let nets = pipeline::Networks {
            text_encoder,
            unet,
            vae_decoder,
        };
        let graph = pipeline::build(nets, &spec, weight_type)?;
        let entry = write_network(graph, &dir, "pipeline.onnx", args.external_data, &metadata)?;
        println!(
            "pipeline.onnx: text encoder, {} UNet pass(es) for {:?} step(s), VAE decoder, {:.1} s",
            steps.iter().sum::<u32>(),
            steps,
            t.elapsed().as_secs_f64()
        );
        networks.insert("pipeline".to_string(), entry);
    }

    // Tokenizer and scheduler.
    let tokenizer = match &run {
        Some(r) => r.tokenizer.clone(),
        None => ClipTokenizer::from_dir(&base.join("tokenizer"))?,
    };
    tokenizer
        .save_dir(&dir.join("tokenizer"))
        .context("writing the tokenizer")?;
    std::fs::create_dir_all(dir.join("scheduler"))?;
    std::fs::write(
        dir.join("scheduler").join("scheduler_config.json"),
        &scheduler_text,
    )?;

    let files = file_hashes(&dir)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        producer: format!("exporter {}", env!("CARGO_PKG_VERSION")),
        base_model: args.base.clone(),
        run: args.run.as_ref().map(|r| r.display().to_string()),
        method: run.as_ref().map(|r| r.method.clone()),
        tokens: run
            .as_ref()
            .map(|r| {
                r.tokens
                    .iter()
                    .map(|(token, id, _)| ManifestToken {
                        token: token.clone(),
                        id: *id,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        resolution: Resolution {
            height: args.height,
            width: args.width,
        },
        steps,
        dtype: weight_type.name().into(),
        latent: Latent {
            channels: vae_config.latent_channels as u32,
            downscale_factor: factor,
            scaling_factor: vae_config.scaling_factor,
        },
        max_text_length: tokenizer.max_length() as u32,
        scheduler: serde_json::from_str(&scheduler_text)?,
        networks,
        files,
    };
    std::fs::write(dir.join(MANIFEST_FILE), manifest.to_yaml()?)?;
    staging.commit()?;
    println!(
        "wrote {} ({}, {} files) in {:.1} s",
        args.out.display(),
        weight_type.name(),
        manifest.files.len() + 1,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

impl WeightType {
    /// Parses `f32` / `f16`.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "f32" | "fp32" | "float32" => Ok(WeightType::F32),
            "f16" | "fp16" | "float16" => Ok(WeightType::F16),
            other => bail!("--dtype {other:?} is not supported: f32 or f16"),
        }
    }
}
