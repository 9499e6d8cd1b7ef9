//! AdamW (decoupled weight decay, as `torch.optim.AdamW`) over named tensors, written here so
//! that its moment buffers can be checkpointed and a resumed run continues bit for bit (tch's
//! optimisers keep their state inside libtorch, out of reach).

use std::collections::HashMap;

use anyhow::{Context, Result};
use tch::{nn, Kind, Tensor};

use super::config::Adam;

/// AdamW over the trainable variables of one store.
pub struct AdamW {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    steps: i64,
    /// Learning rate.
    pub lr: f64,
    settings: Adam,
}

impl AdamW {
    /// An optimiser for every trainable variable of `vs`, in name order.
    pub fn new(vs: &nn::VarStore, lr: f64, settings: &Adam) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |t: &Tensor| Tensor::zeros_like(t).to_kind(Kind::Float);
        Self {
            m: params.iter().map(|(_, t)| zeros(t)).collect(),
            v: params.iter().map(|(_, t)| zeros(t)).collect(),
            params,
            steps: 0,
            lr,
            settings: settings.clone(),
        }
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One update from the current gradients (parameters without a gradient are skipped).
    pub fn step(&mut self) {
        self.steps += 1;
        let (b1, b2) = (self.settings.beta1, self.settings.beta2);
        let bc1 = 1.0 - b1.powi(self.steps as i32);
        let bc2 = 1.0 - b2.powi(self.steps as i32);
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(Kind::Float);
                let mut p = p.shallow_clone();
                let _ = p.g_mul_scalar_(1.0 - self.lr * self.settings.weight_decay);
                let _ = self.m[i].g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                let _ = self.v[i]
                    .g_mul_scalar_(b2)
                    .g_add_(&(g.square() * (1.0 - b2)));
                let denom = (&self.v[i] / bc2).sqrt() + self.settings.eps;
                let update = (&self.m[i] / bc1) / denom * self.lr;
                let _ = p.g_sub_(&update.to_kind(p.kind()));
            }
        });
    }

    /// The state to checkpoint: moment buffers by parameter name, and the step count.
    pub fn state(&self, prefix: &str) -> (Vec<(String, Tensor)>, i64) {
        let mut out = Vec::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((
                format!("{prefix}.{name}.exp_avg"),
                self.m[i].shallow_clone(),
            ));
            out.push((
                format!("{prefix}.{name}.exp_avg_sq"),
                self.v[i].shallow_clone(),
            ));
        }
        (out, self.steps)
    }

    /// Restores a [`state`](Self::state).
    pub fn load_state(
        &mut self,
        prefix: &str,
        tensors: &HashMap<String, Tensor>,
        steps: i64,
    ) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (i, (name, _)) in self.params.iter().enumerate() {
                let m = tensors
                    .get(&format!("{prefix}.{name}.exp_avg"))
                    .with_context(|| {
                        format!("the checkpoint has no optimiser state for {prefix}.{name}")
                    })?;
                let v = tensors
                    .get(&format!("{prefix}.{name}.exp_avg_sq"))
                    .with_context(|| {
                        format!("the checkpoint has no optimiser state for {prefix}.{name}")
                    })?;
                self.m[i].copy_(m);
                self.v[i].copy_(v);
            }
            Ok(())
        })?;
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;
    use tch::Device;

    /// The same steps as libtorch's own AdamW (torch.optim.AdamW's C++ twin).
    #[test]
    fn matches_libtorch_adamw() {
        let settings = Adam::default();
        let make = || {
            let vs = nn::VarStore::new(Device::Cpu);
            let p = vs
                .root()
                .var_copy("w", &Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.1]));
            (vs, p)
        };
        let (vs_a, pa) = make();
        let (vs_b, pb) = make();
        let mut ours = AdamW::new(&vs_a, 0.1, &settings);
        let mut theirs = nn::AdamW {
            beta1: settings.beta1,
            beta2: settings.beta2,
            wd: settings.weight_decay,
            eps: settings.eps,
            amsgrad: false,
        }
        .build(&vs_b, 0.1)
        .unwrap();
        let weights = Tensor::from_slice(&[1.0f32, 2.0, -3.0, 4.0]);
        for _ in 0..7 {
            ours.zero_grad();
            (&pa * &pa * &weights).sum(Kind::Float).backward();
            ours.step();
            theirs.zero_grad();
            (&pb * &pb * &weights).sum(Kind::Float).backward();
            theirs.step();
        }
        let err = (&pa - &pb).abs().max().double_value(&[]);
        assert!(err < 1e-6, "differs from libtorch AdamW by {err}");
    }
}
