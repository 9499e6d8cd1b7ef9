//! `runtime`: one-step personalized generation from a baked model folder with ONNX Runtime.
//! `generate` writes PNGs, `bench` prints load time, first-image latency and steady ms per
//! image, `serve` answers HTTP requests on a local port, `serve-web` serves the browser page.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use runtime::noise_file::NoiseFile;
use runtime::onnx::{GenerateRequest, LoadOptions, Model, Noise, Provider, SessionOptions};

mod serve;
mod serve_web;

#[derive(Debug, Parser)]
#[command(
    name = "runtime",
    version,
    about = "One-step personalized generation with ONNX Runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate images from a prompt and write them as PNG.
    Generate(GenerateArgs),
    /// Time model loading, the first image and steady generation.
    Bench(BenchArgs),
    /// Serve generation over HTTP (POST /generate JSON → PNG, GET /health).
    Serve(serve::ServeArgs),
    /// Serve the browser page and a model folder from 127.0.0.1: generation runs in the
    /// visitor's browser (onnxruntime-web, WebGPU or WASM), nothing is uploaded.
    ServeWeb(serve_web::ServeWebArgs),
}

/// How to load the model (shared by every command).
#[derive(Debug, Args)]
struct ModelArgs {
    /// A model folder written by `exporter bake`.
    #[arg(long, value_name = "MODEL_DIR")]
    model: PathBuf,
    /// Execution provider: cpu, cuda, tensorrt, coreml or directml (falls back to cpu, with a
    /// warning, when this build or machine lacks it).
    #[arg(long, default_value = "cpu")]
    provider: Provider,
    /// Threads per operator [default: ONNX Runtime's choice, one per core].
    #[arg(long)]
    threads: Option<usize>,
    /// Skip the SHA-256 check of the model's files against its manifest.
    #[arg(long)]
    no_verify: bool,
    /// The ONNX Runtime library [default: $ORT_DYLIB_PATH, or beside this program].
    #[arg(long, value_name = "FILE")]
    onnxruntime: Option<PathBuf>,
}

impl ModelArgs {
    fn load(&self) -> Result<Model> {
        if let Some(0) = self.threads {
            bail!("--threads 0: give at least 1, or leave it out");
        }
        let options = LoadOptions {
            session: SessionOptions {
                provider: self.provider,
                threads: self.threads,
            },
            verify: !self.no_verify,
            library: self.onnxruntime.clone(),
        };
        Model::load(&self.model, &options)
    }
}

#[derive(Debug, Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// What to draw (repeat for several prompts), e.g. "a <new1> dog on the beach".
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Seed of the noise; image i of the request uses seed + i.
    #[arg(long, default_value_t = 0, conflicts_with = "noise")]
    seed: u64,
    /// A safetensors noise file (`noise`, optional `step_noise`), one entry per image.
    #[arg(long, value_name = "FILE")]
    noise: Option<PathBuf>,
    /// Denoising steps, one of the manifest's [default: its first].
    #[arg(long)]
    steps: Option<u32>,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Where to write: one image goes to PATH; several to PATH-0.png, PATH-1.png, ...
    #[arg(long, default_value = "image.png")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt generated.
    #[arg(long, default_value = "a photo of a dog on the beach")]
    prompt: String,
    /// Denoising steps [default: the manifest's first].
    #[arg(long)]
    steps: Option<u32>,
    /// Images per run.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed runs after the first.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Generate from this noise file instead of seeds (to time against another implementation
    /// on the same noise); its batch is the run's.
    #[arg(long, value_name = "FILE", conflicts_with = "batch")]
    noise: Option<PathBuf>,
}

/// `PATH` for image `i` of `n`: PATH itself when there is one image, else PATH-i.png.
fn image_path(out: &Path, i: usize, n: usize) -> PathBuf {
    if n == 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!("{stem}-{i}.png"))
}

/// Writes an RGB image as PNG through a temporary file beside `path`.
fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = image::save_buffer_with_format(
        &tmp,
        rgb,
        width,
        height,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .with_context(|| format!("cannot write {}", path.display()))
    .and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let ext = args
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.as_deref() != Some("png") {
        bail!(
            "--out {}: images are written as PNG, so name it *.png",
            args.out.display()
        );
    }
    if args.batch == 0 {
        bail!("--batch 0: give at least 1");
    }
    let noise = match &args.noise {
        Some(path) => Noise::File(NoiseFile::read(path)?),
        None => Noise::Seed(args.seed),
    };
    let model = args.model.load()?;
    let request = GenerateRequest {
        prompts: args.prompt.clone(),
        images_per_prompt: args.batch,
        noise,
        steps: args.steps.unwrap_or_else(|| model.default_steps()),
    };
    let generation = model.generate(&request)?;
    for w in &generation.warnings {
        eprintln!("warning: {w}");
    }
    let n = generation.images.len();
    for (i, image) in generation.images.iter().enumerate() {
        let path = image_path(&args.out, i, n);
        write_png(&path, image.width, image.height, &image.rgb)?;
        println!(
            "wrote {} ({}x{}, {:?}{})",
            path.display(),
            image.width,
            image.height,
            image.prompt,
            image.seed.map_or(String::new(), |s| format!(", seed {s}"))
        );
    }
    println!(
        "{n} image(s), {} step(s), {} graph(s) on {}: loaded in {:.2} s, generated in {:.2} s",
        request.steps,
        if model.is_fused() { "fused" } else { "split" },
        model.provider(),
        model.load_seconds(),
        generation.seconds
    );
    Ok(())
}

/// The `q`-quantile of sorted values (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn bench(args: &BenchArgs) -> Result<()> {
    if args.batch == 0 || args.runs == 0 {
        bail!("--batch and --runs must be at least 1");
    }
    let started = Instant::now();
    let model = args.model.load()?;
    let load = started.elapsed().as_secs_f64();
    let steps = args.steps.unwrap_or_else(|| model.default_steps());
    let file = args.noise.as_deref().map(NoiseFile::read).transpose()?;
    let batch = file.as_ref().map_or(args.batch, |f| f.noise.shape[0]);
    let request = |seed: u64| GenerateRequest {
        prompts: vec![args.prompt.clone()],
        images_per_prompt: batch,
        noise: match &file {
            Some(f) => Noise::File(f.clone()),
            None => Noise::Seed(seed),
        },
        steps,
    };
    let first = model.generate(&request(0))?.seconds;
    let mut per_image_ms: Vec<f64> = Vec::with_capacity(args.runs);
    let bench_started = Instant::now();
    for r in 0..args.runs {
        let g = model.generate(&request(r as u64 + 1))?;
        per_image_ms.push(g.seconds * 1e3 / batch as f64);
        let done = r + 1;
        let eta = bench_started.elapsed().as_secs_f64() / done as f64 * (args.runs - done) as f64;
        eprint!(
            "\rrun {done}/{} ({:.0} ms last, ETA {eta:.0} s)   ",
            args.runs,
            g.seconds * 1e3
        );
    }
    eprintln!();
    per_image_ms.sort_by(f64::total_cmp);
    let (w, h) = model.image_size();
    println!(
        "model {} ({}, {} graph(s), {w}x{h}, {steps} step(s), batch {}, provider {})",
        model.dir().display(),
        model.manifest().dtype,
        if model.is_fused() { "fused" } else { "split" },
        batch,
        model.provider()
    );
    println!(
        "session load{}: {:.1} ms",
        if args.model.no_verify {
            ""
        } else {
            " (hash check included)"
        },
        load * 1e3
    );
    println!("first request: {:.1} ms", first * 1e3);
    println!(
        "steady ms per image over {} run(s): median {:.1}, p95 {:.1}, min {:.1}",
        args.runs,
        quantile(&per_image_ms, 0.5),
        quantile(&per_image_ms, 0.95),
        per_image_ms[0]
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Generate(a) => generate(a),
        Command::Bench(a) => bench(a),
        Command::Serve(a) => serve::run(a),
        Command::ServeWeb(a) => serve_web::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
