//! The concept's photos: loading (jpg, png, webp; EXIF orientation applied; alpha flattened onto
//! white; grayscale and CMYK to RGB), the random-scale crop + horizontal flip augmentation, and
//! the prompt templates around "<token> <class>".

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{imageops::FilterType, DynamicImage, ImageDecoder, ImageReader, RgbImage};
use runtime::GaussianRng;
use tch::Tensor;

use super::config::Concept;

/// File extensions read as photos.
const EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "jfif"];

/// ImageNet-style templates (as textual inversion and the authors' code use).
pub const TEMPLATES: [&str; 12] = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a photo of a nice {}",
];

/// Scene prompts for the echo stage's student samples (DreamBench-style, varied settings).
pub const ECHO_TEMPLATES: [&str; 10] = [
    "a photo of a {} on the beach",
    "a {} in the jungle",
    "a {} in the snow",
    "a {} on a cobblestone street",
    "a {} with a city in the background",
    "a {} on top of a wooden floor",
    "a {} floating on top of water",
    "a {} on top of green grass with sunflowers around it",
    "a {} with a mountain in the background",
    "a {} on top of a purple rug in a forest",
];

/// One photo, upright and RGB.
#[derive(Debug, Clone)]
pub struct Photo {
    /// Where it came from.
    pub path: PathBuf,
    /// The pixels.
    pub image: RgbImage,
}

/// JPEG decoders fill a cut-off file with grey instead of failing; a JPEG must end with its
/// end-of-image marker (some writers add padding after it, so the last 4 KiB are searched).
fn check_jpeg_complete(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let tail = &bytes[bytes.len().saturating_sub(4096)..];
        if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
            bail!("{} is truncated (the JPEG has no end-of-image marker): replace it with a complete copy", path.display());
        }
    }
    Ok(())
}

fn load_photo(path: &Path) -> Result<RgbImage> {
    check_jpeg_complete(path)?;
    let reader = ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut decoder = reader
        .into_decoder()
        .with_context(|| format!("{} is not a readable image", path.display()))?;
    let orientation = decoder.orientation().ok();
    let mut image = DynamicImage::from_decoder(decoder)
        .with_context(|| format!("{} is truncated or corrupt", path.display()))?;
    if let Some(o) = orientation {
        image.apply_orientation(o);
    }
    Ok(flatten(image))
}

/// RGB, with any alpha composited onto white (transparent product shots stay on white).
fn flatten(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = f32::from(p[3]) / 255.0;
        let mix = |c: u8| (f32::from(c) * a + 255.0 * (1.0 - a)).round() as u8;
        image::Rgb([mix(p[0]), mix(p[1]), mix(p[2])])
    })
}

/// Reads every photo of `dir`, refusing unreadable files and empty folders up front.
pub fn load_photos(dir: &Path) -> Result<Vec<Photo>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the image folder {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("{} has no images (jpg, png or webp)", dir.display());
    }
    paths
        .into_iter()
        .map(|path| {
            Ok(Photo {
                image: load_photo(&path)?,
                path,
            })
        })
        .collect()
}

/// The photos of every concept, each with its concept's index; warns about a concept with one
/// photo.
pub fn load_concept_photos(concepts: &[Concept]) -> Result<Vec<(usize, Photo)>> {
    let mut photos = Vec::new();
    for (i, c) in concepts.iter().enumerate() {
        let loaded = load_photos(&c.images)?;
        if loaded.len() == 1 {
            eprintln!(
                "warning: {} has one photo; 3-5 photos teach a concept better",
                c.images.display()
            );
        }
        photos.extend(loaded.into_iter().map(|p| (i, p)));
    }
    Ok(photos)
}

/// Draws `n` photos at random from `photos` (concept index, photo), each augmented to `size`
/// and given `prompt(concept, rng)`, in that order per photo so that a seed fixes the batch.
pub fn draw_photos(
    photos: &[(usize, Photo)],
    n: i64,
    size: u32,
    min_scale: f64,
    rng: &mut GaussianRng,
    mut prompt: impl FnMut(usize, &mut GaussianRng) -> String,
) -> (Vec<Tensor>, Vec<String>) {
    let mut images = Vec::new();
    let mut prompts = Vec::new();
    for _ in 0..n {
        let (concept, photo) = &photos[(rng.next_u64() % photos.len() as u64) as usize];
        images.push(augment(&photo.image, size, min_scale, rng));
        prompts.push(prompt(*concept, rng));
    }
    (images, prompts)
}

/// Random-scale square crop (side between `min_scale` and 1 of the short side, anywhere in the
/// photo), resized to `size`, flipped horizontally with probability ½; returns (3, size, size)
/// in [-1, 1].
pub fn augment(photo: &RgbImage, size: u32, min_scale: f64, rng: &mut GaussianRng) -> Tensor {
    let (w, h) = photo.dimensions();
    let short = w.min(h) as f64;
    let side = (short * (min_scale + (1.0 - min_scale) * rng.next_open01()))
        .round()
        .clamp(1.0, short) as u32;
    let x = ((w - side) as f64 * rng.next_open01()) as u32;
    let y = ((h - side) as f64 * rng.next_open01()) as u32;
    let flip = rng.next_open01() < 0.5;
    square_tensor(photo, (x, y, side), size, flip)
}

/// The square `(x, y, side)` of `photo`, resized to `size` and flipped horizontally when `flip`,
/// as a (3, size, size) tensor in [-1, 1].
fn square_tensor(photo: &RgbImage, (x, y, side): (u32, u32, u32), size: u32, flip: bool) -> Tensor {
    let crop = image::imageops::crop_imm(photo, x, y, side, side).to_image();
    let mut resized = image::imageops::resize(&crop, size, size, FilterType::CatmullRom);
    if flip {
        image::imageops::flip_horizontal_in_place(&mut resized);
    }
    let chw = runtime::image_tensor::rgb8_to_chw(resized.as_raw(), size as usize, size as usize);
    Tensor::from_slice(&chw).view([3, size as i64, size as i64])
}

/// The centred square crop of the short side, resized to `size`: (3, size, size) in [-1, 1]
/// (the deterministic counterpart of [`augment`], for scoring rather than training).
pub fn center_square(photo: &RgbImage, size: u32) -> Tensor {
    let (w, h) = photo.dimensions();
    let side = w.min(h);
    square_tensor(photo, ((w - side) / 2, (h - side) / 2, side), size, false)
}

/// A training prompt for `subject` ("<new1> dog") from a random template.
pub fn prompt(subject: &str, rng: &mut GaussianRng) -> String {
    let i = (rng.next_u64() % TEMPLATES.len() as u64) as usize;
    TEMPLATES[i].replace("{}", subject)
}

/// An echo-stage prompt for `subject` from a random scene template.
pub fn echo_prompt(subject: &str, rng: &mut GaussianRng) -> String {
    let i = (rng.next_u64() % ECHO_TEMPLATES.len() as u64) as usize;
    ECHO_TEMPLATES[i].replace("{}", subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_is_flattened_onto_white() {
        let mut rgba = image::RgbaImage::new(1, 1);
        rgba.put_pixel(0, 0, image::Rgba([0, 0, 0, 0]));
        assert_eq!(
            flatten(DynamicImage::ImageRgba8(rgba)).get_pixel(0, 0).0,
            [255, 255, 255]
        );
    }

    #[test]
    fn center_square_keeps_the_middle_of_the_short_side() {
        // 6 x 2: columns 0-1 black, 2-3 white, 4-5 black; the centred 2 x 2 is the white middle.
        let photo = RgbImage::from_fn(6, 2, |x, _| {
            let v = if (2..4).contains(&x) { 255 } else { 0 };
            image::Rgb([v, v, v])
        });
        let t = center_square(&photo, 2);
        assert_eq!(t.size(), [3, 2, 2]);
        assert_eq!(t.min().double_value(&[]), 1.0);
    }

    #[test]
    fn augmentation_is_seeded_and_in_range() {
        let photo = RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 128]));
        let a = augment(&photo, 16, 0.5, &mut GaussianRng::new(1));
        let b = augment(&photo, 16, 0.5, &mut GaussianRng::new(1));
        assert!(a.equal(&b));
        assert_eq!(a.size(), [3, 16, 16]);
        assert!(a.max().double_value(&[]) <= 1.0 && a.min().double_value(&[]) >= -1.0);
    }
}
