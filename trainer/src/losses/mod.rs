//! The denoising loss on real images ([`diffusion`]: the teacher step and the baselines) and
//! the student's losses (SPEC §4): alignment to the teacher's denoised targets
//! ([`alignment`]: latent MSE, identity, the ᾱ_t weighting; [`ms_swd`]: multi-scale sliced
//! Wasserstein distance) and the discriminators' adversarial terms ([`adversarial`]), wired
//! together in [`stack`].

pub mod adversarial;
pub mod alignment;
pub mod diffusion;
pub mod ms_swd;
pub mod stack;
