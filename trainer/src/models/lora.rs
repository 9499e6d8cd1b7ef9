//! LoRA (Hu et al. 2021) as PEFT applies it to diffusers' attention: beside a frozen linear layer
//! `W`, a trainable low-rank update `y = W x + (alpha / r) · B (A x)` with `A` (`lora_A`,
//! r × in) and `B` (`lora_B`, out × r). Merging folds it into the weight: `W + (alpha / r) · B A`.

use tch::{Kind, Tensor};

/// One adapter.
#[derive(Debug)]
pub struct LoraAdapter {
    /// `lora_A`: rank × in.
    pub down: Tensor,
    /// `lora_B`: out × rank.
    pub up: Tensor,
    /// alpha / rank.
    pub scale: f64,
}

impl LoraAdapter {
    /// The update for input `x` (the adapter's f32 weights cast to `x`'s precision).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let cast = |t: &Tensor| {
            if t.kind() == kind {
                t.shallow_clone()
            } else {
                t.to_kind(kind)
            }
        };
        x.linear::<Tensor>(&cast(&self.down), None)
            .linear::<Tensor>(&cast(&self.up), None)
            * self.scale
    }

    /// `scale · B A` (out × in, f32): what merging adds to the weight.
    pub fn delta(&self) -> Tensor {
        self.up
            .to_kind(Kind::Float)
            .matmul(&self.down.to_kind(Kind::Float))
            * self.scale
    }
}

/// The adapters of one attention layer's projections, each optional.
#[derive(Debug, Default)]
pub struct LoraSlots {
    /// Beside `to_q`.
    pub to_q: Option<LoraAdapter>,
    /// Beside `to_k`.
    pub to_k: Option<LoraAdapter>,
    /// Beside `to_v`.
    pub to_v: Option<LoraAdapter>,
    /// Beside `to_out.0`.
    pub to_out: Option<LoraAdapter>,
}

impl LoraSlots {
    /// The slot of projection `name` (`to_q`, `to_k`, `to_v`, `to_out.0`).
    pub fn slot_mut(&mut self, name: &str) -> Option<&mut Option<LoraAdapter>> {
        match name {
            "to_q" => Some(&mut self.to_q),
            "to_k" => Some(&mut self.to_k),
            "to_v" => Some(&mut self.to_v),
            "to_out.0" => Some(&mut self.to_out),
            _ => None,
        }
    }

    /// `base` plus the slot's update of `x`, if it holds an adapter.
    pub fn add(slot: &Option<LoraAdapter>, base: Tensor, x: &Tensor) -> Tensor {
        match slot {
            Some(a) => base + a.forward(x),
            None => base,
        }
    }
}
