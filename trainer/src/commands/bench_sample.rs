//! `trainer bench-sample`: one-step generation speed, end to end and per network.

use std::time::Instant;

use anyhow::{ensure, Result};
use runtime::GaussianRng;
use tch::{Device, Kind, Tensor};
use trainer::checkpoint::model_dir;
use trainer::sampling::{apply_step, Pipeline};

use super::sample::load_options;
use crate::cli::BenchSampleArgs;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: &BenchSampleArgs) -> Result<()> {
    ensure!(args.iters > 0, "--iters must be at least 1");
    let opts = load_options(&args.device)?;
    let (device, kind) = (opts.device, opts.kind);
    let dir = model_dir(&args.model)?;
    let p = Pipeline::load(&dir, opts)?;
    let factor = p.vae.model.config().downscale_factor();
    let size = args.size.unwrap_or_else(|| {
        p.unet
            .model
            .config()
            .sample_size
            .as_ref()
            .and_then(|v| v.as_i64())
            .map_or(512, |s| s * factor)
    });
    ensure!(
        size > 0 && size % factor == 0,
        "--size must be a positive multiple of {factor}"
    );
    let scheduler = p.scheduler(None, 1)?;
    let coeffs = scheduler.step_coefficients(0)?;
    let shape = [
        1,
        p.unet.model.config().in_channels,
        size / factor,
        size / factor,
    ];
    let numel: i64 = shape.iter().product();
    let t = Tensor::from_slice(&[scheduler.timesteps()[0]]).to_device(device);
    let mut rng = GaussianRng::new(0);
    let (mut text, mut unet, mut vae, mut total) = (vec![], vec![], vec![], vec![]);
    // The first image warms up allocators and kernels; it is not counted.
    for iter in 0..=args.iters {
        trainer::device::synchronize(device);
        let start = Instant::now();
        let context = p.encode_prompts(&["a photo of a dog on the beach"]);
        trainer::device::synchronize(device);
        let t_text = start.elapsed().as_secs_f64();
        let noise = Tensor::from_slice(&rng.normal(numel as usize))
            .view(shape)
            .to_device(device);
        let latents = noise * f64::from(scheduler.init_noise_sigma());
        let x_in = (&latents * f64::from(scheduler.model_input_scale(0)?)).to_kind(kind);
        let out = tch::no_grad(|| p.unet.model.forward(&x_in, &t, &context)).to_kind(Kind::Float);
        let latents = apply_step(&coeffs, &latents, &out, None).0;
        trainer::device::synchronize(device);
        let t_unet = start.elapsed().as_secs_f64();
        let scaling = p.vae.model.config().scaling_factor;
        let image = tch::no_grad(|| p.vae.model.decode(&(latents / scaling).to_kind(kind)));
        let _ = image.to_device(Device::Cpu);
        trainer::device::synchronize(device);
        let t_all = start.elapsed().as_secs_f64();
        if iter > 0 {
            text.push(t_text * 1e3);
            unet.push((t_unet - t_text) * 1e3);
            vae.push((t_all - t_unet) * 1e3);
            total.push(t_all * 1e3);
        }
    }
    println!(
        "bench-sample: {} at {size}x{size}, 1 step, {:?} {:?}, {} threads, median of {} images:",
        dir.display(),
        device,
        kind,
        tch::get_num_threads(),
        args.iters
    );
    println!(
        "  {:.1} ms/image (text encoder {:.1} ms, UNet {:.1} ms, VAE decode {:.1} ms)",
        median(&mut total),
        median(&mut text),
        median(&mut unet),
        median(&mut vae)
    );
    Ok(())
}
