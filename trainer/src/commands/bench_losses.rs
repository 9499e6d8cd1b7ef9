//! `trainer bench-losses`: the student's loss stack (identity, latent MSE, MS-SWD, three
//! discriminators) forward and backward, timed.

use std::time::Instant;

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};
use trainer::checkpoint::LoadOptions;
use trainer::losses::stack::{LossStack, StackConfig};

use super::sample::device_and_kind;
use crate::cli::BenchLossesArgs;

pub fn run(args: &BenchLossesArgs) -> Result<()> {
    ensure!(
        args.iters > 0 && args.batch > 0,
        "--iters and --batch must be at least 1"
    );
    let (device, kind) = device_and_kind(&args.device)?;
    let opts = LoadOptions {
        device,
        kind,
        variant: None,
    };
    let config = StackConfig {
        dino_v2_size: Some(args.dino_v2_size),
        ..StackConfig::default()
    };
    let mut stack = LossStack::load(&args.towers, opts, &config)?;
    let latent = [args.batch, 4, args.size / 8, args.size / 8];
    let image = [args.batch, 3, args.size, args.size];
    tch::manual_seed(0);
    let mut times = Vec::new();
    for iter in 0..=args.iters {
        let student_latents = Tensor::randn(latent, (Kind::Float, device)).set_requires_grad(true);
        let target_latents = Tensor::randn(latent, (Kind::Float, device));
        let student_images =
            (Tensor::rand(image, (Kind::Float, device)) * 2.0 - 1.0).set_requires_grad(true);
        let target_images = Tensor::rand(image, (Kind::Float, device)) * 2.0 - 1.0;
        trainer::device::synchronize(device);
        let start = Instant::now();
        let loss = stack.student_loss(
            &student_latents,
            &target_latents,
            &student_images.to_kind(kind),
            &target_images.to_kind(kind),
            0.5,
        )?;
        loss.total.backward();
        // As fit does: the student's pass hands its backbone features to the discriminators.
        let real = stack
            .ensemble
            .features(&target_images.to_kind(kind), None)?;
        let d = stack
            .ensemble
            .discriminator_loss_of(&real, &loss.fake_features)?;
        d.backward();
        trainer::device::synchronize(device);
        if iter > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "bench-losses: {} at {}x{}, batch {}, {:?} {:?}, {} threads: {:.1} ms per student + discriminator forward/backward (median of {})",
        args.towers.display(),
        args.size,
        args.size,
        args.batch,
        device,
        kind,
        tch::get_num_threads(),
        times[times.len() / 2],
        args.iters
    );
    Ok(())
}
