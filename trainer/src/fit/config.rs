//! The run's settings: a YAML file (serde_yaml) with every key and the spec's defaults, then
//! command-line overrides. The fully resolved config is written to the run folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// One concept to teach: its photos, modifier token, class noun and initializer word.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Concept {
    /// Folder of 3-5 photos (jpg, png, webp).
    pub images: PathBuf,
    /// The new token, e.g. `<new1>`.
    pub token: String,
    /// The class noun, e.g. `dog`.
    pub class: String,
    /// The word whose embedding initialises the token row (default: the class).
    #[serde(default)]
    pub init_word: Option<String>,
}

/// AdamW settings (SPEC §4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Adam {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// ε.
    pub eps: f64,
}

impl Default for Adam {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 1e-2,
            eps: 1e-8,
        }
    }
}

/// Loss weights and the adversarial loss type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Losses {
    /// λ_id.
    pub identity: f64,
    /// λ_mse.
    pub mse: f64,
    /// λ_swd.
    pub swd: f64,
    /// MS-SWD's pyramid levels (SPEC §6: 5). The coarsest level must be wider than half the
    /// 11-pixel patch, so 64-pixel images (the toy world) take at most 4.
    pub swd_scales: usize,
    /// `ce` (default, the authors' code) or `hinge`.
    pub adversarial: String,
    /// λ_adv, the weight of the adversarial terms in the student's loss (1: the paper and the
    /// authors' code add them unweighted).
    pub adversarial_weight: f64,
}

impl Default for Losses {
    fn default() -> Self {
        Self {
            identity: 1.0,
            mse: 1.0,
            swd: 0.1,
            swd_scales: 5,
            adversarial: "ce".into(),
            adversarial_weight: 1.0,
        }
    }
}

/// The echo stage (SPEC §5): after distillation, the student's own samples replace the photos.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Echo {
    /// Run the echo stage.
    pub enabled: bool,
    /// Student samples to generate (spread over the concepts).
    pub samples: usize,
    /// Iterations trained on them.
    pub iterations: usize,
    /// Keep the real photos in the training set beside the samples.
    pub mix_real: bool,
}

impl Default for Echo {
    fn default() -> Self {
        // The paper leaves N and the length open; half the distillation length on 16 samples
        // (about 3-5x the photos) keeps the stage cheap.
        Self {
            enabled: true,
            samples: 16,
            iterations: 500,
            mix_real: false,
        }
    }
}

/// Switches for the paper's ablations (SPEC §8). Each changes only what it names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Ablation {
    /// Train and use the multi-step teacher. Off: no teacher is loaded, the student learns from
    /// the discriminators alone (no alignment loss) and its loss trains the token rows.
    pub teacher: bool,
    /// The student reads the teacher's text encoder and token rows. Off: the student keeps its
    /// own frozen text encoder with its own token rows, trained by the student's loss.
    pub shared_text_encoder: bool,
    /// Train the teacher alone for `iterations`, then the student alone (teacher and token rows
    /// frozen) for `iterations`, instead of both together.
    pub teacher_first: bool,
}

impl Default for Ablation {
    fn default() -> Self {
        Self {
            teacher: true,
            shared_text_encoder: true,
            teacher_first: false,
        }
    }
}

/// What happens when training diverges: a non-finite loss or gradient, or a loss spike, restores
/// the last checkpoint and lowers every learning rate, a bounded number of times.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Recovery {
    /// Recoveries allowed before the run stops with an error.
    pub max_events: usize,
    /// Learning rates are multiplied by this at each recovery.
    pub lr_factor: f64,
    /// A spike is a total loss above this multiple of the mean of the previous `spike_window`
    /// iterations (0: only NaN/inf count).
    pub spike_factor: f64,
    /// Iterations the spike test averages over (and waits for before it starts).
    pub spike_window: usize,
}

impl Default for Recovery {
    fn default() -> Self {
        // Diffusion losses swing several-fold with t; 20x the recent mean is far outside that.
        Self {
            max_events: 3,
            lr_factor: 0.5,
            spike_factor: 20.0,
            spike_window: 50,
        }
    }
}

/// Sample grids of fixed prompts and seeds, drawn during and after training.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Samples {
    /// Draw the student's grid every this many iterations (0: only at the end).
    pub every: usize,
    /// Prompts, `{}` standing for "<token> <class>" of each concept (each prompt is drawn once
    /// per concept).
    pub prompts: Vec<String>,
    /// One row per prompt and seed.
    pub seeds: Vec<u64>,
    /// The student's step counts, one column each.
    pub steps: Vec<usize>,
    /// The student's sampler: `euler-ancestral` (the paper's) or `euler`.
    pub scheduler: String,
    /// The teacher's DDIM steps for its grid at the end (0: no teacher grid).
    pub teacher_steps: usize,
    /// The teacher grid's guidance scale.
    pub teacher_guidance: f64,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            every: 250,
            prompts: vec![
                "a photo of a {}".into(),
                "a {} on the beach".into(),
                "a {} in the snow".into(),
            ],
            seeds: vec![0, 1],
            steps: vec![1, 2, 4],
            scheduler: "euler-ancestral".into(),
            teacher_steps: 25,
            teacher_guidance: 7.5,
        }
    }
}

/// What `trainer fit` trains: EchoDistill, or one of the paper's baselines (SPEC §8), each on
/// one model with the photos' diffusion loss.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MethodKind {
    /// Teacher and student together, then the echo stage (SPEC §3-5).
    #[default]
    Echodistill,
    /// Cross-attention K/V and the token row (Kumari et al. 2023).
    CustomDiffusion,
    /// The token row alone (Gal et al. 2023).
    TextualInversion,
    /// The whole UNet (and the token row), optionally with prior preservation (Ruiz et al. 2023).
    Dreambooth,
    /// Low-rank adapters on the UNet's attention projections (and the token row).
    Lora,
}

impl MethodKind {
    /// Every method, in the order of the paper's table.
    pub const ALL: [MethodKind; 5] = [
        MethodKind::Echodistill,
        MethodKind::CustomDiffusion,
        MethodKind::TextualInversion,
        MethodKind::Dreambooth,
        MethodKind::Lora,
    ];

    /// The name used in configs and on the command line.
    pub fn id(self) -> &'static str {
        match self {
            MethodKind::Echodistill => "echodistill",
            MethodKind::CustomDiffusion => "custom-diffusion",
            MethodKind::TextualInversion => "textual-inversion",
            MethodKind::Dreambooth => "dreambooth",
            MethodKind::Lora => "lora",
        }
    }

    /// The name used in tables.
    pub fn display_name(self) -> &'static str {
        match self {
            MethodKind::Echodistill => "EchoDistill",
            MethodKind::CustomDiffusion => "Custom Diffusion",
            MethodKind::TextualInversion => "Textual Inversion",
            MethodKind::Dreambooth => "DreamBooth",
            MethodKind::Lora => "LoRA",
        }
    }

    /// Whether this is one of the single-model baselines.
    pub fn is_baseline(self) -> bool {
        self != MethodKind::Echodistill
    }

    /// Iterations when the config does not say: the paper's (SPEC §8: 1000 for EchoDistill,
    /// Custom Diffusion and DreamBooth, 4000 for Textual Inversion, 800 for LoRA).
    pub fn default_iterations(self) -> usize {
        match self {
            MethodKind::TextualInversion => 4000,
            MethodKind::Lora => 800,
            _ => 1000,
        }
    }

    /// The learning rate of what the method trains (`baseline.lr` when unset), from each
    /// method's common practice: Custom Diffusion 1e-5 (its script's base rate, and what
    /// EchoDistill's teacher K/V use), Textual Inversion 5e-4 (diffusers' documented effective
    /// rate), DreamBooth 5e-6 (diffusers' script), LoRA 1e-4 (diffusers' LoRA scripts).
    pub fn default_lr(self) -> f64 {
        match self {
            MethodKind::Echodistill | MethodKind::CustomDiffusion => 1e-5,
            MethodKind::TextualInversion => 5e-4,
            MethodKind::Dreambooth => 5e-6,
            MethodKind::Lora => 1e-4,
        }
    }
}

impl std::str::FromStr for MethodKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        MethodKind::ALL
            .into_iter()
            .find(|m| m.id() == s)
            .ok_or_else(|| {
                format!(
                    "unknown method {s:?}; choose one of {}",
                    MethodKind::ALL.map(MethodKind::id).join(", ")
                )
            })
    }
}

/// What the discriminators are shown as real images.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiscriminatorReal {
    /// The augmented photos themselves (the paper).
    #[default]
    Photos,
    /// The photos through the VAE (posterior sample decoded, unclamped like the student's
    /// images): with a VAE that visibly blurs, photos and decoded samples differ in that alone,
    /// and heads that learn it push the student away from what any decoder can draw.
    Reconstructions,
}

/// Which of the configured models a baseline fine-tunes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BaselineModel {
    /// The one-step student (`student:`, SD-Turbo).
    #[default]
    Student,
    /// The multi-step teacher (`teacher:`, SD 2.1).
    Teacher,
}

/// The baselines' settings (`method` other than echodistill). Unset values take the method's
/// default when the config is loaded, so the run's config.yaml shows what was used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Baseline {
    /// The model to fine-tune.
    pub model: BaselineModel,
    /// Learning rate of what the method trains (see [`MethodKind::default_lr`]).
    pub lr: Option<f64>,
    /// Train the new token's embedding row too (DreamBooth and LoRA; default true: a frozen row
    /// equal to its initializer word makes "<new1> dog" read "dog dog"). Custom Diffusion and
    /// Textual Inversion always train it.
    pub train_token: Option<bool>,
    /// Learning rate of the token row for DreamBooth and LoRA (default 5e-4, Textual
    /// Inversion's); Custom Diffusion's and Textual Inversion's row uses `lr` (Custom
    /// Diffusion's script trains K/V and row with one optimiser).
    pub token_lr: Option<f64>,
    /// Prior preservation: a second diffusion loss on generated images of the class keeps the
    /// model's idea of the class (default: on for DreamBooth, off otherwise; not for Textual
    /// Inversion, whose model is frozen).
    pub prior_preservation: Option<bool>,
    /// Weight of the prior loss.
    pub prior_weight: f64,
    /// Class images per concept (generated by the model before training where fewer exist).
    pub class_images: usize,
    /// Where class images are kept, one folder per class (default: RUN/class_images). Images
    /// already there are used (the first `class_images` by name); missing ones are generated.
    pub class_data_dir: Option<PathBuf>,
    /// Sampling steps for generating class images (default: 1 for the student, 25 for the
    /// teacher).
    pub class_steps: Option<usize>,
    /// LoRA rank.
    pub lora_rank: i64,
    /// LoRA alpha (the update is scaled by alpha / rank; default: the rank, i.e. scale 1).
    pub lora_alpha: Option<f64>,
    /// The attention projections that get adapters, in every UNet attention layer (self and
    /// cross): any of to_q, to_k, to_v, to_out.0.
    pub lora_targets: Vec<String>,
}

impl Default for Baseline {
    fn default() -> Self {
        Self {
            model: BaselineModel::Student,
            lr: None,
            train_token: None,
            token_lr: None,
            prior_preservation: None,
            prior_weight: 1.0,
            class_images: 100,
            class_data_dir: None,
            class_steps: None,
            lora_rank: 4,
            lora_alpha: None,
            lora_targets: LORA_TARGETS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The projections LoRA may adapt (diffusers' DreamBooth-LoRA targets all four).
pub const LORA_TARGETS: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];

impl Baseline {
    /// Fills every unset value with `method`'s default.
    fn resolve(&mut self, method: MethodKind) {
        self.lr.get_or_insert(method.default_lr());
        self.train_token.get_or_insert(true);
        self.token_lr.get_or_insert(5e-4);
        self.prior_preservation
            .get_or_insert(method == MethodKind::Dreambooth);
        self.class_steps.get_or_insert(match self.model {
            BaselineModel::Student => 1,
            BaselineModel::Teacher => 25,
        });
        self.lora_alpha.get_or_insert(self.lora_rank as f64);
    }

    /// The resolved learning rate.
    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or(1e-5)
    }

    /// The resolved token-row learning rate (`token_lr` for DreamBooth and LoRA, else `lr`).
    pub fn row_lr(&self, method: MethodKind) -> f64 {
        match method {
            MethodKind::Dreambooth | MethodKind::Lora => self.token_lr.unwrap_or(5e-4),
            _ => self.lr(),
        }
    }

    /// Whether the token row trains (always for Custom Diffusion and Textual Inversion).
    pub fn trains_token(&self, method: MethodKind) -> bool {
        matches!(
            method,
            MethodKind::CustomDiffusion | MethodKind::TextualInversion
        ) || self.train_token.unwrap_or(true)
    }

    /// Whether prior preservation is on.
    pub fn prior(&self) -> bool {
        self.prior_preservation.unwrap_or(false)
    }

    /// LoRA's scale alpha / rank.
    pub fn lora_scale(&self) -> f64 {
        self.lora_alpha.unwrap_or(self.lora_rank as f64) / self.lora_rank as f64
    }
}

/// A part of the run, in order: the distillation stage (or its teacher-first halves), then the
/// echo stage; a baseline's run is one fine-tuning stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Teacher, student and discriminators together (SPEC §4).
    Distill,
    /// Teacher-first ablation, first half: the teacher alone.
    TeacherOnly,
    /// Teacher-first ablation, second half: the student and discriminators alone.
    StudentOnly,
    /// The echo stage (SPEC §5): the student's samples replace the photos.
    Echo,
    /// A baseline's fine-tuning on the photos.
    Finetune,
}

impl Stage {
    /// Whether the teacher trains in this stage.
    pub fn trains_teacher(self) -> bool {
        !matches!(self, Stage::StudentOnly)
    }

    /// Whether the student (and the discriminators) train in this stage.
    pub fn trains_student(self) -> bool {
        !matches!(self, Stage::TeacherOnly)
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Distill => "distill",
            Stage::TeacherOnly => "teacher-first",
            Stage::StudentOnly => "student-after-teacher",
            Stage::Echo => "echo",
            Stage::Finetune => "finetune",
        }
    }
}

/// Every setting of `trainer fit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FitConfig {
    /// What to train: echodistill, or a baseline (custom-diffusion, textual-inversion,
    /// dreambooth, lora) configured in `baseline`.
    pub method: MethodKind,
    /// The multi-step teacher: a diffusers folder or repo id.
    pub teacher: String,
    /// The one-step student.
    pub student: String,
    /// Folder with `dino-v1/`, `dino-v2/`, `image_encoder/` and `ip-adapter.safetensors`.
    pub towers: Option<PathBuf>,
    /// The concepts (one new token row each).
    pub concepts: Vec<Concept>,
    /// Image side in pixels (a multiple of 8).
    pub resolution: i64,
    /// Images per step.
    pub batch_size: i64,
    /// Distillation iterations (a baseline's fine-tuning iterations; default per method, see
    /// [`MethodKind::default_iterations`]).
    pub iterations: usize,
    /// Teacher K/V and token rows.
    pub lr_teacher: f64,
    /// Student K/V (before the batch scaling).
    pub lr_student: f64,
    /// Multiply the student's learning rate by the batch size, as the authors' code does.
    pub scale_student_lr_by_batch: bool,
    /// Discriminator heads.
    pub lr_discriminator: f64,
    /// What the discriminators see as real: `photos` (the paper) or `reconstructions` (the
    /// photos through the VAE, one more encode and decode per iteration).
    pub discriminator_real: DiscriminatorReal,
    /// AdamW settings.
    pub adam: Adam,
    /// Gradient-norm clip.
    pub max_grad_norm: f64,
    /// Loss weights.
    pub losses: Losses,
    /// Discriminator backbones: any subset of dinov1, dinov2, ip (empty: no adversarial loss).
    pub discriminators: Vec<String>,
    /// Normalise tower inputs with their statistics (false: [-1, 1] as the authors' code).
    pub normalize_tower_inputs: bool,
    /// DINOv2's input side.
    pub dino_v2_size: i64,
    /// Classifier-free guidance of the teacher's target.
    pub teacher_guidance: f64,
    /// Random seed (data order, noise, timesteps, MS-SWD directions).
    pub seed: u64,
    /// cpu, cuda or cuda:N.
    pub device: String,
    /// f32, f16 or bf16 for the frozen networks (trained weights stay f32).
    pub dtype: String,
    /// Recompute the VAE decoder's activations in the student's backward pass instead of
    /// keeping them through the loss towers' pass: less peak memory for one more decoder
    /// forward per iteration; the same update.
    pub checkpoint_decoder: bool,
    /// Recompute the UNets' activations (teacher, student, a baseline's) block by block in
    /// the backward pass instead of keeping them: less peak memory for one more UNet forward
    /// per trained pass; the same update up to float rounding (`models/unet_checkpoint.rs`).
    pub checkpoint_unet: bool,
    /// Checkpoint every this many iterations (0: only at the end).
    pub save_every: usize,
    /// The echo stage.
    pub echo: Echo,
    /// The paper's ablations.
    pub ablation: Ablation,
    /// Divergence recovery.
    pub recovery: Recovery,
    /// Sample grids.
    pub samples: Samples,
    /// The baselines' settings.
    pub baseline: Baseline,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            method: MethodKind::Echodistill,
            teacher: "stabilityai/stable-diffusion-2-1".into(),
            student: "stabilityai/sd-turbo".into(),
            towers: None,
            concepts: Vec::new(),
            resolution: 512,
            batch_size: 2,
            iterations: 1000,
            lr_teacher: 1e-5,
            lr_student: 1e-5,
            scale_student_lr_by_batch: true,
            lr_discriminator: 1e-4,
            discriminator_real: DiscriminatorReal::Photos,
            adam: Adam::default(),
            max_grad_norm: 1.0,
            losses: Losses::default(),
            discriminators: vec!["dinov1".into(), "dinov2".into(), "ip".into()],
            normalize_tower_inputs: true,
            dino_v2_size: 518,
            teacher_guidance: 7.5,
            seed: 0,
            device: "cpu".into(),
            dtype: "f32".into(),
            checkpoint_decoder: false,
            checkpoint_unet: false,
            save_every: 100,
            echo: Echo::default(),
            ablation: Ablation::default(),
            recovery: Recovery::default(),
            samples: Samples::default(),
            baseline: Baseline::default(),
        }
    }
}

/// Sets `key` (dotted, e.g. `losses.swd`) in a YAML mapping to `value` parsed as YAML.
fn set_key(root: &mut serde_yaml::Value, key: &str, value: &str) -> Result<()> {
    let parsed: serde_yaml::Value = serde_yaml::from_str(value)
        .with_context(|| format!("--set {key}={value}: the value is not YAML"))?;
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let map = node
            .as_mapping_mut()
            .with_context(|| format!("--set {key}: {} is not a section", parts[..i].join(".")))?;
        let k = serde_yaml::Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, parsed);
            return Ok(());
        }
        node = map
            .entry(k)
            .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    }
    Ok(())
}

impl FitConfig {
    /// The run's stages and their lengths, in order.
    pub fn stages(&self) -> Vec<(Stage, usize)> {
        if self.method.is_baseline() {
            return vec![(Stage::Finetune, self.iterations)];
        }
        let mut stages = if self.ablation.teacher_first {
            vec![
                (Stage::TeacherOnly, self.iterations),
                (Stage::StudentOnly, self.iterations),
            ]
        } else {
            vec![(Stage::Distill, self.iterations)]
        };
        if self.echo.enabled {
            stages.push((Stage::Echo, self.echo.iterations));
        }
        stages
    }

    /// The stage that iteration `done + 1` belongs to (`done` iterations finished).
    pub fn stage_after(&self, done: usize) -> Stage {
        let mut end = 0;
        let stages = self.stages();
        for &(stage, n) in &stages {
            end += n;
            if done < end {
                return stage;
            }
        }
        stages.last().map(|s| s.0).unwrap_or(Stage::Distill)
    }

    /// Every iteration of every stage.
    pub fn total_iterations(&self) -> usize {
        self.stages().iter().map(|s| s.1).sum()
    }

    /// The student's learning rate after the optional batch scaling.
    pub fn student_lr(&self) -> f64 {
        self.lr_student
            * if self.scale_student_lr_by_batch {
                self.batch_size as f64
            } else {
                1.0
            }
    }

    /// The defaults, overlaid with `file` (if any), then with `overrides` (`key=value`); unset
    /// method-dependent values (`iterations`, the baseline's) take the method's defaults.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut root = serde_yaml::to_value(Self::default())?;
        // `iterations` depends on the method: absent until the user sets it.
        if let Some(map) = root.as_mapping_mut() {
            map.remove("iterations");
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            let user: serde_yaml::Value = serde_yaml::from_str(&text)
                .with_context(|| format!("{}: not valid YAML", path.display()))?;
            merge(&mut root, user);
        }
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .with_context(|| format!("--set {o}: expected key=value"))?;
            set_key(&mut root, k.trim(), v)?;
        }
        let method: MethodKind = match root.get("method") {
            Some(m) => serde_yaml::from_value(m.clone()).map_err(|_| {
                anyhow::anyhow!(
                    "method: {} is not one of {}",
                    serde_yaml::to_string(m).unwrap_or_default().trim(),
                    MethodKind::ALL.map(MethodKind::id).join(", ")
                )
            })?,
            None => MethodKind::Echodistill,
        };
        if let Some(map) = root.as_mapping_mut() {
            let key = serde_yaml::Value::String("iterations".into());
            if !map.contains_key(&key) {
                map.insert(key, method.default_iterations().into());
            }
        }
        let mut config: Self = serde_yaml::from_value(root).context("invalid configuration")?;
        config.baseline.resolve(config.method);
        config.validate()?;
        Ok(config)
    }

    /// Checks values that would fail later, naming the key.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.resolution > 0 && self.resolution % 8 == 0,
            "resolution {} is not a positive multiple of 8",
            self.resolution
        );
        ensure!(self.batch_size > 0, "batch_size must be at least 1");
        ensure!(self.iterations > 0, "iterations must be at least 1");
        ensure!(
            !self.echo.enabled || self.echo.samples > 0,
            "echo.samples must be at least 1 when the echo stage is on"
        );
        ensure!(
            !self.concepts.is_empty(),
            "no concept: give --images, --token and --class, or a concepts: list"
        );
        for d in &self.discriminators {
            if !["dinov1", "dinov2", "ip"].contains(&d.as_str()) {
                bail!("discriminators: unknown {d:?} (dinov1, dinov2, ip)");
            }
        }
        if self.method == MethodKind::Echodistill {
            use crate::losses::ms_swd::{max_scales, PATCH};
            let (scales, most) = (self.losses.swd_scales, max_scales(self.resolution, PATCH));
            ensure!(
                (1..=most).contains(&scales),
                "losses.swd_scales {scales}: MS-SWD's coarsest level of {} px images must be wider than {} pixels (half its {PATCH}-pixel patch); use at most {most} scales at this resolution",
                self.resolution,
                PATCH / 2,
            );
        }
        if !["ce", "hinge"].contains(&self.losses.adversarial.as_str()) {
            bail!(
                "losses.adversarial: {:?} is not ce or hinge",
                self.losses.adversarial
            );
        }
        ensure!(
            self.losses.adversarial_weight.is_finite() && self.losses.adversarial_weight > 0.0,
            "losses.adversarial_weight {} must be positive (discriminators=[] drops the adversarial loss)",
            self.losses.adversarial_weight
        );
        ensure!(
            self.ablation.teacher || !self.discriminators.is_empty(),
            "ablation.teacher=false leaves the discriminators as the student's only signal: keep at least one in `discriminators`"
        );
        ensure!(
            self.ablation.teacher || !self.echo.enabled,
            "ablation.teacher=false: the echo stage trains the teacher on the student's samples; set echo.enabled=false"
        );
        ensure!(
            self.ablation.teacher || !self.ablation.teacher_first,
            "ablation.teacher_first needs the teacher (ablation.teacher=true)"
        );
        ensure!(
            self.recovery.lr_factor > 0.0 && self.recovery.lr_factor <= 1.0,
            "recovery.lr_factor {} must be in (0, 1]",
            self.recovery.lr_factor
        );
        ensure!(
            !self.samples.steps.is_empty() && self.samples.steps.iter().all(|&s| s >= 1),
            "samples.steps must list step counts of at least 1"
        );
        ensure!(
            !self.samples.seeds.is_empty() && !self.samples.prompts.is_empty(),
            "samples.prompts and samples.seeds must not be empty"
        );
        if !["euler", "euler-ancestral"].contains(&self.samples.scheduler.as_str()) {
            bail!(
                "samples.scheduler: {:?} is not euler or euler-ancestral",
                self.samples.scheduler
            );
        }
        if self.method.is_baseline() {
            self.validate_baseline()?;
        }
        let mut tokens: Vec<&str> = self.concepts.iter().map(|c| c.token.as_str()).collect();
        tokens.sort();
        tokens.dedup();
        ensure!(
            tokens.len() == self.concepts.len(),
            "two concepts use the same token"
        );
        Ok(())
    }

    fn validate_baseline(&self) -> Result<()> {
        let b = &self.baseline;
        if b.prior() {
            ensure!(
                self.method != MethodKind::TextualInversion,
                "baseline.prior_preservation: Textual Inversion trains no model weights to preserve; set it to false"
            );
            ensure!(
                b.class_images > 0,
                "baseline.class_images must be at least 1 with prior preservation"
            );
            ensure!(
                b.class_steps.unwrap_or(1) > 0,
                "baseline.class_steps must be at least 1"
            );
        }
        ensure!(
            b.lr() > 0.0 && b.row_lr(self.method) > 0.0,
            "baseline.lr and baseline.token_lr must be positive"
        );
        if self.method == MethodKind::Lora {
            ensure!(
                b.lora_rank > 0,
                "baseline.lora_rank {} must be at least 1",
                b.lora_rank
            );
            ensure!(
                !b.lora_targets.is_empty(),
                "baseline.lora_targets: list at least one of {}",
                LORA_TARGETS.join(", ")
            );
            for t in &b.lora_targets {
                if !LORA_TARGETS.contains(&t.as_str()) {
                    bail!(
                        "baseline.lora_targets: unknown {t:?} (choose from {})",
                        LORA_TARGETS.join(", ")
                    );
                }
            }
        }
        Ok(())
    }

    /// The model a baseline fine-tunes (its folder or repo id as configured).
    pub fn baseline_model(&self) -> &str {
        match self.baseline.model {
            BaselineModel::Student => &self.student,
            BaselineModel::Teacher => &self.teacher,
        }
    }

    /// The resolved config as YAML.
    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(self)?)
    }
}

/// Deep-merges `over` into `base` (mappings merge, everything else replaces).
fn merge(base: &mut serde_yaml::Value, over: serde_yaml::Value) {
    match (base, over) {
        (serde_yaml::Value::Mapping(b), serde_yaml::Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_concept() -> Vec<String> {
        vec!["concepts=[{images: x, token: '<new1>', class: dog}]".into()]
    }

    #[test]
    fn defaults_are_the_specs() {
        let c = FitConfig::load(None, &with_concept()).unwrap();
        assert_eq!((c.resolution, c.batch_size, c.iterations), (512, 2, 1000));
        assert_eq!(
            (c.lr_teacher, c.lr_student, c.lr_discriminator),
            (1e-5, 1e-5, 1e-4)
        );
        assert_eq!(
            (c.losses.identity, c.losses.mse, c.losses.swd),
            (1.0, 1.0, 0.1)
        );
        assert_eq!(c.teacher_guidance, 7.5);
        assert_eq!(c.adam, Adam::default());
    }

    #[test]
    fn files_and_overrides_layer_on_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fit.yaml");
        std::fs::write(&path, "resolution: 256\nlosses:\n  swd: 0.5\n").unwrap();
        let mut o = with_concept();
        o.push("losses.mse=2".into());
        let c = FitConfig::load(Some(&path), &o).unwrap();
        assert_eq!(
            (c.resolution, c.losses.swd, c.losses.mse, c.losses.identity),
            (256, 0.5, 2.0, 1.0)
        );
        let back: FitConfig = serde_yaml::from_str(&c.to_yaml().unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut o = with_concept();
        o.push("resolution=100".into());
        assert!(FitConfig::load(None, &o)
            .unwrap_err()
            .to_string()
            .contains("resolution 100"));
        // 64-pixel images leave MS-SWD's fifth level 4 pixels wide: refused up front, naming
        // the setting and the most levels that fit; baselines have no MS-SWD.
        let mut o = with_concept();
        o.push("resolution=64".into());
        let err = FitConfig::load(None, &o).unwrap_err().to_string();
        assert!(
            err.contains("losses.swd_scales 5") && err.contains("at most 4"),
            "{err}"
        );
        o.push("losses.swd_scales=4".into());
        assert_eq!(FitConfig::load(None, &o).unwrap().losses.swd_scales, 4);
        o.pop();
        o.push("method=lora".into());
        assert!(FitConfig::load(None, &o).is_ok());
        let err = FitConfig::load(None, &["bogus=1".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("bogus"), "{err:#}");
        assert!(FitConfig::load(None, &[])
            .unwrap_err()
            .to_string()
            .contains("no concept"));
    }

    #[test]
    fn stages_follow_the_switches() {
        let mut o = with_concept();
        o.extend(["iterations=3".into(), "echo.iterations=2".into()]);
        let c = FitConfig::load(None, &o).unwrap();
        assert_eq!(c.stages(), [(Stage::Distill, 3), (Stage::Echo, 2)]);
        assert_eq!(
            (0..6).map(|i| c.stage_after(i)).collect::<Vec<_>>(),
            [
                Stage::Distill,
                Stage::Distill,
                Stage::Distill,
                Stage::Echo,
                Stage::Echo,
                Stage::Echo
            ]
        );
        o.push("ablation.teacher_first=true".into());
        let c = FitConfig::load(None, &o).unwrap();
        assert_eq!(c.total_iterations(), 8);
        assert_eq!(c.stage_after(3), Stage::StudentOnly);
        assert!(!Stage::StudentOnly.trains_teacher() && !Stage::TeacherOnly.trains_student());
    }

    #[test]
    fn contradictory_ablations_are_refused() {
        let with = |extra: &[&str]| {
            let mut o = with_concept();
            o.extend(extra.iter().map(|s| s.to_string()));
            FitConfig::load(None, &o).map_err(|e| format!("{e:#}"))
        };
        assert!(with(&["ablation.teacher=false"])
            .unwrap_err()
            .contains("echo"));
        assert!(with(&[
            "ablation.teacher=false",
            "echo.enabled=false",
            "discriminators=[]"
        ])
        .unwrap_err()
        .contains("discriminators"));
        assert!(with(&[
            "ablation.teacher=false",
            "echo.enabled=false",
            "ablation.teacher_first=true"
        ])
        .unwrap_err()
        .contains("teacher_first"));
        assert!(with(&["recovery.lr_factor=0"])
            .unwrap_err()
            .contains("lr_factor"));
        assert!(with(&["samples.scheduler=ddim"])
            .unwrap_err()
            .contains("samples.scheduler"));
        assert!(with(&["losses.adversarial_weight=0"])
            .unwrap_err()
            .contains("losses.adversarial_weight 0 must be positive"));
        assert!(with(&["discriminator_real=decoded"]).is_err());
        assert!(with(&[
            "losses.adversarial_weight=0.1",
            "discriminator_real=reconstructions"
        ])
        .is_ok());
        assert!(with(&["ablation.teacher=false", "echo.enabled=false"]).is_ok());
    }
}
