//! The workspace's one integration-test binary; each module guards one contract.

mod cli_errors;
mod fit;
mod init_tiny;
mod losses;
mod model_parity;
mod sample_errors;
mod scheduler_parity;
mod tokenizer_parity;
mod tower_parity;
mod trainable;
mod written_tokenizer;
