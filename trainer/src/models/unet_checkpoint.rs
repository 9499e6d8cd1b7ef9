//! Activation checkpointing of the UNet (`checkpoint_unet`, issue #11: the two UNets of a fit
//! in 24 GiB). The forward pass runs without a graph and keeps only the tensors between its
//! segments (conv_in, each down block, the mid block, each up block, the output head: the plan
//! of [`UNet2DConditionModel::plan`], the same one the plain forward runs). The backward pass
//! recomputes one segment at a time, from the last, with its graph on detached copies of its
//! inputs, and sends the gradient through it by d/dy Σ(y·g) = g; the gradients its inputs
//! receive are those of the previous segments' outputs (summed over readers, as the down path's
//! skips have two). At most one segment's activations are alive at a time.
//!
//! tch has no `torch.utils.checkpoint` (a custom autograd function), hence the driver here: the
//! caller runs its own backward first, which stops at the UNet's output (a leaf), then calls
//! [`CheckpointedForward::backward`]. The time embedding, the text embeddings and the sample
//! keep their own graphs: their gradients, gathered over the segments, go back through them in
//! one last pass, so trained token rows, LoRA layers or a fully trained UNet all learn.

use tch::{Kind, Tensor};

use super::unet_2d_condition::{SegmentPlan, UNet2DConditionModel};

/// A UNet forward pass whose activations are recomputed in the backward pass.
#[must_use = "call backward after the loss's backward, or the UNet learns nothing"]
pub struct CheckpointedForward {
    plan: SegmentPlan,
    /// The boundary tensors, without graph, by slot.
    slots: Vec<Option<Tensor>>,
    /// The prepared sample, time embedding and text embeddings, with their graphs.
    sample: Tensor,
    temb: Tensor,
    context: Tensor,
    /// The UNet's output: a leaf whose gradient the caller's backward fills.
    output: Tensor,
    /// (segment, slot): the gradient that segment sends to that slot is dropped (the tests'
    /// broken chain).
    #[cfg(test)]
    lost: Option<(usize, usize)>,
}

impl UNet2DConditionModel {
    /// [`forward`](Self::forward) with activation checkpointing: the same value (the same
    /// operations), as a leaf tensor (`output()`) that gradients stop at, and a record to send
    /// them on into the UNet's parameters and inputs ([`CheckpointedForward::backward`]).
    pub fn forward_checkpointed(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
    ) -> CheckpointedForward {
        let (sample, temb) = self.prepare(sample, timesteps);
        let plan = self.plan(&sample);
        let slots = tch::no_grad(|| self.run_plan(&plan, sample.detach(), &temb, context, true));
        let output = slots[plan.output]
            .as_ref()
            .expect("the UNet's output")
            .detach()
            .set_requires_grad(true);
        CheckpointedForward {
            plan,
            slots,
            sample,
            temb,
            context: context.shallow_clone(),
            output,
            #[cfg(test)]
            lost: None,
        }
    }
}

impl UNet2DConditionModel {
    /// The training forward pass: plain, or checkpointed when `checkpoint` (then the record's
    /// [`backward`](CheckpointedForward::backward) must follow the loss's).
    pub fn forward_for_training(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        checkpoint: bool,
    ) -> (Tensor, Option<CheckpointedForward>) {
        if checkpoint {
            let record = self.forward_checkpointed(sample, timesteps, context);
            (record.output().shallow_clone(), Some(record))
        } else {
            (self.forward(sample, timesteps, context), None)
        }
    }
}

impl CheckpointedForward {
    /// The UNet's output (a leaf: gradients stop here until [`backward`](Self::backward)).
    pub fn output(&self) -> &Tensor {
        &self.output
    }

    /// Sends the gradient the caller's backward left on [`output`](Self::output) through `unet`
    /// (the model that ran the forward pass) into its parameters, then into the graphs of the
    /// sample, the time embedding and the text embeddings. Without such a gradient (no loss
    /// reached the output) nothing happens.
    pub fn backward(mut self, unet: &UNet2DConditionModel) {
        let g_out = self.output.grad();
        if !g_out.defined() {
            return;
        }
        let mut grads: Vec<Option<Tensor>> = (0..self.plan.slots).map(|_| None).collect();
        grads[self.plan.output] = Some(g_out);
        let (mut g_temb, mut g_context) = (None, None);
        for (_k, segment) in self.plan.segments.iter().enumerate().rev() {
            let upstream: Vec<(usize, Tensor)> = segment
                .outputs
                .iter()
                .enumerate()
                .filter_map(|(j, &id)| grads[id].take().map(|g| (j, g)))
                .collect();
            // Every later segment is done: this one's outputs are no longer read.
            for &id in &segment.outputs {
                self.slots[id] = None;
            }
            if upstream.is_empty() {
                continue;
            }
            let (saved, size) = segment.read(&self.slots);
            let inputs: Vec<Tensor> = saved
                .iter()
                .map(|t| t.detach().set_requires_grad(true))
                .collect();
            let temb = self.temb.detach().set_requires_grad(true);
            let context = self.context.detach().set_requires_grad(true);
            let outputs = unet.run_segment(segment, &inputs, &temb, &context, size);
            let surrogate = upstream
                .iter()
                .map(|(j, g)| (&outputs[*j] * g).sum(Kind::Float))
                .reduce(|a, b| a + b)
                .expect("an upstream gradient");
            surrogate.backward();
            for (&id, input) in segment.inputs.iter().zip(&inputs) {
                #[cfg(test)]
                if self.lost == Some((_k, id)) {
                    continue;
                }
                accumulate(&mut grads[id], input.grad());
            }
            accumulate(&mut g_temb, temb.grad());
            accumulate(&mut g_context, context.grad());
        }
        let terms = [
            (&self.sample, grads[0].take()),
            (&self.temb, g_temb),
            (&self.context, g_context),
        ];
        let surrogate = terms
            .into_iter()
            .filter_map(|(x, g)| {
                g.filter(|_| x.requires_grad())
                    .map(|g| (x * g).sum(Kind::Float))
            })
            .reduce(|a, b| a + b);
        if let Some(surrogate) = surrogate {
            surrogate.backward();
        }
    }
}

/// Adds a gradient (undefined: none arrived) to a running sum.
fn accumulate(sum: &mut Option<Tensor>, g: Tensor) {
    if !g.defined() {
        return;
    }
    *sum = Some(match sum.take() {
        Some(s) => s + g,
        None => g,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::unet_2d_condition::UNetConfig;
    use tch::{nn, Device};

    /// The toy UNet with random weights (every parameter trained, as DreamBooth's are).
    fn toy_unet() -> (nn::VarStore, UNet2DConditionModel) {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = UNetConfig::from_json(crate::pretrain::configs::UNET).unwrap();
        let unet = UNet2DConditionModel::new(vs.root(), config).unwrap();
        (vs, unet)
    }

    /// A sample and raw text embeddings from their own seeded generator (torch's global one is
    /// shared with the tests running beside this one, so both passes could see other inputs).
    fn inputs(size: i64) -> (Tensor, Tensor) {
        let mut rng = runtime::GaussianRng::new(11);
        let sample = crate::fit::distill::normal(&mut rng, &[2, 4, size, size], Device::Cpu);
        let raw = crate::fit::distill::normal(&mut rng, &[2, 77, 64], Device::Cpu);
        (sample, raw)
    }

    /// Every parameter's gradient, the sample's and the context's after a backward of a loss
    /// that reads the UNet's output nonlinearly, the plain way or checkpointed.
    fn gradients(
        vs: &nn::VarStore,
        unet: &UNet2DConditionModel,
        size: i64,
        checkpointed: bool,
    ) -> (Tensor, Vec<(String, Tensor)>, Tensor, Tensor) {
        let (sample, raw) = inputs(size);
        let sample = sample.set_requires_grad(true);
        let raw = raw.set_requires_grad(true);
        // A graph before the UNet, as the text encoder's (the trained token rows) is.
        let context = raw.tanh();
        let t = Tensor::from_slice(&[999.0f32, 499.0]);
        zero_gradients(vs);
        let (out, record) = if checkpointed {
            let record = unet.forward_checkpointed(&sample, &t, &context);
            (record.output().shallow_clone(), Some(record))
        } else {
            (unet.forward(&sample, &t, &context), None)
        };
        (out.square() * 0.5 + out.sin())
            .mean(Kind::Float)
            .backward();
        if let Some(record) = record {
            record.backward(unet);
        }
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.grad().copy()))
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        (out.detach(), params, sample.grad(), raw.grad())
    }

    fn zero_gradients(vs: &nn::VarStore) {
        for (_, t) in vs.variables() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// The gradients' agreement, relative to each tensor's largest entry: measured 1.2e-6 (8×8
    /// latents) and 1.3e-6 (6×6), float rounding of sums taken in another order.
    const TOLERANCE: f64 = 1e-5;

    /// Largest |a − b| relative to the largest |a|.
    fn relative_difference(a: &Tensor, b: &Tensor) -> f64 {
        let scale = a.abs().max().double_value(&[]).max(1e-30);
        (a - b).abs().max().double_value(&[]) / scale
    }

    fn check(size: i64) {
        let (vs, unet) = toy_unet();
        let (out, params, g_sample, g_context) = gradients(&vs, &unet, size, false);
        let (out_c, params_c, g_sample_c, g_context_c) = gradients(&vs, &unet, size, true);
        // The same operations forward: the same bits.
        assert!(out.equal(&out_c), "the checkpointed output differs");
        // Backward, the gradients are summed in another order where several readers meet (the
        // skips, temb, the context): equal up to float rounding.
        let mut worst = 0.0f64;
        assert_eq!(params.len(), params_c.len());
        for ((name, g), (_, g_c)) in params.iter().zip(&params_c) {
            assert!(g.defined() && g_c.defined(), "{name}: no gradient");
            let d = relative_difference(g, g_c);
            assert!(d < TOLERANCE, "{name}: relative difference {d}");
            worst = worst.max(d);
        }
        for (what, a, b) in [
            ("sample", &g_sample, &g_sample_c),
            ("context", &g_context, &g_context_c),
        ] {
            let d = relative_difference(a, b);
            assert!(d < TOLERANCE, "{what}: relative difference {d}");
            worst = worst.max(d);
        }
        // A wrong chain (a skip's gradient lost, a segment skipped) is off by far more.
        eprintln!("size {size}: largest relative gradient difference {worst:e}");
    }

    #[test]
    fn checkpointed_gradients_match_the_plain_backward() {
        check(8);
    }

    #[test]
    fn checkpointed_gradients_match_with_explicit_upsample_sizes() {
        // 6 is not a multiple of 4 (two upsamplers): the up blocks target the skips' sizes.
        check(6);
    }

    #[test]
    fn a_lost_skip_gradient_is_detected() {
        // The check above must be able to fail: drop the gradient one skip receives from its up
        // block and the parameters of the down path disagree.
        let (vs, unet) = toy_unet();
        let (_, params, _, _) = gradients(&vs, &unet, 8, false);
        let (sample, raw) = inputs(8);
        let context = raw.tanh();
        let t = Tensor::from_slice(&[999.0f32, 499.0]);
        zero_gradients(&vs);
        let mut record = unet.forward_checkpointed(&sample, &t, &context);
        let out = record.output().shallow_clone();
        (out.square() * 0.5 + out.sin())
            .mean(Kind::Float)
            .backward();
        // conv_in's output (slot 1) is read by the first down block and the last up block;
        // the first reader in the backward order is the up block.
        let up = record.plan.segments.len() - 2;
        assert_eq!(record.plan.segments[up].inputs[1], 1);
        record.lost = Some((up, 1));
        record.backward(&unet);
        let g_conv_in = vs
            .variables()
            .remove("conv_in.weight")
            .unwrap()
            .grad()
            .copy();
        let plain = &params
            .iter()
            .find(|(n, _)| n == "conv_in.weight")
            .unwrap()
            .1;
        let d = relative_difference(plain, &g_conv_in);
        eprintln!("lost skip: conv_in relative difference {d:e}");
        // Measured 5.4e-3: hundreds of times the tolerance.
        assert!(d > 100.0 * TOLERANCE, "{d}");
    }
}
