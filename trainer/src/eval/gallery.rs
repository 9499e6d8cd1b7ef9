//! The generated images as something to look at: one grid per (method, subject, steps), rows
//! the prompts and columns the seeds, and `gallery.html`, a self-contained page with the
//! metrics chart and every grid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::imageops::FilterType;

use super::protocol::ScoreRecord;
use crate::checkpoint::write_text_atomic;
use crate::fit::report::{compose_grid, Report, ReportImage};
use crate::sampling::write_png;

/// Grid tiles are at most this many pixels wide, so a 25-prompt grid stays a few MB.
const TILE: u32 = 128;

/// A file-name-safe form of a label.
pub fn slug(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let parts: Vec<&str> = s.split('-').filter(|p| !p.is_empty()).collect();
    parts.join("-")
}

/// Writes the grids under `dir/gallery/` and `dir/gallery.html` (images are read from `dir`
/// by the records' relative paths).
pub fn write_gallery(
    dir: &Path,
    records: &[ScoreRecord],
    title: &str,
    summary: Vec<(String, String)>,
    details: String,
) -> Result<PathBuf> {
    let mut groups: BTreeMap<(String, String, usize), Vec<&ScoreRecord>> = BTreeMap::new();
    for r in records {
        groups
            .entry((r.label.clone(), r.subject.clone(), r.steps))
            .or_default()
            .push(r);
    }
    let mut images = Vec::new();
    if dir.join("metrics.png").is_file() {
        images.push(ReportImage {
            title: "Metrics".into(),
            caption: "Mean and standard error over the generated images.".into(),
            path: dir.join("metrics.png"),
        });
    }
    let gallery = dir.join("gallery");
    std::fs::create_dir_all(&gallery)
        .with_context(|| format!("cannot create {}", gallery.display()))?;
    for ((label, subject, steps), mut recs) in groups {
        recs.sort_by_key(|r| (r.prompt_index, r.seed));
        let mut seeds: Vec<u64> = recs.iter().map(|r| r.seed).collect();
        seeds.sort_unstable();
        seeds.dedup();
        let mut tiles = Vec::new();
        for r in &recs {
            let path = dir.join(&r.image);
            let img = image::open(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .to_rgb8();
            let side = img.width().min(TILE);
            tiles.push(image::imageops::resize(
                &img,
                side,
                side,
                FilterType::Triangle,
            ));
        }
        let grid = compose_grid(&tiles, seeds.len(), 2)?;
        let path = gallery.join(format!("{}-{subject}-{steps}step.png", slug(&label)));
        write_png(&grid, &path)?;
        let mut prompts: Vec<(usize, &str)> = recs
            .iter()
            .map(|r| (r.prompt_index, r.prompt.as_str()))
            .collect();
        prompts.dedup();
        images.push(ReportImage {
            title: format!("{label}, {subject}, {steps} step(s)"),
            caption: format!(
                "Columns: seeds {:?}. Rows: {}",
                seeds,
                prompts
                    .iter()
                    .map(|(_, p)| *p)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            path,
        });
    }
    let page = Report {
        title: title.to_string(),
        summary,
        curves_svg: String::new(),
        images,
        events: Vec::new(),
        config_yaml: details,
    };
    let path = dir.join("gallery.html");
    write_text_atomic(&path, &page.render_html()?)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs_are_file_name_safe() {
        assert_eq!(
            super::slug("Custom Diffusion (SD 2.1)"),
            "custom-diffusion-sd-2-1"
        );
    }
}
