//! DreamBench's metrics (SPEC §8): CLIP-T, the cosine of a generated image's CLIP embedding with
//! the prompt's text embedding (the prompt WITHOUT the modifier token); CLIP-I, the mean cosine
//! of the image's CLIP embedding with each reference photo's; DINO, the same with the DINO CLS
//! feature. Both backbones are selectable: the paper's CLIP ViT-B/32-style and DINO ViT-S/16,
//! or the authors' code's CLIP ViT-L/14@336 and DINOv2 ViT-L/14.
//!
//! Preprocessing follows the backbones' own image processors: the short side resized to the
//! input size with bicubic filtering, a centre crop, then the tower's mean/std.

use std::path::Path;

use anyhow::{Context, Result};
use image::{imageops::FilterType, DynamicImage, RgbImage};
use runtime::ClipTokenizer;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{LoadOptions, Loaded};
use crate::models::clip_text::ClipTextModelWithProjection;
use crate::models::clip_vision::ClipVisionModelWithProjection;
use crate::models::dinov2::Dinov2Model;
use crate::models::vit::VitModel;
use crate::sampling::token_ids;
use crate::towers::{clip_input, dino_input, load_clip_model, load_dino_v1, load_dino_v2};
use crate::vision::{prepare, TowerInput};

/// The DINO backbone: DINOv1 (ViT) or DINOv2.
pub enum Dino {
    /// `facebook/dino-vits16` layout.
    V1(Loaded<VitModel>),
    /// `facebook/dinov2-*` layout.
    V2(Loaded<Dinov2Model>),
}

/// Images per forward pass (bounds memory for large backbones).
const CHUNK: usize = 16;

/// The metric backbones, loaded.
pub struct MetricTowers {
    clip_vision: Loaded<ClipVisionModelWithProjection>,
    clip_text: Loaded<ClipTextModelWithProjection>,
    clip_tokenizer: ClipTokenizer,
    dino: Dino,
    dino_size: i64,
    device: Device,
    kind: Kind,
    /// Names of the backbones, for the report (the folders' names).
    pub names: (String, String),
}

/// A short name of a model folder for reports.
fn folder_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// The short side resized to `size` (bicubic), centre-cropped to `size`², as (3, size, size)
/// in [-1, 1].
pub fn to_tower_pixels(image: &RgbImage, size: u32) -> Tensor {
    // DynamicImage's own method: scale to cover size², then crop the centre.
    let fitted = DynamicImage::ImageRgb8(image.clone())
        .resize_to_fill(size, size, FilterType::CatmullRom)
        .to_rgb8();
    let data: Vec<f32> = fitted.into_raw().iter().map(|&v| f32::from(v)).collect();
    Tensor::from_slice(&data)
        .view([i64::from(size), i64::from(size), 3])
        .permute([2, 0, 1])
        / 127.5
        - 1.0
}

/// Rows scaled to unit length.
pub fn normalized(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    let norm = x
        .norm_scalaropt_dim(2, [-1].as_slice(), true)
        .clamp_min(1e-12);
    x / norm
}

impl MetricTowers {
    /// Loads a CLIPModel folder and a DINO folder (DINOv1 `vit` or `dinov2`, by its
    /// config's `model_type`). `dino_size` overrides the DINO input side (default: its config's
    /// `image_size`).
    pub fn load(
        clip: &Path,
        dino: &Path,
        dino_size: Option<i64>,
        opts: LoadOptions,
    ) -> Result<Self> {
        let (clip_vision, clip_text, clip_tokenizer) = load_clip_model(clip, opts)?;
        let config_path = dino.join("config.json");
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("cannot read {}", config_path.display()))?,
        )
        .with_context(|| format!("{}: not valid JSON", config_path.display()))?;
        let (dino_model, default_size) = match config["model_type"].as_str() {
            Some("dinov2") => {
                let m = load_dino_v2(dino, opts)?;
                // DINOv2's processor crops to 224 whatever the training size.
                (Dino::V2(m), 224)
            }
            Some("vit") | None => {
                let m = load_dino_v1(dino, opts)?;
                let size = m.model.image_size();
                (Dino::V1(m), size)
            }
            Some(other) => anyhow::bail!(
                "{}: model_type {other:?} is not a DINO backbone (vit for DINOv1, dinov2)",
                config_path.display()
            ),
        };
        Ok(Self {
            clip_vision,
            clip_text,
            clip_tokenizer,
            dino: dino_model,
            dino_size: dino_size.unwrap_or(default_size),
            device: opts.device,
            kind: opts.kind,
            names: (folder_name(clip), folder_name(dino)),
        })
    }

    fn batches(
        &self,
        images: &[RgbImage],
        input: TowerInput,
        run: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut out = Vec::new();
        for chunk in images.chunks(CHUNK) {
            let pixels: Vec<Tensor> = chunk
                .iter()
                .map(|i| to_tower_pixels(i, input.size as u32))
                .collect();
            let batch = prepare(&Tensor::stack(&pixels, 0).to_device(self.device), input)
                .to_kind(self.kind);
            out.push(normalized(&tch::no_grad(|| run(&batch))?).to_device(Device::Cpu));
        }
        Ok(Tensor::cat(&out, 0))
    }

    /// Unit CLIP image embeddings (n, d).
    pub fn clip_images(&self, images: &[RgbImage]) -> Result<Tensor> {
        let model = &self.clip_vision.model;
        let input = clip_input(model.image_size(), true);
        self.batches(images, input, |x| Ok(model.forward(x)?.image_embeds))
    }

    /// Unit CLIP text embeddings (n, d).
    pub fn clip_texts(&self, texts: &[String]) -> Result<Tensor> {
        let ids = token_ids(&self.clip_tokenizer, texts, self.device);
        let embeds = tch::no_grad(|| self.clip_text.model.text_embeds(&ids));
        Ok(normalized(&embeds).to_device(Device::Cpu))
    }

    /// Unit DINO CLS features (n, d).
    pub fn dino_images(&self, images: &[RgbImage]) -> Result<Tensor> {
        let input = dino_input(self.dino_size, true);
        self.batches(images, input, |x| {
            let hidden = match &self.dino {
                Dino::V1(m) => m.model.forward(x)?,
                Dino::V2(m) => m.model.forward(x)?,
            };
            Ok(hidden.select(1, 0))
        })
    }

    /// The reference photos' embeddings.
    pub fn references(&self, images: &[RgbImage]) -> Result<References> {
        Ok(References {
            clip: self.clip_images(images)?,
            dino: self.dino_images(images)?,
        })
    }

    /// Scores generated `images`, each with the CLIP-T text of its prompt, against `refs`.
    pub fn score(
        &self,
        images: &[RgbImage],
        clip_texts: &[String],
        refs: &References,
    ) -> Result<Vec<ImageScore>> {
        anyhow::ensure!(images.len() == clip_texts.len(), "one prompt per image");
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let clip = self.clip_images(images)?;
        let dino = self.dino_images(images)?;
        let text = self.clip_texts(clip_texts)?;
        Ok(scores(&clip, &dino, &text, refs))
    }
}

/// Unit embeddings of a subject's reference photos.
pub struct References {
    /// CLIP image embeddings (r, d).
    pub clip: Tensor,
    /// DINO CLS features (r, d).
    pub dino: Tensor,
}

/// One generated image's scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImageScore {
    /// Cosine with the prompt (without the modifier token).
    pub clip_t: f64,
    /// Mean cosine with the references' CLIP embeddings.
    pub clip_i: f64,
    /// Mean cosine with the references' DINO features.
    pub dino: f64,
    /// CLIP-self, a diagnostic outside the paper's protocol: the mean cosine of the image's
    /// CLIP embedding with those of the other images scored with it (one subject, one step
    /// count: every prompt and seed). Near 1 when a model gives the same picture whatever the
    /// prompt (a collapsed student), which CLIP-I and DINO can still reward. Absent for a lone
    /// image and in scores written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_self: Option<f64>,
}

/// The scores of images from their unit embeddings: `clip`, `dino` (n, d) and their prompts'
/// `text` (n, d) against the references; CLIP-self among the `n` images.
pub fn scores(clip: &Tensor, dino: &Tensor, text: &Tensor, refs: &References) -> Vec<ImageScore> {
    let clip_t = (clip * text).sum_dim_intlist([-1].as_slice(), false, Kind::Float);
    let clip_i = clip
        .matmul(&refs.clip.tr())
        .mean_dim([-1].as_slice(), false, Kind::Float);
    let dino_i = dino
        .matmul(&refs.dino.tr())
        .mean_dim([-1].as_slice(), false, Kind::Float);
    // Row sums of the Gram matrix less its diagonal, over the n - 1 others.
    let n = clip.size()[0];
    let gram = clip.matmul(&clip.tr());
    let others = (gram.sum_dim_intlist([-1].as_slice(), false, Kind::Float)
        - gram.diagonal(0, 0, 1))
        / (n - 1).max(1) as f64;
    let v = |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap_or_default();
    let (t, i, d, o) = (v(&clip_t), v(&clip_i), v(&dino_i), v(&others));
    (0..t.len())
        .map(|k| ImageScore {
            clip_t: t[k],
            clip_i: i[k],
            dino: d[k],
            clip_self: (n > 1).then_some(o[k]),
        })
        .collect()
}

/// A mean with its standard error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// The mean.
    pub mean: f64,
    /// The standard error of the mean (sample standard deviation / √n; 0 for one value).
    pub se: f64,
    /// How many values.
    pub n: usize,
}

impl Stat {
    /// The mean and standard error of `values` (NaN mean for none).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self {
                mean: f64::NAN,
                se: f64::NAN,
                n,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let se = if n > 1 {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (var / n as f64).sqrt()
        } else {
            0.0
        };
        Self { mean, se, n }
    }

    /// The statistic of the union of the groups that `parts` describe, exactly as [`Stat::of`]
    /// would give it on all their values (up to rounding): each part's sum of squared
    /// deviations is recovered from its standard error, then the between-group spread is
    /// added. This is how tables of disjoint subjects, scored in separate runs, are merged.
    pub fn pool(parts: &[Stat]) -> Self {
        let parts: Vec<&Stat> = parts.iter().filter(|p| p.n > 0).collect();
        let n: usize = parts.iter().map(|p| p.n).sum();
        if n == 0 {
            return Self::of(&[]);
        }
        let mean = parts.iter().map(|p| p.mean * p.n as f64).sum::<f64>() / n as f64;
        if n == 1 {
            return Self { mean, se: 0.0, n };
        }
        let squares: f64 = parts
            .iter()
            .map(|p| {
                // se² = s² / n with s² = within / (n - 1).
                let within = p.se * p.se * p.n as f64 * p.n.saturating_sub(1) as f64;
                within + p.n as f64 * (p.mean - mean).powi(2)
            })
            .sum();
        let var = squares / (n - 1) as f64;
        Self {
            mean,
            se: (var / n as f64).sqrt(),
            n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_the_mean_and_standard_error() {
        let s = Stat::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.mean, 2.5);
        // sample variance 5/3, se = sqrt(5/3/4)
        assert!((s.se - (5.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert_eq!(Stat::of(&[0.7]).se, 0.0);
        assert!(Stat::of(&[]).mean.is_nan());
    }

    /// Pooling the statistics of disjoint groups of unequal sizes gives the statistic of all
    /// their values.
    #[test]
    fn pooled_groups_equal_the_statistic_of_all_values() {
        let values: Vec<f64> = (0..23)
            .map(|i| ((i * 37 % 11) as f64 * 0.13).sin())
            .collect();
        let groups = [&values[..1], &values[1..9], &values[9..], &values[..0]];
        let pooled = Stat::pool(&groups.map(Stat::of));
        let all = Stat::of(&values);
        assert_eq!(pooled.n, 23);
        assert!((pooled.mean - all.mean).abs() < 1e-12, "{pooled:?} {all:?}");
        assert!((pooled.se - all.se).abs() < 1e-12, "{pooled:?} {all:?}");
        assert_eq!(Stat::pool(&[Stat::of(&[0.4])]), Stat::of(&[0.4]));
        assert!(Stat::pool(&[]).mean.is_nan());
    }

    #[test]
    fn tower_pixels_crop_the_centre_of_the_short_side() {
        // A 4x2 image: left half black, right half white; the centre 2x2 crop keeps one column
        // of each.
        let img = RgbImage::from_fn(4, 2, |x, _| image::Rgb([if x < 2 { 0 } else { 255 }; 3]));
        let t = to_tower_pixels(&img, 2);
        assert_eq!(t.size(), [3, 2, 2]);
        let v = Vec::<f32>::try_from(t.get(0).flatten(0, -1)).unwrap();
        assert!(v[0] < -0.9 && v[1] > 0.9, "{v:?}");
    }

    #[test]
    fn scores_are_cosines_with_the_text_and_mean_cosines_with_references() {
        let unit = |v: &[f32], r: i64| normalized(&Tensor::from_slice(v).view([r, -1]));
        let clip = unit(&[1.0, 0.0, 0.0, 1.0], 2);
        let text = unit(&[1.0, 1.0, 0.0, 1.0], 2);
        let refs = References {
            clip: unit(&[1.0, 0.0, 0.0, 1.0], 2),
            dino: unit(&[3.0, 4.0], 1),
        };
        let dino = unit(&[1.0, 0.0, 0.0, 1.0], 2);
        let s = scores(&clip, &dino, &text, &refs);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((s[0].clip_t - h).abs() < 1e-6 && (s[1].clip_t - 1.0).abs() < 1e-6);
        assert!((s[0].clip_i - 0.5).abs() < 1e-6 && (s[1].clip_i - 0.5).abs() < 1e-6);
        assert!((s[0].dino - 0.6).abs() < 1e-6 && (s[1].dino - 0.8).abs() < 1e-6);
        // The two images' CLIP embeddings are orthogonal: CLIP-self 0 for both.
        assert!(s.iter().all(|x| x.clip_self.unwrap().abs() < 1e-6), "{s:?}");
    }

    /// CLIP-self is the mean cosine with the other images: 1 for identical images, and alone
    /// an image has none.
    #[test]
    fn clip_self_is_the_mean_cosine_with_the_other_images() {
        let unit = |v: &[f32], r: i64| normalized(&Tensor::from_slice(v).view([r, -1]));
        let refs = References {
            clip: unit(&[1.0, 0.0], 1),
            dino: unit(&[1.0, 0.0], 1),
        };
        // Images a = b = (1, 0) and c = (0.6, 0.8): a's others are b (1) and c (0.6).
        let clip = unit(&[1.0, 0.0, 1.0, 0.0, 0.6, 0.8], 3);
        let s = scores(&clip, &clip, &clip, &refs);
        let got: Vec<f64> = s.iter().map(|x| x.clip_self.unwrap()).collect();
        for (g, e) in got.iter().zip([0.8, 0.8, 0.6]) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
        let one = scores(
            &clip.narrow(0, 0, 1),
            &clip.narrow(0, 0, 1),
            &clip.narrow(0, 0, 1),
            &refs,
        );
        assert_eq!(one[0].clip_self, None);
    }
}
