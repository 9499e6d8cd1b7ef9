//! transformers' `CLIPTextModel` (models/clip/modeling_clip.py): the shared text encoder. Its
//! output for SD is `last_hidden_state`, after the final LayerNorm (SD 2.x checkpoints already
//! drop OpenCLIP's last layer: 23 layers).

use anyhow::Result;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::clip_encoder::{Activation, ClipEncoder, ClipEncoderConfig};
use super::{layer_norm, linear};

pub use runtime::model_config::ClipTextConfig;

/// The encoder stack's sizes in a text config.
fn encoder_config(config: &ClipTextConfig) -> Result<ClipEncoderConfig> {
    Ok(ClipEncoderConfig {
        hidden: config.hidden_size,
        intermediate: config.intermediate_size,
        heads: config.num_attention_heads,
        layers: config.num_hidden_layers,
        eps: config.layer_norm_eps,
        activation: Activation::from_config(&config.hidden_act)?,
    })
}

/// The CLIP text transformer.
#[derive(Debug)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    /// Token embeddings of the checkpoint's vocabulary (frozen).
    pub token_embedding: nn::Embedding,
    /// Rows of added tokens (`<new1>`, ...), appended after the vocabulary: the only part of the
    /// text encoder EchoDistill trains.
    added_rows: Option<Tensor>,
    position_embedding: nn::Embedding,
    encoder: ClipEncoder,
    final_layer_norm: nn::LayerNorm,
}

impl ClipTextModel {
    /// Builds the variables under `p` (the store's root for a `text_encoder/` folder).
    pub fn new(p: &nn::Path, config: ClipTextConfig) -> Result<Self> {
        let t = p / "text_model";
        let emb = &t / "embeddings";
        let embedding =
            |name: &str, n| nn::embedding(&emb / name, n, config.hidden_size, Default::default());
        Ok(Self {
            token_embedding: embedding("token_embedding", config.vocab_size),
            added_rows: None,
            position_embedding: embedding("position_embedding", config.max_position_embeddings),
            encoder: ClipEncoder::new(&t / "encoder", encoder_config(&config)?)?,
            final_layer_norm: layer_norm(
                &t / "final_layer_norm",
                config.hidden_size,
                config.layer_norm_eps,
            ),
            config,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Appends `rows` (added tokens × hidden) after the vocabulary: ids `vocab_size..` look them
    /// up. The tensor is used as given, so a trainable variable stays trainable.
    pub fn set_added_rows(&mut self, rows: Option<Tensor>) {
        self.added_rows = rows;
    }

    /// The added rows, if any.
    pub fn added_rows(&self) -> Option<&Tensor> {
        self.added_rows.as_ref()
    }

    /// Number of ids the model embeds: the vocabulary plus added rows.
    pub fn num_ids(&self) -> i64 {
        self.config.vocab_size + self.added_rows.as_ref().map_or(0, |r| r.size()[0])
    }

    /// `last_hidden_state` for `input_ids` (batch, tokens) of kind Int64.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        let n = input_ids.size()[1];
        let positions = Tensor::arange(n, (Kind::Int64, input_ids.device())).unsqueeze(0);
        let tokens = match &self.added_rows {
            Some(rows) => {
                let table = Tensor::cat(
                    &[
                        &self.token_embedding.ws,
                        &rows.to_kind(self.token_embedding.ws.kind()),
                    ],
                    0,
                );
                Tensor::embedding(&table, input_ids, -1, false, false)
            }
            None => self.token_embedding.forward(input_ids),
        };
        let x = tokens + self.position_embedding.forward(&positions);
        // CLIP's text tower is causal; SD pipelines pass no padding mask.
        self.final_layer_norm
            .forward(&self.encoder.forward(&x, true))
    }

    /// The pooled output: the hidden state at each row's end token. transformers takes the
    /// argmax of the ids when `eos_token_id` is 2 (old configs, where the end token had the
    /// largest id) and otherwise the first position holding `eos_token_id`.
    pub fn pooled(&self, input_ids: &Tensor, last_hidden_state: &Tensor) -> Tensor {
        let positions = if self.config.eos_token_id == 2 {
            input_ids.argmax(-1, false)
        } else {
            input_ids
                .eq(self.config.eos_token_id)
                .to_kind(Kind::Int)
                .argmax(-1, false)
        };
        let rows = Tensor::arange(input_ids.size()[0], (Kind::Int64, input_ids.device()));
        last_hidden_state.index(&[Some(rows), Some(positions)])
    }
}

/// transformers' `CLIPTextModelWithProjection`: the text tower plus `text_projection`, whose
/// output (`text_embeds`) is what CLIP-T compares with image embeddings.
#[derive(Debug)]
pub struct ClipTextModelWithProjection {
    /// The text tower.
    pub text: ClipTextModel,
    text_projection: nn::Linear,
}

impl ClipTextModelWithProjection {
    /// Builds the variables under `p` (the store's root).
    pub fn new(p: nn::Path, config: ClipTextConfig) -> Result<Self> {
        let projection = config.projection_dim;
        let hidden = config.hidden_size;
        Ok(Self {
            text: ClipTextModel::new(&p, config)?,
            text_projection: linear(&p / "text_projection", hidden, projection, false),
        })
    }

    /// `text_embeds` (batch, projection_dim), not normalized.
    pub fn text_embeds(&self, input_ids: &Tensor) -> Tensor {
        let hidden = self.text.forward(input_ids);
        self.text_projection
            .forward(&self.text.pooled(input_ids, &hidden))
    }
}
