//! Stage 3: the toy DINO, the evaluation's DINO score network, trained the way DINO (Caron et
//! al. 2021) trains: no captions, a student ViT and its EMA teacher see two augmented views of
//! each scene, and the student matches the teacher's centred, sharpened distribution over
//! prototypes on the other view. So it is not the CLIP network under another name.
//!
//! The augmentations are DINO's global crops (random resized crop of 35–100% of the area, flips)
//! with brightness, contrast and saturation jitter but no hue jitter or greyscale: the toy
//! subjects are told apart mostly by their colours, and DINO keeps subject identity, so the toy
//! DINO must not be taught that colour is noise.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::pool::Pool;
use super::stage::Stage;
use crate::fit::config::Adam;
use crate::fit::optim::AdamW;
use crate::models::vit::{VitConfig, VitModel};
use crate::towers::dino_input;
use crate::vision::prepare;

/// The self-distillation stage's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelfDistillationSettings {
    /// Steps.
    pub steps: usize,
    /// Scenes per step (two views each).
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Prototypes (the head's output width).
    pub prototypes: i64,
    /// Teacher softmax temperature.
    pub teacher_temperature: f64,
    /// Student softmax temperature.
    pub student_temperature: f64,
    /// EMA momentum at the start (it follows a cosine up to 1).
    pub momentum: f64,
}

impl Default for SelfDistillationSettings {
    fn default() -> Self {
        Self {
            steps: 1600,
            batch: 64,
            lr: 5e-4,
            prototypes: 1024,
            teacher_temperature: 0.04,
            student_temperature: 0.1,
            momentum: 0.996,
        }
    }
}

/// The stage's key for batch draws.
pub const STREAM: u64 = 3;
/// Width of the projection head's hidden layers and of its bottleneck.
const HEAD_HIDDEN: i64 = 256;
const BOTTLENECK: i64 = 64;
/// The centre's EMA momentum (DINO's 0.9).
const CENTER_MOMENTUM: f64 = 0.9;

/// DINO's projection head: MLP → L2-normalised bottleneck → weight-normalised prototypes.
struct ProjectionHead {
    mlp: [nn::Linear; 3],
    prototypes: Tensor,
}

impl ProjectionHead {
    fn new(p: nn::Path, hidden: i64, prototypes: i64) -> Self {
        let l = |name: &str, i, o| nn::linear(&p / name, i, o, Default::default());
        Self {
            mlp: [
                l("mlp0", hidden, HEAD_HIDDEN),
                l("mlp1", HEAD_HIDDEN, HEAD_HIDDEN),
                l("mlp2", HEAD_HIDDEN, BOTTLENECK),
            ],
            prototypes: p.var(
                "prototypes",
                &[prototypes, BOTTLENECK],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
        }
    }

    fn forward(&self, cls: &Tensor) -> Tensor {
        let h = self.mlp[0].forward(cls).gelu("none");
        let h = self.mlp[1].forward(&h).gelu("none");
        let z = super::contrastive::unit(&self.mlp[2].forward(&h));
        z.mm(&super::contrastive::unit(&self.prototypes).tr())
    }
}

/// A ViT with its head, in one store (the head under `head`).
struct Network {
    vs: nn::VarStore,
    vit: VitModel,
    head: ProjectionHead,
}

impl Network {
    fn new(config: &VitConfig, prototypes: i64, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let vit = VitModel::new(vs.root(), config.clone())?;
        let head = ProjectionHead::new(vs.root() / "head", config.hidden_size, prototypes);
        super::init_embeddings(&vs);
        Ok(Self { vs, vit, head })
    }

    fn forward(&self, views: &Tensor) -> Result<Tensor> {
        let input = dino_input(self.vit.image_size(), true);
        let cls = self.vit.forward(&prepare(views, input))?.select(1, 0);
        Ok(self.head.forward(&cls))
    }
}

/// DINO being trained.
pub struct SelfDistillationStage<'a> {
    pool: &'a Pool,
    settings: SelfDistillationSettings,
    device: Device,
    student: Network,
    teacher: Network,
    /// The running centre of the teacher's outputs, in its own store so checkpoints keep it.
    center_vs: nn::VarStore,
    center: Tensor,
    opt: AdamW,
    steps: usize,
}

impl<'a> SelfDistillationStage<'a> {
    /// Fresh networks of `config`; the teacher starts as a copy of the student.
    pub fn new(
        pool: &'a Pool,
        config: &VitConfig,
        settings: SelfDistillationSettings,
        steps: usize,
        device: Device,
    ) -> Result<Self> {
        let student = Network::new(config, settings.prototypes, device)?;
        let mut teacher = Network::new(config, settings.prototypes, device)?;
        teacher.vs.copy(&student.vs)?;
        teacher.vs.freeze();
        let mut center_vs = nn::VarStore::new(device);
        let center =
            center_vs
                .root()
                .var("center", &[1, settings.prototypes], nn::Init::Const(0.0));
        center_vs.freeze();
        let opt = AdamW::new(
            &student.vs,
            settings.lr,
            &Adam {
                weight_decay: 0.04,
                ..Adam::default()
            },
        );
        Ok(Self {
            pool,
            settings,
            device,
            student,
            teacher,
            center_vs,
            center,
            opt,
            steps,
        })
    }

    /// The teacher's ViT weights (what DINO releases).
    pub fn teacher_store(&self) -> &nn::VarStore {
        &self.teacher.vs
    }
}

/// Two augmented views of each image in [-1, 1]: a random resized crop (35–100% of the area,
/// aspect 3/4–4/3), a horizontal flip half the time, and brightness, contrast and saturation
/// factors in [0.6, 1.4], [0.6, 1.4] and [0.7, 1.3]. Random numbers come from torch's seeded
/// generator.
pub fn augment(images: &Tensor) -> Tensor {
    let (n, device) = (images.size()[0], images.device());
    let opts = (Kind::Float, device);
    let uniform = |lo: f64, hi: f64| Tensor::rand([n], opts) * (hi - lo) + lo;
    let area = uniform(0.35, 1.0);
    let log_ratio = uniform((3f64 / 4.0).ln(), (4f64 / 3.0).ln());
    let w = (&area * log_ratio.exp()).sqrt().clamp_max(1.0);
    let h = (&area / log_ratio.exp()).sqrt().clamp_max(1.0);
    let cx = (uniform(-1.0, 1.0)) * (1.0 - &w);
    let cy = (uniform(-1.0, 1.0)) * (1.0 - &h);
    let flip = Tensor::rand([n], opts).lt(0.5).to_kind(Kind::Float) * 2.0 - 1.0;
    let zeros = Tensor::zeros([n], opts);
    let theta =
        Tensor::stack(&[&w * &flip, zeros.shallow_clone(), cx, zeros, h, cy], 1).view([n, 2, 3]);
    let size = images.size();
    let grid = Tensor::affine_grid_generator(&theta, size.as_slice(), false);
    let crops = images.grid_sampler(&grid, 0, 1, false);
    // Colour jitter on [0, 1] pixels.
    let x = (crops + 1.0) * 0.5;
    let factor = |lo, hi| uniform(lo, hi).view([n, 1, 1, 1]);
    let x = &x * factor(0.6, 1.4);
    let mean = x.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
    let x = (&x - &mean) * factor(0.6, 1.4) + &mean;
    let grey = x.mean_dim([1i64].as_slice(), true, Kind::Float);
    let x = (&x - &grey) * factor(0.7, 1.3) + &grey;
    x.clamp(0.0, 1.0) * 2.0 - 1.0
}

/// DINO's loss: over every pair of different views (a, b), the cross-entropy of the student's
/// softmax(s_b / τ_s) against the teacher's softmax((t_a − centre) / τ_t), averaged over the
/// batch and the pairs.
pub fn dino_loss(
    teacher: &[Tensor],
    student: &[Tensor],
    center: &Tensor,
    teacher_temperature: f64,
    student_temperature: f64,
) -> Tensor {
    let mut loss = Tensor::zeros([], (Kind::Float, center.device()));
    let mut pairs = 0;
    for (a, t) in teacher.iter().enumerate() {
        let target = ((t - center) / teacher_temperature).softmax(-1, Kind::Float);
        for (b, st) in student.iter().enumerate() {
            if a != b {
                let log_p = (st / student_temperature).log_softmax(-1, Kind::Float);
                loss += -(&target * log_p)
                    .sum_dim_intlist(-1, false, Kind::Float)
                    .mean(Kind::Float);
                pairs += 1;
            }
        }
    }
    loss / f64::from(pairs.max(1))
}

impl Stage for SelfDistillationStage<'_> {
    fn name(&self) -> &'static str {
        "dino"
    }

    fn stores(&self) -> Vec<(&'static str, &nn::VarStore)> {
        vec![
            ("student", &self.student.vs),
            ("teacher", &self.teacher.vs),
            ("center", &self.center_vs),
        ]
    }

    fn optimizers(&mut self) -> Vec<(&'static str, &mut AdamW)> {
        vec![("student", &mut self.opt)]
    }

    fn step(&mut self, step: usize, lr_scale: f64) -> Result<Vec<(&'static str, f64)>> {
        let s = &self.settings;
        let idx = self.pool.draw(STREAM, step, s.batch);
        let images = self.pool.images(&idx).to_device(self.device);
        let views = [augment(&images), augment(&images)];
        let teacher_out: Vec<Tensor> = tch::no_grad(|| {
            views
                .iter()
                .map(|v| self.teacher.forward(v))
                .collect::<Result<_>>()
        })?;
        let student_out: Vec<Tensor> = views
            .iter()
            .map(|v| self.student.forward(v))
            .collect::<Result<_>>()?;
        let loss = dino_loss(
            &teacher_out,
            &student_out,
            &self.center,
            s.teacher_temperature,
            s.student_temperature,
        );
        self.opt.lr = s.lr * lr_scale;
        self.opt.zero_grad();
        loss.backward();
        self.opt.step();
        // EMA teacher with DINO's cosine momentum schedule, and the centre's running mean.
        let progress = step as f64 / self.steps.max(1) as f64;
        let m = 1.0 - (1.0 - s.momentum) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        let batch_center =
            Tensor::cat(&teacher_out, 0).mean_dim([0i64].as_slice(), true, Kind::Float);
        tch::no_grad(|| {
            let student = self.student.vs.variables();
            for (name, mut t) in self.teacher.vs.variables() {
                let _ = t.g_mul_scalar_(m).g_add_(&(&student[&name] * (1.0 - m)));
            }
            let mut c = self.center.shallow_clone();
            let _ = c
                .g_mul_scalar_(CENTER_MOMENTUM)
                .g_add_(&(batch_center * (1.0 - CENTER_MOMENTUM)));
        });
        // How peaked the teacher is: the entropy of its mean prediction should stay high
        // (no collapse onto one prototype).
        let mean_target = ((&teacher_out[0] - &self.center) / s.teacher_temperature)
            .softmax(-1, Kind::Float)
            .mean_dim([0i64].as_slice(), false, Kind::Float);
        let entropy = -(&mean_target * mean_target.clamp_min(1e-12).log()).sum(Kind::Float);
        Ok(vec![
            ("loss", loss.double_value(&[])),
            ("entropy", entropy.double_value(&[])),
            ("momentum", m),
        ])
    }
}

/// Writes the teacher's ViT (without the head) as a transformers `ViTModel` folder.
pub fn write_folder(stage: &SelfDistillationStage, config_text: &str, dir: &Path) -> Result<()> {
    let config: serde_json::Value = serde_json::from_str(config_text)?;
    super::write_component(dir, &config, stage.teacher_store(), "model", |name| {
        !name.starts_with("head.")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_stay_images_of_the_same_size_and_range() {
        tch::manual_seed(3);
        let images = Tensor::rand([4, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let views = augment(&images);
        assert_eq!(views.size(), images.size());
        assert!(views.min().double_value(&[]) >= -1.0);
        assert!(views.max().double_value(&[]) <= 1.0);
        // Views differ from the input and from each other.
        assert!((&views - &images).abs().mean(Kind::Float).double_value(&[]) > 1e-3);
        assert!(
            (&views - augment(&images))
                .abs()
                .mean(Kind::Float)
                .double_value(&[])
                > 1e-3
        );
    }

    /// Two views, one image, two prototypes, worked by hand.
    #[test]
    fn the_loss_is_dinos_cross_view_cross_entropy() {
        let t = [
            Tensor::from_slice(&[0.2f32, 0.0]).view([1, 2]),
            Tensor::from_slice(&[0.0f32, 0.1]).view([1, 2]),
        ];
        let s = [
            Tensor::from_slice(&[0.3f32, -0.1]).view([1, 2]),
            Tensor::from_slice(&[-0.2f32, 0.4]).view([1, 2]),
        ];
        let center = Tensor::from_slice(&[0.05f32, 0.05]).view([1, 2]);
        let (tt, ts) = (0.04, 0.1);
        let softmax = |x: [f64; 2]| {
            let z = x[0].exp() + x[1].exp();
            [x[0].exp() / z, x[1].exp() / z]
        };
        let ce = |p: [f64; 2], logits: [f64; 2]| {
            let q = softmax(logits);
            -(p[0] * q[0].ln() + p[1] * q[1].ln())
        };
        let p0 = softmax([(0.2 - 0.05) / tt, (0.0 - 0.05) / tt]);
        let p1 = softmax([(0.0 - 0.05) / tt, (0.1 - 0.05) / tt]);
        let want = (ce(p0, [-0.2 / ts, 0.4 / ts]) + ce(p1, [0.3 / ts, -0.1 / ts])) / 2.0;
        let got = dino_loss(&t, &s, &center, tt, ts).double_value(&[]);
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    /// A crop of the whole image with no flip and unit jitter is the image: the grid maps
    /// output pixel centres onto input pixel centres.
    #[test]
    fn the_full_crop_grid_is_the_identity() {
        let images = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let theta = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0])
            .view([1, 2, 3])
            .repeat([2, 1, 1]);
        let grid = Tensor::affine_grid_generator(&theta, [2, 3, 8, 8], false);
        let out = images.grid_sampler(&grid, 0, 1, false);
        assert!((out - images).abs().max().double_value(&[]) < 1e-5);
    }
}
