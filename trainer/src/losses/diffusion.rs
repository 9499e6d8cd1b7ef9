//! The denoising loss a diffusion model trains with on real images (DDPM, Ho et al. 2020; the
//! teacher step of SPEC §4 and every baseline): `x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε`, and the mean
//! squared error of the network's output against what its `prediction_type` predicts (ε, v or
//! x_0), as diffusers' training scripts compute it.

use runtime::scheduler::PredictionType;
use tch::{Device, Kind, Tensor};

use crate::device::upload;

/// √ᾱ_t and √(1 − ᾱ_t) per sample of `ts`, shaped (batch, 1, 1, 1) to broadcast over latents.
pub fn coefficients(alphas_cumprod: &[f32], ts: &[usize], device: Device) -> (Tensor, Tensor) {
    let a: Vec<f32> = ts.iter().map(|&t| alphas_cumprod[t].sqrt()).collect();
    let b: Vec<f32> = ts
        .iter()
        .map(|&t| (1.0 - alphas_cumprod[t]).sqrt())
        .collect();
    let shape = [ts.len() as i64, 1, 1, 1];
    (
        upload(&Tensor::from_slice(&a).view(shape), device),
        upload(&Tensor::from_slice(&b).view(shape), device),
    )
}

/// What the network should output for `x_t = a·x0 + s·eps`: ε, v = a·ε − s·x_0, or x_0.
pub fn target(
    prediction: PredictionType,
    x0: &Tensor,
    eps: &Tensor,
    a: &Tensor,
    s: &Tensor,
) -> Tensor {
    match prediction {
        PredictionType::Epsilon => eps.shallow_clone(),
        PredictionType::VPrediction => a * eps - s * x0,
        PredictionType::Sample => x0.shallow_clone(),
    }
}

/// The x_0 a network's output `out` implies for `x_t = a·x0 + s·eps`: (x_t − s·ε̂)/a, a·x_t − s·v̂,
/// or the output itself.
pub fn predicted_x0(
    prediction: PredictionType,
    x_t: &Tensor,
    out: &Tensor,
    a: &Tensor,
    s: &Tensor,
) -> Tensor {
    match prediction {
        PredictionType::Epsilon => (x_t - s * out) / a,
        PredictionType::VPrediction => a * x_t - s * out,
        PredictionType::Sample => out.shallow_clone(),
    }
}

/// Mean squared error in f32 (the network may run in half precision).
pub fn mse(pred: &Tensor, target: &Tensor) -> Tensor {
    (pred.to_kind(Kind::Float) - target)
        .square()
        .mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicted_x0_inverts_the_target() {
        let x0 = Tensor::from_slice(&[1.0f32, -2.0]).view([2, 1, 1, 1]);
        let eps = Tensor::from_slice(&[0.5f32, 0.25]).view([2, 1, 1, 1]);
        let (a, s) = coefficients(&[0.64f32, 0.36], &[0, 1], Device::Cpu);
        let x_t = &a * &x0 + &s * &eps;
        for p in [
            PredictionType::Epsilon,
            PredictionType::VPrediction,
            PredictionType::Sample,
        ] {
            let back = predicted_x0(p, &x_t, &target(p, &x0, &eps, &a, &s), &a, &s);
            let err = (back - &x0).abs().max().double_value(&[]);
            assert!(err < 1e-6, "{p:?}: x_0 off by {err}");
        }
    }

    #[test]
    fn targets_follow_the_prediction_type() {
        let x0 = Tensor::from_slice(&[1.0f32, -2.0]).view([2, 1, 1, 1]);
        let eps = Tensor::from_slice(&[0.5f32, 0.25]).view([2, 1, 1, 1]);
        let alphas = [0.64f32, 0.36];
        let (a, s) = coefficients(&alphas, &[0, 1], Device::Cpu);
        assert_eq!(Vec::<f32>::try_from(a.flatten(0, -1)).unwrap(), [0.8, 0.6]);
        assert_eq!(Vec::<f32>::try_from(s.flatten(0, -1)).unwrap(), [0.6, 0.8]);
        let v = target(PredictionType::VPrediction, &x0, &eps, &a, &s);
        // v = a ε − s x0: 0.8·0.5 − 0.6·1 = −0.2; 0.6·0.25 + 0.8·2 = 1.75.
        let v: Vec<f32> = Vec::try_from(v.flatten(0, -1)).unwrap();
        assert!(
            (v[0] + 0.2).abs() < 1e-6 && (v[1] - 1.75).abs() < 1e-6,
            "{v:?}"
        );
        assert!(target(PredictionType::Epsilon, &x0, &eps, &a, &s).equal(&eps));
        assert!(target(PredictionType::Sample, &x0, &eps, &a, &s).equal(&x0));
        let m = mse(&x0, &eps).double_value(&[]);
        assert!((m - (0.25 + 5.0625) / 2.0).abs() < 1e-6, "{m}");
    }
}
