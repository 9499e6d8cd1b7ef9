//! The workspace's one integration-test binary; each module guards one contract.

mod bake;
mod baselines;
mod cli_errors;
mod discriminate;
mod eval;
mod fit;
mod fit_ablations;
mod fit_memory;
mod fit_overfit;
mod fit_safety;
mod gpu_measurements;
mod init_tiny;
mod losses;
mod model_parity;
mod runtime_generate;
mod runtime_serve;
mod sample_errors;
mod scheduler_parity;
mod tokenizer_parity;
mod tower_parity;
mod toy_assets;
mod toy_world;
mod trainable;
mod web_page;
mod written_tokenizer;
