//! transformers' `CLIPTextModel` (models/clip/modeling_clip.py): the shared text encoder. Its
//! output for SD is `last_hidden_state`, after the final LayerNorm (SD 2.x checkpoints already
//! drop OpenCLIP's last layer: 23 layers).

use anyhow::{bail, ensure, Result};
use serde::Deserialize;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::{layer_norm, linear};

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "quick_gelu".into()
}

/// `text_encoder/config.json` (a `CLIPTextConfig`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    /// Token embedding rows (49408, plus added tokens after training).
    pub vocab_size: i64,
    /// Width (1024 for SD 2.x, 768 for SD 1.x).
    pub hidden_size: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Layers.
    pub num_hidden_layers: i64,
    /// Attention heads.
    pub num_attention_heads: i64,
    /// Positions (77).
    pub max_position_embeddings: i64,
    /// `gelu` (OpenCLIP, SD 2.x) or `quick_gelu` (OpenAI CLIP, SD 1.x).
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

/// The MLP activation.
#[derive(Debug, Clone, Copy)]
enum Activation {
    Gelu,
    QuickGelu,
}

impl ClipTextConfig {
    /// Parses `text_encoder/config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        Ok(serde_json::from_str(text)?)
    }

    fn activation(&self) -> Result<Activation> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::Gelu),
            "quick_gelu" => Ok(Activation::QuickGelu),
            other => bail!("unsupported text encoder activation {other:?} (gelu, quick_gelu)"),
        }
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: nn::LayerNorm,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    layer_norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl EncoderLayer {
    fn new(p: nn::Path, c: &ClipTextConfig) -> Self {
        let attn = &p / "self_attn";
        let mlp = &p / "mlp";
        let h = c.hidden_size;
        Self {
            layer_norm1: layer_norm(&p / "layer_norm1", h, c.layer_norm_eps),
            q_proj: linear(&attn / "q_proj", h, h, true),
            k_proj: linear(&attn / "k_proj", h, h, true),
            v_proj: linear(&attn / "v_proj", h, h, true),
            out_proj: linear(&attn / "out_proj", h, h, true),
            layer_norm2: layer_norm(&p / "layer_norm2", h, c.layer_norm_eps),
            fc1: linear(&mlp / "fc1", h, c.intermediate_size, true),
            fc2: linear(&mlp / "fc2", c.intermediate_size, h, true),
        }
    }

    fn forward(&self, x: &Tensor, heads: i64, act: Activation) -> Tensor {
        let (b, n, h) = x.size3().expect("(batch, tokens, hidden)");
        let normed = self.layer_norm1.forward(x);
        let split = |t: Tensor| t.view([b, n, heads, h / heads]).transpose(1, 2);
        let (q, k, v) = (
            split(self.q_proj.forward(&normed)),
            split(self.k_proj.forward(&normed)),
            split(self.v_proj.forward(&normed)),
        );
        // CLIP's text tower is causal; SD pipelines pass no padding mask.
        let attn = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, true, None, false,
        );
        let x = x + self
            .out_proj
            .forward(&attn.transpose(1, 2).reshape([b, n, h]));
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&x));
        let hidden = match act {
            Activation::Gelu => hidden.gelu("none"),
            Activation::QuickGelu => &hidden * (&hidden * 1.702).sigmoid(),
        };
        &x + self.fc2.forward(&hidden)
    }
}

/// The CLIP text transformer.
#[derive(Debug)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    activation: Activation,
    /// Token embeddings; EchoDistill trains only the rows of new tokens.
    pub token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: nn::LayerNorm,
}

impl ClipTextModel {
    /// Builds the variables under `p` (the store's root for a `text_encoder/` folder).
    pub fn new(p: nn::Path, config: ClipTextConfig) -> Result<Self> {
        let activation = config.activation()?;
        ensure!(
            config.num_attention_heads > 0 && config.hidden_size % config.num_attention_heads == 0,
            "hidden_size {} does not split into {} heads",
            config.hidden_size,
            config.num_attention_heads
        );
        let t = &p / "text_model";
        let emb = &t / "embeddings";
        let embedding =
            |name: &str, n| nn::embedding(&emb / name, n, config.hidden_size, Default::default());
        Ok(Self {
            token_embedding: embedding("token_embedding", config.vocab_size),
            position_embedding: embedding("position_embedding", config.max_position_embeddings),
            layers: (0..config.num_hidden_layers)
                .map(|i| EncoderLayer::new(&t / "encoder" / "layers" / i, &config))
                .collect(),
            final_layer_norm: layer_norm(
                &t / "final_layer_norm",
                config.hidden_size,
                config.layer_norm_eps,
            ),
            activation,
            config,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// `last_hidden_state` for `input_ids` (batch, tokens) of kind Int64.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        let n = input_ids.size()[1];
        let positions = Tensor::arange(n, (Kind::Int64, input_ids.device())).unsqueeze(0);
        let mut x =
            self.token_embedding.forward(input_ids) + self.position_embedding.forward(&positions);
        for layer in &self.layers {
            x = layer.forward(&x, self.config.num_attention_heads, self.activation);
        }
        self.final_layer_norm.forward(&x)
    }
}
