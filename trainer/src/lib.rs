//! EchoDistill training with tch: the networks ([`models`]), loading them from diffusers
//! checkpoints ([`checkpoint`]), sampling with them ([`sampling`]) and seeded random-weight
//! models for tests, the demo and benchmarks ([`random_init`]).

pub mod checkpoint;
pub mod models;
pub mod random_init;
pub mod sampling;
