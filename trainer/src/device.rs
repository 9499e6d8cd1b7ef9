//! Parsing where and in what precision networks run, shared by every command and `fit`'s
//! config.

use anyhow::{bail, Result};
use tch::{Device, Kind};

/// `cpu`, `cuda` or `cuda:N`, checked against the devices libtorch sees.
pub fn parse_device(name: &str) -> Result<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => bail!("device {other:?}: use cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(n) = device {
        let available = tch::Cuda::device_count() as usize;
        if n >= available {
            bail!(
                "device {name}: this machine has {available} CUDA device(s) visible to libtorch{}",
                if cfg!(feature = "cuda") {
                    ""
                } else {
                    " (and this trainer was built without the `cuda` feature)"
                }
            );
        }
    }
    Ok(device)
}

/// Waits for the kernels queued on `device` (nothing to wait for on the CPU), so that a clock
/// read after it measures work done rather than work launched.
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// `f32`, `f16` or `bf16`.
pub fn parse_kind(name: &str) -> Result<Kind> {
    Ok(match name {
        "f32" => Kind::Float,
        "f16" => Kind::Half,
        "bf16" => Kind::BFloat16,
        other => bail!("dtype {other:?}: use f32, f16 or bf16"),
    })
}
