//! An iteration's numbers (losses, gradient norms) stay on the device while it runs and reach
//! the host in one read at its end. Every host read of a CUDA tensor waits for all the work
//! queued before it; a read in the middle of an iteration leaves the GPU idle while the host
//! queues the rest (issue #11). On the CPU the values and the arithmetic are the same as reading
//! each at once.

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

/// Reads the 0-dim tensors of `values` to the host with one transfer; `None` reads as 0.
pub(crate) fn read_scalars(values: &[Option<&Tensor>]) -> Result<Vec<f64>> {
    let present: Vec<Tensor> = values
        .iter()
        .flatten()
        .map(|t| t.detach().to_kind(Kind::Double).reshape([1]))
        .collect();
    let mut read = if present.is_empty() {
        Vec::new()
    } else {
        Vec::<f64>::try_from(Tensor::cat(&present, 0).to_device(Device::Cpu))
            .context("reading the iteration's losses")?
    }
    .into_iter();
    Ok(values
        .iter()
        .map(|v| match v {
            Some(_) => read.next().unwrap_or(f64::NAN),
            None => 0.0,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_in_order_with_absent_ones_as_zero() {
        let a = Tensor::from(1.5f32);
        let b = Tensor::from_slice(&[2.25f64]).reshape([]);
        let nan = Tensor::from(f32::NAN);
        let got = read_scalars(&[Some(&a), None, Some(&b), Some(&nan)]).unwrap();
        assert_eq!(&got[..3], &[1.5, 0.0, 2.25]);
        assert!(got[3].is_nan());
        assert_eq!(read_scalars(&[None, None]).unwrap(), vec![0.0, 0.0]);
    }
}
