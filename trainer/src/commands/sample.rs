//! `trainer sample`: one image from a diffusers model, written as PNG.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use runtime::scheduler::SchedulerKind;
use tch::{Device, Kind, Tensor};
use trainer::checkpoint::{model_dir, write_beside, LoadOptions};
use trainer::device::{parse_device, parse_kind};
use trainer::fit::run_dir::{load_trained, run_config, trained_network};
use trainer::sampling::{NoiseSource, Pipeline, SampleRequest};

use crate::cli::{DeviceArgs, SampleArgs};

/// Parses `--device` and `--dtype`.
pub fn device_and_kind(args: &DeviceArgs) -> Result<(Device, Kind)> {
    let device = parse_device(&args.device).context("--device")?;
    Ok((device, parse_kind(&args.dtype).context("--dtype")?))
}

/// `--device`, `--dtype` and `--variant` as loading options.
pub fn load_options(args: &DeviceArgs) -> Result<LoadOptions<'_>> {
    let (device, kind) = device_and_kind(args)?;
    Ok(LoadOptions {
        device,
        kind,
        variant: args.variant.as_deref(),
    })
}

/// Saves the first image of a (batch, 3, h, w) tensor in [-1, 1] as PNG.
pub fn save_png(images: &Tensor, path: &Path) -> Result<()> {
    trainer::sampling::write_png(&trainer::sampling::to_rgb_image(&images.get(0))?, path)
}

/// The sampler a `--scheduler` value names (clap has checked it is one of the three).
pub fn scheduler_kind(name: Option<&str>) -> Option<SchedulerKind> {
    match name? {
        "euler" => Some(SchedulerKind::Euler),
        "euler-ancestral" => Some(SchedulerKind::EulerAncestral),
        _ => Some(SchedulerKind::Ddim),
    }
}

pub fn run(args: &SampleArgs) -> Result<()> {
    let opts = load_options(&args.device)?;
    if args
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
        != Some("png")
    {
        bail!(
            "--out {}: the image is written as PNG, so name it *.png",
            args.out.display()
        );
    }
    let noise = match &args.noise {
        Some(path) => NoiseSource::from_file(path)?,
        None => NoiseSource::Seed(args.seed),
    };
    let start = Instant::now();
    let pipeline = match (&args.run, &args.model) {
        (Some(run), _) => {
            let which = trained_network(run, &run_config(run)?, args.teacher)?;
            load_trained(run, which, opts)?
        }
        (None, Some(model)) => Pipeline::load(&model_dir(model)?, opts)?,
        (None, None) => bail!("give --model DIR|REPO or --run RUN_DIR"),
    };
    let load_secs = start.elapsed().as_secs_f64();
    let factor = pipeline.vae.model.config().downscale_factor();
    let default_size = pipeline
        .unet
        .model
        .config()
        .sample_size
        .as_ref()
        .and_then(|v| v.as_i64())
        .map_or(512, |s| s * factor);
    let height = args.height.unwrap_or(default_size);
    let request = SampleRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.steps,
        guidance: args.guidance,
        scheduler: scheduler_kind(args.scheduler.as_deref()),
        height,
        width: args.width.unwrap_or(height),
    };
    let start = Instant::now();
    let out = pipeline.sample(&request, &noise)?;
    let secs = start.elapsed().as_secs_f64();
    save_png(&out.images, &args.out)?;
    if let Some(path) = &args.save_latents {
        write_beside(path, |tmp| {
            Tensor::write_safetensors(&[("latents", &out.latents.to_device(Device::Cpu))], tmp)
                .with_context(|| format!("cannot write {}", path.display()))
        })?;
    }
    println!(
        "wrote {} ({}x{}, {} step(s) at t = {:?}, loaded in {load_secs:.1} s, sampled in {secs:.2} s)",
        args.out.display(),
        request.width,
        request.height,
        args.steps,
        out.timesteps
    );
    Ok(())
}
