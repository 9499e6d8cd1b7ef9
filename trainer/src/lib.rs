//! EchoDistill training with tch: the networks ([`models`]), loading them from diffusers
//! checkpoints ([`checkpoint`]) and sampling with them ([`sampling`]).

pub mod checkpoint;
pub mod models;
pub mod sampling;
