//! `trainer env`: what libtorch this binary runs on, for bug reports and GPU checks.

use anyhow::Result;
use tch::Cuda;

pub fn run() -> Result<()> {
    println!("trainer {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch built against: {}", env!("TRAINER_LIBTORCH"));
    println!("cuda build: {}", cfg!(feature = "cuda"));
    println!("cuda available: {}", Cuda::is_available());
    println!("cuda devices: {}", Cuda::device_count());
    println!("cudnn available: {}", Cuda::cudnn_is_available());
    println!("cpu threads: {}", tch::get_num_threads());
    println!("mkl: {}", tch::utils::has_mkl());
    // A tiny op proves the library is loaded and working, not just linked.
    let x = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    println!(
        "check: sum([1, 2, 3]) = {}",
        x.sum(tch::Kind::Float).double_value(&[])
    );
    Ok(())
}
