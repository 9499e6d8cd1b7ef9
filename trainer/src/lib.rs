//! EchoDistill training with tch: the networks ([`models`]), loading them from diffusers
//! checkpoints ([`checkpoint`]), sampling with them ([`sampling`]) and seeded random-weight
//! models for tests, the demo and benchmarks ([`random_init`]); the frozen image towers
//! ([`towers`], [`vision`]), the discriminator ensemble ([`discriminator`]) and the student's
//! losses ([`losses`]); the DreamBench evaluation ([`eval`]); the self-made toy world
//! ([`toy`]) and the pre-training of its models ([`pretrain`]).

pub mod checkpoint;
pub mod device;
pub mod discriminator;
pub mod eval;
pub mod fit;
pub mod losses;
pub mod models;
pub mod pretrain;
pub mod random_init;
pub mod sampling;
pub mod towers;
pub mod toy;
pub mod vision;
