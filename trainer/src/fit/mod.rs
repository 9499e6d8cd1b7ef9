//! `trainer fit`: EchoDistill's training (SPEC §3–5): the settings ([`config`]), the photos
//! ([`data`]), what trains ([`trainable`]) and the distillation stage ([`distill`]). The echo
//! stage, checkpoints/resume and the report are still to come (issue 5).

pub mod config;
pub mod data;
pub mod distill;
pub mod optim;
pub mod run_dir;
pub mod trainable;
