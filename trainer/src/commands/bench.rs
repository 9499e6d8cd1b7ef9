//! `trainer bench`: seconds per EchoDistill iteration (teacher step, student step against the
//! teacher's target and the discriminators, discriminator step) and where the time goes, with
//! the peak memory of the process.

use anyhow::{ensure, Result};
use trainer::fit::config::FitConfig;
use trainer::fit::distill::Distiller;

use crate::cli::BenchArgs;

/// Peak resident memory of this process in GiB (Linux `VmHWM`), if the system says.
fn peak_rss_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

pub fn run(args: &BenchArgs) -> Result<()> {
    ensure!(args.iters > 0, "--iters must be at least 1");
    let mut overrides = vec![format!(
        "concepts={}",
        serde_json::json!([{"images": args.images, "token": "<new1>", "class": "dog"}])
    )];
    overrides.extend(args.set.iter().cloned());
    let mut config = FitConfig::load(args.config.as_deref(), &overrides)?;
    config.student = args.student.clone();
    config.teacher = args.teacher.clone();
    config.towers = Some(args.towers.clone());
    if let Some(r) = args.resolution {
        config.resolution = r;
    }
    if let Some(b) = args.batch {
        config.batch_size = b;
    }
    if let Some(s) = args.dino_v2_size {
        config.dino_v2_size = s;
    }
    config.device = args.device.clone();
    config.dtype = args.dtype.clone();
    config.echo.enabled = false;
    config.validate()?;
    let (batch, resolution) = (config.batch_size, config.resolution);
    let mut d = Distiller::new(config)?;
    println!(
        "bench: EchoDistill iteration, batch {}, {} px, {} {}, {} warm-up + {} timed",
        batch, resolution, args.device, args.dtype, args.warmup, args.iters
    );
    for _ in 0..args.warmup {
        d.step()?;
    }
    let device = trainer::device::parse_device(&args.device)?;
    let n = args.iters as f64;
    // The total is timed without phase marks: on CUDA they synchronise, which fit does not.
    let seconds_per_iteration = |d: &mut Distiller| -> Result<f64> {
        let started = std::time::Instant::now();
        for _ in 0..args.iters {
            d.step()?;
        }
        trainer::device::synchronize(device);
        Ok(started.elapsed().as_secs_f64() / n)
    };
    println!(
        "seconds per iteration: {:.3}",
        seconds_per_iteration(&mut d)?
    );
    if args.compare_uploads {
        // The same iterations with every host-to-device copy from pageable memory (each waits
        // for the GPU), then back to pinned, non-blocking copies.
        trainer::device::set_pageable_uploads(true);
        let pageable = seconds_per_iteration(&mut d);
        trainer::device::set_pageable_uploads(false);
        println!(
            "seconds per iteration with pageable (blocking) uploads: {:.3}",
            pageable?
        );
    }
    if args.profile {
        d.set_profile(true);
        let mut total = 0.0;
        let mut phases: Vec<(&'static str, f64)> = Vec::new();
        for _ in 0..args.iters {
            let log = d.step()?;
            total += log.seconds;
            for (name, s) in log.phases {
                match phases.iter_mut().find(|(n, _)| *n == name) {
                    Some(p) => p.1 += s,
                    None => phases.push((name, s)),
                }
            }
        }
        println!(
            "profile ({} more iterations, {:.3} s each, synchronised at every phase):",
            args.iters,
            total / n
        );
        for (name, s) in &phases {
            println!(
                "  {name:<20} {:>8.3} s  {:>5.1}%",
                s / n,
                100.0 * s / total.max(f64::MIN_POSITIVE)
            );
        }
    }
    match peak_rss_gib() {
        Some(g) => println!("peak resident memory: {g:.2} GiB"),
        None => println!("peak resident memory: not reported by this system"),
    }
    if args.device.starts_with("cuda") {
        println!("GPU memory: libtorch's C API (tch) does not expose the allocator's peak; read it with `nvidia-smi --query-gpu=memory.used --format=csv -lms 200` during the run");
    }
    Ok(())
}
