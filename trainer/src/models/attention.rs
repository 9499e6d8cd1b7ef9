//! diffusers' `Attention` (the `AttnProcessor2_0` path), `FeedForward` with GEGLU, and
//! `BasicTransformerBlock` (models/attention.py, models/attention_processor.py).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::lora::LoraSlots;
use super::{layer_norm, linear};

/// Multi-head attention: `to_q`, `to_k`, `to_v` (bias optional), `to_out.0`.
#[derive(Debug)]
pub struct Attention {
    to_q: nn::Linear,
    /// Key projection; cross-attention's `attn2.to_k` is what EchoDistill trains.
    pub to_k: nn::Linear,
    /// Value projection; cross-attention's `attn2.to_v` is what EchoDistill trains.
    pub to_v: nn::Linear,
    to_out: nn::Linear,
    /// Low-rank adapters beside the projections (LoRA); none unless attached.
    pub lora: LoraSlots,
    heads: i64,
    upcast: bool,
}

/// The sizes of an [`Attention`].
#[derive(Debug, Clone, Copy)]
pub struct AttentionConfig {
    /// Width of the queries (and the output).
    pub query_dim: i64,
    /// Width of the keys and values' source; `None` for self-attention.
    pub context_dim: Option<i64>,
    /// Number of heads.
    pub heads: i64,
    /// Width of one head.
    pub dim_head: i64,
    /// Whether q/k/v have biases (the VAE's do, the UNet's do not).
    pub qkv_bias: bool,
    /// Compute attention in f32 even for f16/bf16 weights (SD 2.1's `upcast_attention`).
    pub upcast: bool,
}

impl Attention {
    /// The projection named `name` (`to_q`, `to_k`, `to_v` or `to_out.0`).
    pub fn projection(&self, name: &str) -> Option<&nn::Linear> {
        match name {
            "to_q" => Some(&self.to_q),
            "to_k" => Some(&self.to_k),
            "to_v" => Some(&self.to_v),
            "to_out.0" => Some(&self.to_out),
            _ => None,
        }
    }

    /// Builds the projections under `p`.
    pub fn new(p: nn::Path, c: AttentionConfig) -> Self {
        let inner = c.heads * c.dim_head;
        let context = c.context_dim.unwrap_or(c.query_dim);
        Self {
            to_q: linear(&p / "to_q", c.query_dim, inner, c.qkv_bias),
            to_k: linear(&p / "to_k", context, inner, c.qkv_bias),
            to_v: linear(&p / "to_v", context, inner, c.qkv_bias),
            to_out: linear(&p / "to_out" / 0, inner, c.query_dim, true),
            lora: LoraSlots::default(),
            heads: c.heads,
            upcast: c.upcast,
        }
    }

    /// `x`: (batch, tokens, query_dim); `context`: (batch, tokens', context_dim) or `None`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let context = context.unwrap_or(x);
        let (b, n, _) = x.size3().expect("attention input is (batch, tokens, dim)");
        let split = |t: Tensor| {
            let m = t.size()[1];
            t.view([b, m, self.heads, -1]).transpose(1, 2)
        };
        let l = &self.lora;
        let (q, k, v) = (
            split(LoraSlots::add(&l.to_q, self.to_q.forward(x), x)),
            split(LoraSlots::add(
                &l.to_k,
                project(&self.to_k, context),
                context,
            )),
            split(LoraSlots::add(
                &l.to_v,
                project(&self.to_v, context),
                context,
            )),
        );
        let kind = q.kind();
        let out = if self.upcast && kind != Kind::Float {
            Tensor::scaled_dot_product_attention::<Tensor>(
                &q.to_kind(Kind::Float),
                &k.to_kind(Kind::Float),
                &v.to_kind(Kind::Float),
                None,
                0.0,
                false,
                None,
                false,
            )
            .to_kind(kind)
        } else {
            Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, false, None, false,
            )
        };
        let out = out.transpose(1, 2).reshape([b, n, -1]);
        LoraSlots::add(&l.to_out, self.to_out.forward(&out), &out)
    }
}

/// A bias-free projection whose weight may be kept in another precision than the activations
/// (trained K/V weights stay f32 while a half-precision UNet runs around them).
fn project(layer: &nn::Linear, x: &Tensor) -> Tensor {
    if layer.ws.kind() == x.kind() {
        layer.forward(x)
    } else {
        let bias = layer.bs.as_ref().map(|b| b.to_kind(x.kind()));
        x.linear(&layer.ws.to_kind(x.kind()), bias.as_ref())
    }
}

/// `FeedForward` with a GEGLU input projection (`net.0.proj`) and `net.2` output.
#[derive(Debug)]
pub struct FeedForward {
    proj: nn::Linear,
    out: nn::Linear,
}

impl FeedForward {
    /// Inner width is 4 × `dim`, as in diffusers' default `mult=4`.
    pub fn new(p: nn::Path, dim: i64) -> Self {
        let inner = dim * 4;
        Self {
            proj: linear(&p / "net" / 0 / "proj", dim, inner * 2, true),
            out: linear(&p / "net" / 2, inner, dim, true),
        }
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.proj.forward(x).chunk(2, -1);
        self.out.forward(&(&h[0] * h[1].gelu("none")))
    }
}

/// Self-attention, cross-attention and feed-forward, each after a LayerNorm, with residuals.
#[derive(Debug)]
pub struct BasicTransformerBlock {
    norm1: nn::LayerNorm,
    /// Self-attention.
    pub attn1: Attention,
    norm2: nn::LayerNorm,
    /// Cross-attention to the text embeddings.
    pub attn2: Attention,
    norm3: nn::LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    /// `dim` = heads × dim_head; `context_dim` is the text encoder's width.
    pub fn new(
        p: nn::Path,
        dim: i64,
        heads: i64,
        dim_head: i64,
        context_dim: i64,
        upcast: bool,
    ) -> Self {
        let attention = |name: &str, context_dim| {
            Attention::new(
                &p / name,
                AttentionConfig {
                    query_dim: dim,
                    context_dim,
                    heads,
                    dim_head,
                    qkv_bias: false,
                    upcast,
                },
            )
        };
        Self {
            norm1: layer_norm(&p / "norm1", dim, 1e-5),
            attn1: attention("attn1", None),
            norm2: layer_norm(&p / "norm2", dim, 1e-5),
            attn2: attention("attn2", Some(context_dim)),
            norm3: layer_norm(&p / "norm3", dim, 1e-5),
            ff: FeedForward::new(&p / "ff", dim),
        }
    }

    /// `x`: (batch, tokens, dim); `context`: (batch, 77, context_dim).
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let x = self.attn1.forward(&self.norm1.forward(x), None) + x;
        let x = self.attn2.forward(&self.norm2.forward(&x), Some(context)) + &x;
        self.ff.forward(&self.norm3.forward(&x)) + &x
    }
}
