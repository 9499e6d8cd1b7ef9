//! diffusers' `UNet2DConditionModel` (models/unets/unet_2d_condition.py) for SD 1.x, SD 2.x,
//! SD-Turbo and Hyper-SD 1.5: every size comes from the checkpoint's `unet/config.json`.

use anyhow::Result;
use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::Attention;
use super::embeddings::{timestep_embedding, TimestepEmbedding};
use super::transformer_2d::Transformer2D;
use super::unet_2d_blocks::{
    BlockConfig, CrossAttention, DownBlock, DownSpec, MidBlock, UpBlock, UpChannels,
};
use super::{conv2d, group_norm};

pub use runtime::model_config::{PerBlock, UNetConfig};

/// The denoising UNet.
#[derive(Debug)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    conv_in: nn::Conv2D,
    time_embedding: TimestepEmbedding,
    /// Down blocks, shallow to deep.
    pub down_blocks: Vec<DownBlock>,
    /// The mid block.
    pub mid_block: MidBlock,
    /// Up blocks, deep to shallow.
    pub up_blocks: Vec<UpBlock>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl UNet2DConditionModel {
    /// Builds the UNet's variables under `p` (the store's root for a diffusers `unet/` folder).
    pub fn new(p: nn::Path, config: UNetConfig) -> Result<Self> {
        let plan = config.plan()?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        let temb = ch[0] * 4;
        let bc = BlockConfig {
            temb,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            context_dim: plan.cross_attention_dim,
            linear_projection: config.use_linear_projection,
            upcast_attention: config.upcast_attention,
        };
        let attention = |i: usize, kind: &str| {
            kind.starts_with("CrossAttn").then_some(CrossAttention {
                heads: plan.heads[i],
                layers: plan.transformer_layers[i],
            })
        };
        let down_blocks = (0..n)
            .map(|i| {
                DownBlock::new(
                    &p / "down_blocks" / i,
                    &bc,
                    DownSpec {
                        c_in: if i == 0 { ch[0] } else { ch[i - 1] },
                        c_out: ch[i],
                        layers: plan.layers[i],
                        attention: attention(i, &config.down_block_types[i]),
                        downsample: i + 1 < n,
                        downsample_padding: config.downsample_padding,
                    },
                )
            })
            .collect();
        let mid_block = MidBlock::new(
            &p / "mid_block",
            &bc,
            ch[n - 1],
            CrossAttention {
                heads: plan.heads[n - 1],
                layers: plan.transformer_layers[n - 1],
            },
        );
        // The up path mirrors the down path: block i uses the settings of down block n-1-i.
        let up_blocks = (0..n)
            .map(|i| {
                let r = n - 1 - i;
                let channels = UpChannels {
                    prev_out: if i == 0 { ch[n - 1] } else { ch[r + 1] },
                    out: ch[r],
                    skip_in: ch[r.saturating_sub(1)],
                };
                let attn = attention(r, &config.up_block_types[i]);
                UpBlock::new(
                    &p / "up_blocks" / i,
                    &bc,
                    channels,
                    plan.layers[r] + 1,
                    attn,
                    i + 1 < n,
                )
            })
            .collect();
        Ok(Self {
            conv_in: conv2d(&p / "conv_in", config.in_channels, ch[0], 3, 1, 1),
            time_embedding: TimestepEmbedding::new(&p / "time_embedding", ch[0], temb),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(
                &p / "conv_norm_out",
                config.norm_num_groups,
                ch[0],
                config.norm_eps,
            ),
            conv_out: conv2d(&p / "conv_out", ch[0], config.out_channels, 3, 1, 1),
            config,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Every cross-attention layer (`attn2`) with its diffusers path, e.g.
    /// `["down_blocks", "0", "attentions", "0", "transformer_blocks", "0", "attn2"]`: the layers
    /// whose `to_k` / `to_v` EchoDistill trains.
    pub fn cross_attentions_mut(&mut self) -> Vec<(Vec<String>, &mut Attention)> {
        self.attentions_mut()
            .into_iter()
            .filter(|(path, _)| path.last().is_some_and(|l| l == "attn2"))
            .collect()
    }

    /// Every attention layer of the transformer blocks, self (`attn1`) and cross (`attn2`),
    /// with its diffusers path: the layers LoRA adapts.
    pub fn attentions_mut(&mut self) -> Vec<(Vec<String>, &mut Attention)> {
        fn collect<'a>(
            out: &mut Vec<(Vec<String>, &'a mut Attention)>,
            prefix: &[&str],
            ts: &'a mut [Transformer2D],
        ) {
            for (j, t) in ts.iter_mut().enumerate() {
                for (k, block) in t.blocks.iter_mut().enumerate() {
                    let mut path: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
                    path.extend([
                        "attentions".into(),
                        j.to_string(),
                        "transformer_blocks".into(),
                        k.to_string(),
                    ]);
                    let with = |name: &str| {
                        let mut p = path.clone();
                        p.push(name.into());
                        p
                    };
                    let (p1, p2) = (with("attn1"), with("attn2"));
                    out.push((p1, &mut block.attn1));
                    out.push((p2, &mut block.attn2));
                }
            }
        }
        let mut out = Vec::new();
        for (i, b) in self.down_blocks.iter_mut().enumerate() {
            collect(
                &mut out,
                &["down_blocks", &i.to_string()],
                &mut b.attentions,
            );
        }
        collect(&mut out, &["mid_block"], &mut self.mid_block.attentions);
        for (i, b) in self.up_blocks.iter_mut().enumerate() {
            collect(&mut out, &["up_blocks", &i.to_string()], &mut b.attentions);
        }
        out
    }

    /// Predicts noise (or v) for `sample` (batch, 4, h, w) at `timesteps` (batch or one value)
    /// given text embeddings `context` (batch, 77, cross_attention_dim).
    pub fn forward(&self, sample: &Tensor, timesteps: &Tensor, context: &Tensor) -> Tensor {
        let (sample, temb) = self.prepare(sample, timesteps);
        let plan = self.plan(&sample);
        let mut slots = self.run_plan(&plan, sample, &temb, context, false);
        slots[plan.output].take().expect("the UNet's output")
    }

    /// Runs every segment of `plan` from the prepared `sample` and returns the slots. With
    /// `keep_all` every boundary tensor stays (the checkpointed pass recomputes from them);
    /// otherwise each is dropped after its last reader, as a plain forward would.
    pub(crate) fn run_plan(
        &self,
        plan: &SegmentPlan,
        sample: Tensor,
        temb: &Tensor,
        context: &Tensor,
        keep_all: bool,
    ) -> Vec<Option<Tensor>> {
        let mut slots: Vec<Option<Tensor>> = (0..plan.slots).map(|_| None).collect();
        slots[0] = Some(sample);
        for (k, segment) in plan.segments.iter().enumerate() {
            let (inputs, size) = segment.read(&slots);
            let outputs = self.run_segment(segment, &inputs, temb, context, size);
            if !keep_all {
                for &id in &segment.inputs {
                    if plan.last_reader[id] == k {
                        slots[id] = None;
                    }
                }
            }
            for (&id, t) in segment.outputs.iter().zip(outputs) {
                slots[id] = Some(t);
            }
        }
        slots
    }

    /// The input after `center_input_sample` and the time embedding every block reads.
    pub(crate) fn prepare(&self, sample: &Tensor, timesteps: &Tensor) -> (Tensor, Tensor) {
        let batch = sample.size()[0];
        let sample = if self.config.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample.shallow_clone()
        };
        let timesteps = timesteps
            .to_device(sample.device())
            .reshape([-1])
            .expand([batch], false);
        let t_emb = timestep_embedding(
            &timesteps,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
        )
        .to_kind(sample.kind());
        let temb = self.time_embedding.forward(&t_emb);
        (sample, temb)
    }

    /// The forward pass as a chain of segments (conv_in, each down block, the mid block, each
    /// up block, the output head) over numbered boundary tensors: slot 0 is the (prepared)
    /// sample, the down path's skips keep their slots until the up block that reads them.
    /// [`forward`](Self::forward) and the activation-checkpointed pass
    /// ([`super::unet_checkpoint`]) both run this plan, so they run the same operations.
    pub(crate) fn plan(&self, sample: &Tensor) -> SegmentPlan {
        let mut next = 1;
        let mut fresh = |count: usize| {
            let ids: Vec<usize> = (next..next + count).collect();
            next += count;
            ids
        };
        let mut segments = Vec::new();
        let conv = fresh(1);
        segments.push(Segment {
            kind: SegmentKind::ConvIn,
            inputs: vec![0],
            outputs: conv.clone(),
            size_of: None,
        });
        let mut skips = conv;
        for (i, block) in self.down_blocks.iter().enumerate() {
            let outputs = fresh(block.skips_produced());
            segments.push(Segment {
                kind: SegmentKind::Down(i),
                inputs: vec![*skips.last().expect("conv_in's output")],
                outputs: outputs.clone(),
                size_of: None,
            });
            skips.extend(outputs);
        }
        let mut x = fresh(1)[0];
        segments.push(Segment {
            kind: SegmentKind::Mid,
            inputs: vec![*skips.last().expect("the deepest skip")],
            outputs: vec![x],
            size_of: None,
        });
        // diffusers passes explicit upsample sizes only when the input is not a multiple of
        // 2^(number of upsamplers); then each upsampler targets the next skip's size (that skip
        // stays in its slot until a later up block reads it).
        let factor = 1i64 << (self.up_blocks.len() - 1);
        let (h, w) = (sample.size()[2], sample.size()[3]);
        let forward_size = h % factor != 0 || w % factor != 0;
        for (i, block) in self.up_blocks.iter().enumerate() {
            let take = block.skips_needed();
            let rest = skips.len() - take;
            let size_of = (forward_size && rest > 0).then(|| skips[rest - 1]);
            let mut inputs = vec![x];
            inputs.extend(&skips[rest..]);
            x = fresh(1)[0];
            segments.push(Segment {
                kind: SegmentKind::Up(i),
                inputs,
                outputs: vec![x],
                size_of,
            });
            skips.truncate(rest);
        }
        let output = fresh(1)[0];
        segments.push(Segment {
            kind: SegmentKind::ConvOut,
            inputs: vec![x],
            outputs: vec![output],
            size_of: None,
        });
        let mut last_reader = vec![usize::MAX; output + 1];
        for (k, segment) in segments.iter().enumerate() {
            for &id in &segment.inputs {
                last_reader[id] = k;
            }
        }
        SegmentPlan {
            segments,
            slots: output + 1,
            output,
            last_reader,
        }
    }

    /// Runs one segment of [`plan`](Self::plan) on its input tensors; `upsample_size` is the
    /// spatial size of the segment's `size_of` slot.
    pub(crate) fn run_segment(
        &self,
        segment: &Segment,
        inputs: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(i64, i64)>,
    ) -> Vec<Tensor> {
        match segment.kind {
            SegmentKind::ConvIn => vec![self.conv_in.forward(&inputs[0])],
            SegmentKind::Down(i) => self.down_blocks[i].forward(&inputs[0], temb, context).1,
            SegmentKind::Mid => vec![self.mid_block.forward(&inputs[0], temb, context)],
            SegmentKind::Up(i) => vec![self.up_blocks[i].forward(
                &inputs[0],
                &inputs[1..],
                temb,
                context,
                upsample_size,
            )],
            SegmentKind::ConvOut => vec![self
                .conv_out
                .forward(&self.conv_norm_out.forward(&inputs[0]).silu())],
        }
    }
}

/// What one segment of the UNet's forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentKind {
    /// `conv_in`.
    ConvIn,
    /// `down_blocks[i]` (its outputs are its skips; the last one goes on).
    Down(usize),
    /// `mid_block`.
    Mid,
    /// `up_blocks[i]` (inputs: the running tensor, then its skips in the down path's order).
    Up(usize),
    /// `conv_norm_out`, SiLU, `conv_out`.
    ConvOut,
}

/// One segment: which slots it reads and writes.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub kind: SegmentKind,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    /// The slot whose spatial size an up block's upsampler targets (see [`UNet2DConditionModel::plan`]).
    pub size_of: Option<usize>,
}

impl Segment {
    /// The segment's inputs from the live `slots` (shallow copies), and the spatial size of its
    /// `size_of` slot for the upsampler.
    pub(crate) fn read(&self, slots: &[Option<Tensor>]) -> (Vec<Tensor>, Option<(i64, i64)>) {
        let live = |id: usize| slots[id].as_ref().expect("a live slot");
        let inputs = self
            .inputs
            .iter()
            .map(|&id| live(id).shallow_clone())
            .collect();
        let size = self.size_of.map(|id| {
            let s = live(id).size();
            (s[2], s[3])
        });
        (inputs, size)
    }
}

/// The UNet's forward pass as segments over numbered slots.
#[derive(Debug, Clone)]
pub(crate) struct SegmentPlan {
    pub segments: Vec<Segment>,
    /// Number of slots (slot 0 is the sample).
    pub slots: usize,
    /// The slot of the UNet's output.
    pub output: usize,
    /// For each slot, the index of the last segment that reads it.
    pub last_reader: Vec<usize>,
}
