//! `trainer fit`: EchoDistill's training (SPEC §3–5): the settings ([`config`]), the photos
//! ([`data`]), what trains ([`trainable`]) and its optimiser ([`optim`]), one iteration and the
//! echo stage's data ([`distill`]), the iteration's numbers read to the host once (`readout`),
//! the paper's baselines ([`baseline`]), what the runner drives ([`method`]), the whole run with
//! checkpoints ([`run_checkpoint`]), resume, recovery and Ctrl-C ([`runner`]), fault injection
//! for tests ([`failpoint`]), sample grids ([`grids`]), the HTML report ([`report`]), the
//! results on disk ([`outputs`]) and using them ([`run_dir`]), and what a run's discriminator
//! heads call real ([`discriminator_probe`]).

pub mod baseline;
pub mod config;
pub mod data;
pub mod discriminator_probe;
pub mod distill;
pub mod failpoint;
pub mod grids;
pub mod method;
pub mod optim;
pub mod outputs;
mod readout;
pub mod report;
pub mod run_checkpoint;
pub mod run_dir;
pub mod runner;
pub mod trainable;
