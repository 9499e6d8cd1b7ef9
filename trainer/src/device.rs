//! Parsing where and in what precision networks run, shared by every command and `fit`'s
//! config.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

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

static PAGEABLE_UPLOADS: AtomicBool = AtomicBool::new(false);

/// Makes [`upload`] copy from pageable memory, as a plain `to_device` does (for measuring what
/// the pinned, non-blocking copies save: `trainer bench --compare-uploads`).
pub fn set_pageable_uploads(on: bool) {
    PAGEABLE_UPLOADS.store(on, Ordering::Relaxed);
}

/// Copies a host tensor (noise, timesteps, token ids, constants) to `device` without making the
/// host wait for the GPU. A CUDA copy from pageable memory waits for every kernel queued before
/// it, so each such copy inside an iteration leaves the GPU idle while the host queues the rest;
/// from pinned (page-locked) memory the copy is queued like a kernel. Same values either way;
/// on the CPU, and if pinning fails, this is `to_device`.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    if device == Device::Cpu
        || t.device() != Device::Cpu
        || PAGEABLE_UPLOADS.load(Ordering::Relaxed)
    {
        return t.to_device(device);
    }
    // `_pin_memory` with the device: `pin_memory` warns on every call that passing a device is
    // deprecated, and tch's binding always passes one.
    match t.f_internal_pin_memory(device) {
        Ok(pinned) => pinned.to_device_(device, pinned.kind(), true, false),
        Err(_) => t.to_device(device),
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
