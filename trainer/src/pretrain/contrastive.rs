//! Stage 2: the toy CLIP, the evaluation's CLIP-T and CLIP-I network. Text and image towers
//! (transformers' `CLIPModel` layout) trained with CLIP's symmetric contrastive loss and learned
//! temperature on the pre-training captions. Partial captions repeat within a batch ("a red
//! circle" twice), so the targets spread evenly over every item with the same caption instead
//! of calling identical captions negatives.

use std::path::Path;

use anyhow::Result;
use runtime::ClipTokenizer;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use super::pool::Pool;
use super::stage::Stage;
use crate::fit::config::Adam;
use crate::fit::optim::AdamW;
use crate::models::clip_text::{ClipTextConfig, ClipTextModelWithProjection};
use crate::models::clip_vision::{ClipVisionConfig, ClipVisionModelWithProjection};
use crate::sampling::token_ids;
use crate::towers::clip_input;
use crate::vision::prepare;

/// The contrastive stage's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContrastiveSettings {
    /// Steps.
    pub steps: usize,
    /// Pairs per step (the negatives of each pair).
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
}

impl Default for ContrastiveSettings {
    fn default() -> Self {
        Self {
            steps: 2400,
            batch: 128,
            lr: 5e-4,
        }
    }
}

/// The stage's key for batch draws.
pub const STREAM: u64 = 2;
/// CLIP caps the learned temperature at 100.
const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092;

/// The toy CLIP's two towers, built from a `CLIPModel` config.
pub struct ToyClip {
    /// Both towers and `logit_scale`, named as transformers names them.
    pub vs: nn::VarStore,
    /// The image tower.
    pub vision: ClipVisionModelWithProjection,
    /// The text tower.
    pub text: ClipTextModelWithProjection,
    /// log of the inverse temperature.
    pub logit_scale: Tensor,
}

impl ToyClip {
    /// Fresh towers from the `CLIPModel` config JSON.
    pub fn new(config: &serde_json::Value, device: Device) -> Result<Self> {
        let part = |key: &str| {
            let mut v = config[key].clone();
            v["projection_dim"] = config["projection_dim"].clone();
            v
        };
        let vision_cfg: ClipVisionConfig = serde_json::from_value(part("vision_config"))?;
        let text_cfg: ClipTextConfig = serde_json::from_value(part("text_config"))?;
        let vs = nn::VarStore::new(device);
        let vision = ClipVisionModelWithProjection::new(vs.root(), vision_cfg)?;
        let text = ClipTextModelWithProjection::new(vs.root(), text_cfg)?;
        let init = config["logit_scale_init_value"].as_f64().unwrap_or(2.6592);
        let logit_scale = vs.root().var("logit_scale", &[], nn::Init::Const(init));
        super::init_embeddings(&vs);
        Ok(Self {
            vs,
            vision,
            text,
            logit_scale,
        })
    }

    /// Unit image embeddings of images in [-1, 1].
    pub fn image_embeds(&self, images: &Tensor) -> Result<Tensor> {
        let input = clip_input(self.vision.image_size(), true);
        Ok(unit(
            &self.vision.forward(&prepare(images, input))?.image_embeds,
        ))
    }

    /// Unit text embeddings of `texts`.
    pub fn text_embeds(&self, tokenizer: &ClipTokenizer, texts: &[String]) -> Tensor {
        let ids = token_ids(tokenizer, texts, self.logit_scale.device());
        unit(&self.text.text_embeds(&ids))
    }
}

/// Rows scaled to unit length.
pub fn unit(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    &x / x
        .square()
        .sum_dim_intlist(-1, true, Kind::Float)
        .sqrt()
        .clamp_min(1e-12)
}

/// The CLIP being trained.
pub struct ContrastiveStage<'a> {
    pool: &'a Pool,
    tokenizer: &'a ClipTokenizer,
    settings: ContrastiveSettings,
    device: Device,
    /// The towers.
    pub clip: ToyClip,
    opt: AdamW,
}

impl<'a> ContrastiveStage<'a> {
    /// Fresh towers from the `CLIPModel` config JSON.
    pub fn new(
        pool: &'a Pool,
        tokenizer: &'a ClipTokenizer,
        config: &serde_json::Value,
        settings: ContrastiveSettings,
        device: Device,
    ) -> Result<Self> {
        let clip = ToyClip::new(config, device)?;
        let opt = AdamW::new(
            &clip.vs,
            settings.lr,
            &Adam {
                weight_decay: 0.1,
                beta2: 0.98,
                eps: 1e-6,
                ..Adam::default()
            },
        );
        Ok(Self {
            pool,
            tokenizer,
            settings,
            device,
            clip,
            opt,
        })
    }
}

/// Soft targets: row i spreads evenly over the items whose caption equals caption i.
fn targets(captions: &[String]) -> Tensor {
    let n = captions.len();
    let mut same = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            if captions[i] == captions[j] {
                same[i * n + j] = 1.0;
            }
        }
    }
    let same = Tensor::from_slice(&same).view([n as i64, n as i64]);
    &same / same.sum_dim_intlist(1, true, Kind::Float)
}

/// The symmetric contrastive loss and the image→text top-1 accuracy of one batch.
pub fn contrastive_loss(
    image: &Tensor,
    text: &Tensor,
    logit_scale: &Tensor,
    captions: &[String],
) -> (Tensor, f64) {
    let logits = image.mm(&text.tr()) * logit_scale.clamp_max(MAX_LOGIT_SCALE).exp();
    let target = targets(captions).to_device(logits.device());
    let ce = |l: &Tensor| {
        -(&target * l.log_softmax(1, Kind::Float)).sum(Kind::Float) / captions.len() as f64
    };
    let loss = (ce(&logits) + ce(&logits.tr())) * 0.5;
    let hits = target
        .gather(1, &logits.argmax(1, true), false)
        .gt(0.0)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    (loss, hits)
}

impl Stage for ContrastiveStage<'_> {
    fn name(&self) -> &'static str {
        "clip"
    }

    fn stores(&self) -> Vec<(&'static str, &nn::VarStore)> {
        vec![("clip", &self.clip.vs)]
    }

    fn optimizers(&mut self) -> Vec<(&'static str, &mut AdamW)> {
        vec![("clip", &mut self.opt)]
    }

    fn step(&mut self, step: usize, lr_scale: f64) -> Result<Vec<(&'static str, f64)>> {
        let idx = self.pool.draw(STREAM, step, self.settings.batch);
        let images = self.pool.images(&idx).to_device(self.device);
        let captions = self.pool.captions(&idx, 0.0, step);
        let image = self.clip.image_embeds(&images)?;
        let text = self.clip.text_embeds(self.tokenizer, &captions);
        let (loss, accuracy) = contrastive_loss(&image, &text, &self.clip.logit_scale, &captions);
        self.opt.lr = self.settings.lr * lr_scale;
        self.opt.zero_grad();
        loss.backward();
        self.opt.step();
        Ok(vec![
            ("loss", loss.double_value(&[])),
            ("top1", accuracy),
            ("scale", self.clip.logit_scale.exp().double_value(&[])),
        ])
    }
}

/// Writes the towers as a transformers `CLIPModel` folder with the tokenizer's files.
pub fn write_folder(
    clip: &ToyClip,
    config: &serde_json::Value,
    tokenizer: &ClipTokenizer,
    dir: &Path,
) -> Result<()> {
    super::write_component_with(
        dir,
        config,
        &clip.vs,
        "model",
        |_| true,
        |tmp| Ok(tokenizer.save_dir(tmp)?),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_captions_share_their_targets() {
        let captions: Vec<String> = ["a", "b", "a"].iter().map(|s| s.to_string()).collect();
        let t = targets(&captions);
        let row0: Vec<f32> = Vec::try_from(t.get(0)).unwrap();
        assert_eq!(row0, [0.5, 0.0, 0.5]);
        let row1: Vec<f32> = Vec::try_from(t.get(1)).unwrap();
        assert_eq!(row1, [0.0, 1.0, 0.0]);
    }

    /// With distinct captions the loss is CLIP's: mean cross-entropy both ways over the
    /// diagonal, computed here by hand for two pairs.
    #[test]
    fn the_loss_is_clips_symmetric_cross_entropy() {
        let image = Tensor::from_slice(&[1.0f32, 0.0, 0.6, 0.8]).view([2, 2]);
        let text = Tensor::from_slice(&[0.8f32, 0.6, 0.0, 1.0]).view([2, 2]);
        let captions: Vec<String> = vec!["x".into(), "y".into()];
        let scale = Tensor::from(0.0f32); // temperature 1
        let (loss, top1) = contrastive_loss(&image, &text, &scale, &captions);
        // logits = image·textᵀ = [[0.8, 0.0], [0.96, 0.8]].
        let l = [[0.8f64, 0.0], [0.96, 0.8]];
        let ce = |row: [f64; 2], k: usize| -(row[k] - (row[0].exp() + row[1].exp()).ln());
        let by_image = (ce(l[0], 0) + ce(l[1], 1)) / 2.0;
        let by_text = (ce([l[0][0], l[1][0]], 0) + ce([l[0][1], l[1][1]], 1)) / 2.0;
        let want = (by_image + by_text) / 2.0;
        assert!((loss.double_value(&[]) - want).abs() < 1e-6);
        // Image 1 scores text 0 higher (0.96 > 0.8): one of two right.
        assert!((top1 - 0.5).abs() < 1e-12);
    }
}
