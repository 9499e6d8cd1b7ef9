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
    /// `ce` (default, the authors' code) or `hinge`.
    pub adversarial: String,
}

impl Default for Losses {
    fn default() -> Self {
        Self {
            identity: 1.0,
            mse: 1.0,
            swd: 0.1,
            adversarial: "ce".into(),
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

/// A part of the run, in order: the distillation stage (or its teacher-first halves), then the
/// echo stage.
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
        }
    }
}

/// Every setting of `trainer fit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FitConfig {
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
    /// Distillation iterations.
    pub iterations: usize,
    /// Teacher K/V and token rows.
    pub lr_teacher: f64,
    /// Student K/V (before the batch scaling).
    pub lr_student: f64,
    /// Multiply the student's learning rate by the batch size, as the authors' code does.
    pub scale_student_lr_by_batch: bool,
    /// Discriminator heads.
    pub lr_discriminator: f64,
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
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
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
            save_every: 100,
            echo: Echo::default(),
            ablation: Ablation::default(),
            recovery: Recovery::default(),
            samples: Samples::default(),
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

    /// The defaults, overlaid with `file` (if any), then with `overrides` (`key=value`).
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut root = serde_yaml::to_value(Self::default())?;
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
        let config: Self = serde_yaml::from_value(root).context("invalid configuration")?;
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
        if !["ce", "hinge"].contains(&self.losses.adversarial.as_str()) {
            bail!(
                "losses.adversarial: {:?} is not ce or hinge",
                self.losses.adversarial
            );
        }
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
        let mut tokens: Vec<&str> = self.concepts.iter().map(|c| c.token.as_str()).collect();
        tokens.sort();
        tokens.dedup();
        ensure!(
            tokens.len() == self.concepts.len(),
            "two concepts use the same token"
        );
        Ok(())
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
        assert!(with(&["ablation.teacher=false", "echo.enabled=false"]).is_ok());
    }
}
