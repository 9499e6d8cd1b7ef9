//! Network outputs to canvas pixels (RGBA, alpha 255).

use runtime::image_tensor::chw_to_rgb8;
use wasm_bindgen::prelude::*;

fn rgba(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect()
}

/// The VAE decoder's `[3, height, width]` values in [-1, 1] (one image) → RGBA bytes, rounded
/// exactly as the native runtime rounds.
#[wasm_bindgen(js_name = chwToRgba)]
pub fn chw_to_rgba(chw: &[f32], height: usize, width: usize) -> Result<Vec<u8>, JsError> {
    if chw.len() != 3 * height * width {
        return Err(JsError::new(&format!(
            "the decoder returned {} values, a {width}x{height} image needs {}",
            chw.len(),
            3 * height * width
        )));
    }
    Ok(rgba(&chw_to_rgb8(chw, height, width)))
}

/// The fused pipeline's interleaved RGB bytes (one image) → RGBA bytes.
#[wasm_bindgen(js_name = rgbToRgba)]
pub fn rgb_to_rgba(rgb: &[u8]) -> Result<Vec<u8>, JsError> {
    if !rgb.len().is_multiple_of(3) {
        return Err(JsError::new(&format!(
            "{} bytes is not whole RGB pixels",
            rgb.len()
        )));
    }
    Ok(rgba(rgb))
}
