//! `trainer toy-data`'s folder: the DreamBench-shaped subjects, a preview of the pre-training
//! data (sample grid and its captions) and an HTML page showing both.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{imageops, RgbImage};

use super::subjects::write_dreambench;
use super::world::ToyWorld;
use crate::checkpoint::{create_folder_beside, write_text_atomic};
use crate::fit::report::{compose_grid, Report, ReportImage};
use crate::sampling::write_png;

/// Preview tiles are drawn at least this wide (nearest-neighbour, so pixels stay visible).
const TILE: u32 = 128;

/// The folder `write_toy_data` puts novel-scene renders in.
const NOVEL_SCENES: &str = "novel-scenes";

/// What `write_toy_data` wrote.
#[derive(Debug, Clone)]
pub struct ToyData {
    /// The DreamBench-shaped folder (give it to `trainer eval --dataset`).
    pub dreambench: PathBuf,
    /// The HTML preview page.
    pub page: PathBuf,
    /// Reference images written, over all subjects.
    pub reference_images: usize,
    /// Pre-training samples previewed.
    pub samples: usize,
    /// The folder of novel-scene renders, one subfolder per subject (when asked for).
    pub novel_scenes: Option<PathBuf>,
}

fn enlarge(image: &RgbImage) -> RgbImage {
    let factor = TILE.div_ceil(image.width()).max(1);
    imageops::resize(
        image,
        image.width() * factor,
        image.height() * factor,
        imageops::FilterType::Nearest,
    )
}

/// Writes the world's files into `out` (which must not exist): `dreambench/`,
/// `pretrain-samples.png` with `pretrain-captions.txt` (items 0..samples of the pre-training
/// data), `subjects.png` (a row of references per subject) and `index.html`. The folder is
/// assembled beside `out` and renamed into place. With `novel > 0`, also `novel-scenes/<subject>/`
/// with that many renders of each subject in scenes of its own ([`ToyWorld::novel_scenes`]).
pub fn write_toy_data(
    world: &ToyWorld,
    out: &Path,
    samples: usize,
    novel: usize,
) -> Result<ToyData> {
    if samples == 0 {
        bail!("--samples must be at least 1 (the preview shows that many pre-training images)");
    }
    create_folder_beside(out, "--out", |tmp| {
        let renders = write_dreambench(world, &tmp.join("dreambench"))?;
        let reference_images: usize = renders.iter().map(Vec::len).sum();

        let mut tiles = Vec::with_capacity(samples);
        let mut captions = String::new();
        for i in 0..samples {
            let sample = world.sample(i as u64);
            tiles.push(enlarge(&sample.image));
            let _ = writeln!(captions, "{i}\t{}", sample.caption);
        }
        let columns = samples.min(8);
        write_png(
            &compose_grid(&tiles, columns, 2)?,
            &tmp.join("pretrain-samples.png"),
        )?;
        write_text_atomic(&tmp.join("pretrain-captions.txt"), &captions)?;

        let mut rows = Vec::new();
        let blank = RgbImage::from_pixel(TILE, TILE, image::Rgb([255, 255, 255]));
        let per_row = renders.iter().map(Vec::len).max().unwrap_or(1);
        for images in &renders {
            for i in 0..per_row {
                rows.push(images.get(i).map_or_else(|| blank.clone(), enlarge));
            }
        }
        write_png(&compose_grid(&rows, per_row, 2)?, &tmp.join("subjects.png"))?;

        if novel > 0 {
            for subject in world.subjects() {
                let folder = tmp.join(NOVEL_SCENES).join(&subject.name);
                std::fs::create_dir_all(&folder)
                    .with_context(|| format!("cannot create {}", folder.display()))?;
                for (i, scene) in world.novel_scenes(subject, novel).iter().enumerate() {
                    let path = folder.join(format!("{i:02}.png"));
                    world
                        .render(scene)
                        .save_with_format(&path, image::ImageFormat::Png)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
            }
        }

        let config = world.config();
        let report = Report {
            title: "Toy world".into(),
            summary: vec![
                ("seed".into(), config.seed.to_string()),
                ("resolution".into(), format!("{0}×{0}", config.resolution)),
                (
                    "held-out subjects".into(),
                    world.subjects().len().to_string(),
                ),
                ("reference images".into(), reference_images.to_string()),
                (
                    "full-caption share".into(),
                    config.full_caption_share.to_string(),
                ),
            ],
            images: vec![
                ReportImage {
                    title: format!("Pre-training data, items 0–{}", samples - 1),
                    caption: captions
                        .lines()
                        .map(|l| l.replacen('\t', ": ", 1))
                        .collect::<Vec<_>>()
                        .join("; "),
                    path: tmp.join("pretrain-samples.png"),
                },
                ReportImage {
                    title: "Held-out subjects".into(),
                    caption: format!(
                        "One row per subject ({}), its reference renders from left to right.",
                        world
                            .subjects()
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    path: tmp.join("subjects.png"),
                },
            ],
            ..Report::default()
        };
        write_text_atomic(&tmp.join("index.html"), &report.render_html()?)?;
        Ok(ToyData {
            dreambench: out.join("dreambench"),
            page: out.join("index.html"),
            reference_images,
            samples,
            novel_scenes: (novel > 0).then(|| out.join(NOVEL_SCENES)),
        })
    })
}
