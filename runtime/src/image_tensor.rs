//! Conversion between the networks' image tensors (channels-first f32 in [-1, 1]) and 8-bit RGB
//! pixels (interleaved, row-major), shared by every backend.

/// Channels-first `[3, height, width]` values in [-1, 1] → interleaved RGB bytes. Values are
/// clamped, mapped to [0, 255] and rounded to nearest, as diffusers' `VaeImageProcessor` does
/// (`(x / 2 + 0.5).clamp(0, 1) * 255`, then `round`).
pub fn chw_to_rgb8(chw: &[f32], height: usize, width: usize) -> Vec<u8> {
    assert_eq!(
        chw.len(),
        3 * height * width,
        "expected 3 x {height} x {width} values"
    );
    let plane = height * width;
    let mut rgb = Vec::with_capacity(chw.len());
    for i in 0..plane {
        for c in 0..3 {
            let v = (chw[c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0);
            rgb.push((v * 255.0).round() as u8);
        }
    }
    rgb
}

/// Interleaved RGB bytes → channels-first `[3, height, width]` values in [-1, 1].
pub fn rgb8_to_chw(rgb: &[u8], height: usize, width: usize) -> Vec<f32> {
    assert_eq!(
        rgb.len(),
        3 * height * width,
        "expected {height} x {width} RGB pixels"
    );
    let plane = height * width;
    let mut chw = vec![0.0; rgb.len()];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = f32::from(px[c]) / 127.5 - 1.0;
        }
    }
    chw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_exact_on_bytes() {
        let rgb: Vec<u8> = (0..=255u8).cycle().take(3 * 4 * 5).collect();
        assert_eq!(chw_to_rgb8(&rgb8_to_chw(&rgb, 4, 5), 4, 5), rgb);
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let chw = [-3.0, 0.0, 3.0];
        assert_eq!(chw_to_rgb8(&chw, 1, 1), [0, 128, 255]);
    }
}
