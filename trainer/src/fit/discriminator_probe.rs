//! `trainer discriminate`: what a trained run's discriminator heads call real. Each image of
//! some folders is centre-cropped and resized to the run's resolution and scored by every head
//! of the run's final checkpoint: P(real), the softmax of its two logits. When a run collapses
//! (one picture for every prompt), this tells whether the heads tell photos from samples by the
//! subject or by something else, e.g. by scoring the subject rendered in new scenes.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use tch::{Kind, Tensor};

use super::data::{center_square, load_photos};
use super::distill::{stack_config, towers_dir};
use super::run_checkpoint::{self, Contents};
use crate::checkpoint::LoadOptions;
use crate::device::{parse_device, parse_kind, upload};
use crate::eval::metrics::Stat;
use crate::eval::table::cell;
use crate::losses::adversarial::REAL;
use crate::losses::stack::LossStack;

/// Images scored per forward pass.
const CHUNK: usize = 16;

/// One image's P(real) under each head.
#[derive(Debug, Clone)]
pub struct ImageScore {
    /// The image file.
    pub path: PathBuf,
    /// P(real) per head, in [`Probe::heads`] order.
    pub p_real: Vec<f64>,
}

/// The scores of every image of the probed folders.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The heads' names (dinov1, dinov2, ip), in the run's order.
    pub heads: Vec<String>,
    /// The iteration of the checkpoint whose heads scored.
    pub iteration: usize,
    /// Per folder: its path and its images' scores.
    pub folders: Vec<(PathBuf, Vec<ImageScore>)>,
}

/// Loads `run`'s final checkpoint (its config, on `device` when given) and scores every image of
/// `folders` with its heads. Only the towers and the heads are loaded: the two UNets, the VAE
/// and the text encoder of the fit are not needed to score pixels. Refuses baselines and runs
/// without discriminators.
pub fn probe(run: &Path, folders: &[PathBuf], device: Option<&str>) -> Result<Probe> {
    let mut config = super::run_dir::run_config(run)?;
    ensure!(
        !config.method.is_baseline(),
        "{} is a {} run: only EchoDistill runs train discriminators",
        run.display(),
        config.method.display_name()
    );
    ensure!(
        !config.discriminators.is_empty(),
        "{} trained no discriminators (discriminators: [])",
        run.display()
    );
    if let Some(d) = device {
        config.device = d.to_string();
    }
    config.validate()?;
    let side = config.resolution as u32;
    let opts = LoadOptions {
        device: parse_device(&config.device)?,
        kind: parse_kind(&config.dtype)?,
        variant: None,
    };
    let stack = LossStack::load(&towers_dir(&config)?, opts, &stack_config(&config))?;
    let ensemble = &stack.ensemble;
    let state = run_checkpoint::load(
        run,
        Contents {
            stores: vec![("heads", &ensemble.heads)],
            optimizers: Vec::new(),
        },
    )?;
    let iteration = run_checkpoint::iteration(&state)
        .with_context(|| format!("{}: the checkpoint", run.display()))?;
    let device = ensemble.heads.device();
    let mut scored = Vec::new();
    for folder in folders {
        let photos = load_photos(folder)?;
        let mut scores = Vec::new();
        for chunk in photos.chunks(CHUNK) {
            let batch: Vec<Tensor> = chunk
                .iter()
                .map(|p| center_square(&p.image, side))
                .collect();
            let images = upload(&Tensor::stack(&batch, 0), device);
            let p: Vec<Vec<f64>> = tch::no_grad(|| -> Result<_> {
                Ok(ensemble
                    .logits(&images)?
                    .iter()
                    .map(|l| {
                        let p = l.to_kind(Kind::Double).softmax(-1, Kind::Double);
                        Vec::<f64>::try_from(p.select(1, REAL).to_device(tch::Device::Cpu))
                    })
                    .collect::<std::result::Result<_, _>>()?)
            })?;
            for (i, photo) in chunk.iter().enumerate() {
                scores.push(ImageScore {
                    path: photo.path.clone(),
                    p_real: p.iter().map(|head| head[i]).collect(),
                });
            }
        }
        scored.push((folder.clone(), scores));
    }
    Ok(Probe {
        heads: ensemble
            .members
            .iter()
            .map(|m| m.backbone.name().to_string())
            .collect(),
        iteration,
        folders: scored,
    })
}

impl Probe {
    /// Mean ± SE of P(real) per folder and head, then over the heads: a markdown table.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "| Folder | Images | {} | mean of heads |\n| --- | ---: |{} ---: |\n",
            self.heads
                .iter()
                .map(|h| format!("P(real) {h}"))
                .collect::<Vec<_>>()
                .join(" | "),
            " ---: |".repeat(self.heads.len())
        );
        for (folder, scores) in &self.folders {
            let mut cells = Vec::new();
            for k in 0..self.heads.len() {
                let p: Vec<f64> = scores.iter().map(|x| x.p_real[k]).collect();
                cells.push(cell(&Stat::of(&p)));
            }
            let per_image: Vec<f64> = scores
                .iter()
                .map(|x| x.p_real.iter().sum::<f64>() / x.p_real.len() as f64)
                .collect();
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                folder.display(),
                scores.len(),
                cells.join(" | "),
                cell(&Stat::of(&per_image))
            ));
        }
        s
    }

    /// One row per image: folder, file and P(real) per head.
    pub fn csv(&self) -> String {
        let mut s = format!(
            "folder,file,{}\n",
            self.heads
                .iter()
                .map(|h| format!("p_real_{h}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        for (folder, scores) in &self.folders {
            for x in scores {
                let name = x.path.file_name().unwrap_or_default().to_string_lossy();
                let p: Vec<String> = x.p_real.iter().map(|v| format!("{v:.6}")).collect();
                s.push_str(&format!("{},{name},{}\n", folder.display(), p.join(",")));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_name_every_head_and_folder() {
        let p = Probe {
            heads: vec!["dinov1".into(), "ip".into()],
            iteration: 3,
            folders: vec![(
                PathBuf::from("refs"),
                vec![
                    ImageScore {
                        path: "refs/a.png".into(),
                        p_real: vec![0.25, 0.75],
                    },
                    ImageScore {
                        path: "refs/b.png".into(),
                        p_real: vec![0.75, 0.25],
                    },
                ],
            )],
        };
        let md = p.markdown();
        assert!(md.contains("| P(real) dinov1 | P(real) ip |"), "{md}");
        assert!(
            md.contains("| refs | 2 | 0.500 ± 0.250 | 0.500 ± 0.250 | 0.500 ± 0.000 |"),
            "{md}"
        );
        assert_eq!(
            p.csv(),
            "folder,file,p_real_dinov1,p_real_ip\nrefs,a.png,0.250000,0.750000\nrefs,b.png,0.750000,0.250000\n"
        );
    }
}
