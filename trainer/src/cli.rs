//! The command line, in one place.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// EchoDistill: teach a one-step diffusion model (SD-Turbo) a subject from 3-5 photos.
#[derive(Debug, Parser)]
#[command(name = "trainer", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the token ids the text encoder sees for a prompt (77 positions, padded).
    Tokenize(TokenizeArgs),
    /// Measure tokenizer throughput (prompts and tokens per second, one thread).
    BenchTokenize(BenchTokenizeArgs),
    /// Teach a concept from a few photos: EchoDistill (student and teacher, then echo) or a baseline (--method).
    Fit(Box<FitArgs>),
    /// Measure EchoDistill training: seconds per iteration, where they go, and peak memory.
    Bench(Box<BenchArgs>),
    /// Generate an image: the student in 1-4 steps, or the teacher with DDIM and guidance.
    Sample(Box<SampleArgs>),
    /// Write a seeded random-weight model in the diffusers layout (tiny by default).
    InitTiny(InitTinyArgs),
    /// Measure one-step generation: milliseconds per image, with the text encoder, UNet and VAE apart.
    BenchSample(Box<BenchSampleArgs>),
    /// Measure the student's full loss stack: milliseconds per forward + backward.
    BenchLosses(Box<BenchLossesArgs>),
    /// Score a trained run on DreamBench: CLIP-T, CLIP-I and DINO over the subject's 25 prompts x 4 seeds.
    Eval(Box<EvalArgs>),
    /// Measure evaluation: seconds per generated-and-scored image.
    BenchEval(Box<BenchEvalArgs>),
    /// Run every (method x subject) fit and evaluation of a manifest and assemble the table (resumable, shardable).
    BenchTable(Box<BenchTableArgs>),
    /// Score images with a trained EchoDistill run's discriminator heads: P(real) per head and folder.
    Discriminate(DiscriminateArgs),
    /// Merge the tables of disjoint subjects (metrics.json of eval or bench-table runs) into one table.
    MergeTables(MergeTablesArgs),
    /// Write the toy world's files: its DreamBench-shaped subjects and a preview of its pre-training data.
    ToyData(ToyDataArgs),
    /// Pre-train the toy world's models (autoencoder, CLIP, DINO, teacher, one-step student) in the real models' layouts (resumable).
    PretrainToy(PretrainToyArgs),
    /// Copy a finished pretrain-toy run's models into a new folder with f16 weights (the repository's committed toy models).
    ToyPack(ToyPackArgs),
    /// Print the libtorch build this binary uses and the devices it can see.
    Env,
}

#[derive(Debug, Args)]
pub struct ToyDataArgs {
    /// The folder to create: dreambench/ (for `trainer eval --dataset`), pretrain-samples.png,
    /// pretrain-captions.txt, subjects.png, index.html.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The world's seed (subjects, scenes, captions).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    pub resolution: u32,
    /// Held-out subjects per composite class (medal, badge, totem).
    #[arg(long, default_value_t = 10)]
    pub subjects_per_class: usize,
    /// Pre-training items shown in the preview.
    #[arg(long, default_value_t = 64)]
    pub samples: usize,
    /// Also render each subject in this many scenes of its own into novel-scenes/<subject>/
    /// (drawn as its references are, never trained on: e.g. for `trainer discriminate`).
    #[arg(long, default_value_t = 0)]
    pub novel_scenes: usize,
}

#[derive(Debug, Args)]
pub struct PretrainToyArgs {
    /// The folder to create (or, with --resume, to continue): teacher/, student/, towers/,
    /// report/, manifest.yaml. Not needed with --print-config.
    #[arg(long, value_name = "DIR", required_unless_present = "print_config")]
    pub out: Option<PathBuf>,
    /// Settings (YAML; every key optional, defaults from `--print-config`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print the resolved settings as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// The real CLIP tokenizer folder (the toy models use its vocabulary).
    #[arg(long, env = "ECHODISTILL_CLIP_TOKENIZER", value_name = "DIR")]
    pub tokenizer: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, Args)]
pub struct ToyPackArgs {
    /// A finished `trainer pretrain-toy` output folder.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The folder to create: teacher/, student/, towers/ with f16 weights, report/, manifest.yaml.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchTableArgs {
    /// The manifest (YAML): dataset, subjects, fit overrides, eval backbones, methods.
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// The table's folder: cells/<method>/<subject>/{run,eval-*} and metrics.* at the top.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Run only this share of the cells: INDEX/COUNT, 0-based (a Slurm array task id or a
    /// Kubernetes completion index); merge afterwards with --collect.
    #[arg(long, value_name = "I/N", conflicts_with = "collect")]
    pub shard: Option<trainer::eval::bench_table::Shard>,
    /// Only merge the finished cells' scores into the table.
    #[arg(long)]
    pub collect: bool,
    /// Only these subjects (comma-separated) instead of the manifest's list.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub subjects: Vec<String>,
    /// A `trainer fit` override after the manifest's `fit` list, e.g. `--set iterations=50`
    /// (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Only the first N prompts of each subject instead of the manifest's `eval.prompts`.
    #[arg(long, value_name = "N")]
    pub prompts: Option<usize>,
    /// Seeds per prompt (comma-separated) instead of the manifest's `eval.seeds`.
    #[arg(long, value_delimiter = ',', value_name = "SEEDS")]
    pub seeds: Vec<u64>,
    /// Hide the progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Where the evaluations run (the fits take `device=` from the manifest's `fit` list).
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Debug, Args)]
pub struct DiscriminateArgs {
    /// A finished (or checkpointed) EchoDistill `trainer fit` run folder: its last checkpoint's
    /// heads score.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Image folders (jpg, png, webp), each image centre-cropped and resized to the run's
    /// resolution.
    #[arg(required = true, value_name = "IMAGES")]
    pub images: Vec<PathBuf>,
    /// Also write one row per image (folder, file, P(real) per head) to this CSV file.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Where the run's networks load (default: the run's own `device`).
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Debug, Args)]
pub struct MergeTablesArgs {
    /// `metrics.json` files (or folders holding one) of `trainer eval` or `bench-table --collect`,
    /// each on other subjects, all with the same prompts and seeds.
    #[arg(required = true, value_name = "METRICS")]
    pub tables: Vec<PathBuf>,
    /// The folder to write metrics.md, metrics.csv, metrics.json and metrics.png into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The row every other row is compared with, subject by subject (mean difference ± its
    /// standard error over subjects, on how many subjects it is higher, and the sign test of
    /// that count): a method's label, or LABEL@STEPS. Default: the table's first row.
    #[arg(long, value_name = "LABEL")]
    pub reference: Option<String>,
    /// A row to pick the best of per subject (repeat it: `--versus "Custom Diffusion" --versus
    /// LoRA`), named as --reference is: a section then shows, for every subject, the
    /// reference beside the highest CLIP-I and DINO among these rows, and on how many subjects
    /// the reference is above them all.
    #[arg(long, value_name = "LABEL")]
    pub versus: Vec<String>,
}

/// What `trainer eval` and `trainer bench-eval` share: the dataset, the backbones, the protocol.
#[derive(Debug, Args)]
pub struct EvalProtocolArgs {
    /// The DreamBench folder (google/dreambooth's dataset/, or its parent).
    #[arg(long, env = "ECHODISTILL_DREAMBENCH", value_name = "DIR")]
    pub dataset: PathBuf,
    /// The subject (default: the run's image folder's name, when it is a DreamBench subject).
    #[arg(long)]
    pub subject: Option<String>,
    /// Reference photos of your own concept (not in DreamBench); the prompt lists still come
    /// from --dataset, the live list for cats and dogs.
    #[arg(long, value_name = "DIR")]
    pub references: Option<PathBuf>,
    /// A transformers CLIPModel folder: openai/clip-vit-base-patch32 (the paper's kind) or
    /// openai/clip-vit-large-patch14-336 (the authors' code); `init-tiny` writes MODEL/towers/clip.
    #[arg(long, value_name = "DIR")]
    pub clip: PathBuf,
    /// A DINO folder: facebook/dino-vits16 (the paper) or facebook/dinov2-large (the authors' code).
    #[arg(long, value_name = "DIR")]
    pub dino: PathBuf,
    /// DINO input side (default: its config's image_size; 224 for DINOv2).
    #[arg(long)]
    pub dino_size: Option<i64>,
    /// Evaluate the run's multi-step teacher instead of the one-step student.
    #[arg(long)]
    pub teacher: bool,
    /// Step counts, one table row each (default: 1,2,4 for the student, 25 for the teacher).
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<usize>,
    /// Seeds per prompt.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 1, 2, 3])]
    pub seeds: Vec<u64>,
    /// Only the first N prompts of the subject's list (default: all 25).
    #[arg(long)]
    pub prompts: Option<usize>,
    /// Sampler: euler-ancestral (default for the student, the paper's), euler or ddim (the
    /// teacher's own by default).
    #[arg(long, value_parser = ["euler", "euler-ancestral", "ddim"])]
    pub scheduler: Option<String>,
    /// Guidance scale (default: 0 for the student, the run's teacher guidance for the teacher).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Image side (default: the run's training resolution).
    #[arg(long)]
    pub resolution: Option<i64>,
    /// Row label in the tables (default: the method's name).
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A finished `trainer fit` run folder.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Where the images, scores, tables, chart and gallery go (reused images are not redrawn).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub protocol: EvalProtocolArgs,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct BenchEvalArgs {
    /// A finished `trainer fit` run folder.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: PathBuf,
    #[command(flatten)]
    pub protocol: EvalProtocolArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The one-step student (folder or repo id; `init-tiny` writes a tiny one).
    #[arg(long, value_name = "DIR|REPO")]
    pub student: String,
    /// The multi-step teacher.
    #[arg(long, value_name = "DIR|REPO")]
    pub teacher: String,
    /// The towers folder (dino-v1/, dino-v2/, image_encoder/, ip-adapter.safetensors).
    #[arg(long, value_name = "DIR")]
    pub towers: PathBuf,
    /// A folder of photos to train on.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// A `trainer fit` config file (e.g. trainer/assets/toy/fit.yaml for the toy models).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override any fit config key (repeatable), e.g. `--set losses.swd=0`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Image side in pixels (default: the config's, 512 without one).
    #[arg(long)]
    pub resolution: Option<i64>,
    /// Images per step (default: the config's, 2 without one).
    #[arg(long)]
    pub batch: Option<i64>,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// DINOv2's input side (default: the config's, 518 without one).
    #[arg(long)]
    pub dino_v2_size: Option<i64>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precision of the frozen networks: f32, f16 or bf16 (trained weights stay f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Also print where the time goes, phase by phase (on CUDA this waits for the GPU at every
    /// phase boundary, which a plain run never does, so the total is taken apart from it).
    #[arg(long)]
    pub profile: bool,
    /// Also time as many iterations with plain host-to-device copies from pageable memory
    /// (each of which waits for the GPU), to measure what the pinned, non-blocking copies save.
    #[arg(long)]
    pub compare_uploads: bool,
}

#[derive(Debug, Args)]
pub struct BenchLossesArgs {
    /// A towers folder: dino-v1/, dino-v2/, image_encoder/, ip-adapter.safetensors (init-tiny
    /// writes a tiny one in MODEL/towers).
    #[arg(long, value_name = "DIR")]
    pub towers: PathBuf,
    /// Side of the decoded images in pixels (512 for SD-Turbo; MS-SWD needs at least 96).
    #[arg(long, default_value_t = 128)]
    pub size: i64,
    /// Images per batch.
    #[arg(long, default_value_t = 2)]
    pub batch: i64,
    /// Timed iterations after a warm-up.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// DINOv2's input side (518 for the real tower; the tiny one is fast at any size).
    #[arg(long, default_value_t = 518)]
    pub dino_v2_size: i64,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Debug, Args)]
pub struct FitArgs {
    /// A YAML file with any settings (the defaults are the paper's; see `--print-config`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The concept's photos (3-5 jpg/png/webp); with --token and --class replaces `concepts`.
    #[arg(long, value_name = "DIR", requires_all = ["token", "class"])]
    pub images: Option<PathBuf>,
    /// The new modifier token, e.g. `<new1>`.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// The class noun, e.g. `dog`.
    #[arg(long, value_name = "WORD")]
    pub class: Option<String>,
    /// The word whose embedding starts the token (one token; default: the class).
    #[arg(long, value_name = "WORD")]
    pub init_word: Option<String>,
    /// The run folder for weights, tokens, log and config.
    #[arg(long, default_value = "run", value_name = "DIR")]
    pub out: PathBuf,
    /// What to train: echodistill (default), or a baseline on one model (`baseline.model`):
    /// custom-diffusion, textual-inversion, dreambooth, lora.
    #[arg(long, value_name = "METHOD")]
    pub method: Option<trainer::fit::config::MethodKind>,
    /// Override any config key, e.g. `--set iterations=200 --set losses.swd=0.2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the resolved config and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Continue the run in --out from its last checkpoint (its config.yaml is used).
    #[arg(long, conflicts_with_all = ["config", "images", "set", "method"])]
    pub resume: bool,
    /// Inject a fault (tests): nan@K, pause-checkpoint-write@K, pause-checkpoint-swap@K.
    #[arg(long, hide = true, value_name = "NAME@ITERATION")]
    pub failpoint: Vec<trainer::fit::failpoint::Failpoint>,
}

#[derive(Debug, Args)]
pub struct InitTinyArgs {
    /// The model folder to create.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// tiny-student (SD-Turbo scaled down), tiny-teacher (upcast attention, DDIM, v-prediction),
    /// or the full-size sd-turbo (student) and sd21 (teacher: SD 2.1 at 768 px) for benchmarks.
    #[arg(long, default_value = "tiny-student")]
    pub architecture: String,
    /// Image towers written to OUT/towers: tiny, full (the real DINOv1 ViT-S/16, DINOv2
    /// ViT-L/14, IP-Adapter ViT-H/14 encoder and projection, CLIP ViT-L/14@336; 5.6 GB) or none.
    #[arg(long, default_value = "tiny", value_parser = ["tiny", "full", "none"])]
    pub towers: String,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The real CLIP tokenizer folder to copy.
    #[arg(long, env = "ECHODISTILL_CLIP_TOKENIZER", value_name = "DIR")]
    pub tokenizer: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchSampleArgs {
    /// A diffusers model folder or repo id.
    #[arg(long, value_name = "DIR|REPO")]
    pub model: String,
    /// Timed images after the warm-up.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Image height and width in pixels (default: the model's own).
    #[arg(long)]
    pub size: Option<i64>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Where and in what precision networks run.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weight and activation precision: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Weight-file variant to prefer, e.g. `fp16` (diffusers' `variant`).
    #[arg(long)]
    pub variant: Option<String>,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A diffusers model folder or a Hugging Face repo id (e.g. stabilityai/sd-turbo).
    #[arg(long, value_name = "DIR|REPO", required_unless_present = "run")]
    pub model: Option<String>,
    /// A `trainer fit` run folder: sample its trained student (or, with --teacher, teacher).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "model")]
    pub run: Option<PathBuf>,
    /// With --run: sample the trained teacher instead of the student.
    #[arg(long, requires = "run")]
    pub teacher: bool,
    /// What to draw.
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// What to steer away from (used only with guidance above 1).
    #[arg(long, default_value = "", value_name = "TEXT")]
    pub negative_prompt: String,
    /// Denoising steps (1 for the one-step student; the teacher defaults to 25 in training).
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// Seed of the runtime core's Gaussian generator (the same image in trainer, runtime, web).
    #[arg(long, default_value_t = 0, conflicts_with = "noise")]
    pub seed: u64,
    /// A safetensors file with `noise` (and `step_noise` for ancestral steps) instead of a seed.
    #[arg(long, value_name = "FILE")]
    pub noise: Option<PathBuf>,
    /// Classifier-free guidance scale; 0 (off) for the student, 7.5 for the teacher.
    #[arg(long, default_value_t = 0.0)]
    pub guidance: f64,
    /// Scheduler: the checkpoint's own by default; `euler-ancestral` is the paper's student sampler.
    #[arg(long, value_parser = ["euler", "euler-ancestral", "ddim"])]
    pub scheduler: Option<String>,
    /// Image height in pixels (default: the UNet's sample size times the VAE's factor).
    #[arg(long)]
    pub height: Option<i64>,
    /// Image width in pixels (default: as height).
    #[arg(long)]
    pub width: Option<i64>,
    /// Where to write the PNG.
    #[arg(long, default_value = "sample.png", value_name = "PNG")]
    pub out: PathBuf,
    /// Also write the final latents (safetensors, tensor `latents`).
    #[arg(long, value_name = "FILE")]
    pub save_latents: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Where the tokenizer comes from.
#[derive(Debug, Args)]
pub struct TokenizerArgs {
    /// A diffusers `tokenizer/` folder, or a model folder that contains one.
    #[arg(long, env = "ECHODISTILL_CLIP_TOKENIZER", value_name = "DIR")]
    pub tokenizer: PathBuf,
    /// Add a modifier token before tokenizing (repeatable), e.g. `<new1>`.
    #[arg(long = "add-token", value_name = "TOKEN")]
    pub add_tokens: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub tokenizer: TokenizerArgs,
    /// The prompt (repeatable).
    #[arg(long, required = true, value_name = "TEXT")]
    pub prompt: Vec<String>,
    /// Print one JSON object per prompt instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchTokenizeArgs {
    #[command(flatten)]
    pub tokenizer: TokenizerArgs,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub seconds: f64,
}
