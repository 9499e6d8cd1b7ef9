//! Runs one image tower on inputs from a safetensors file and writes its outputs, so a Python
//! script can compare full-size towers with transformers (tests/scripts/full_size_towers.py).
//!
//! usage: tower_outputs TOWER DIR INPUT OUTPUT [IP_ADAPTER_FILE]
//!   TOWER: dinov1 | dinov2 | clip-vision | ip   (ip: DIR is the image encoder)
//!   INPUT: `pixel_values` (batch, 3, h, w); for ip also `image_embeds`
//!   OUTPUT: `last_hidden_state`, plus `image_embeds` (clip-vision) or `tokens` (ip)

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};
use trainer::checkpoint::LoadOptions;
use trainer::models::ip_adapter::ImageProjection;
use trainer::towers::{load_clip_vision, load_dino_v1, load_dino_v2};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        bail!("usage: tower_outputs TOWER DIR INPUT OUTPUT [IP_ADAPTER_FILE]");
    }
    let (tower, dir, input, output) = (&args[1], Path::new(&args[2]), &args[3], &args[4]);
    let opts = LoadOptions {
        device: Device::Cpu,
        kind: Kind::Float,
        variant: None,
    };
    let inputs: HashMap<String, Tensor> = Tensor::read_safetensors(input)?.into_iter().collect();
    let pixels = inputs.get("pixel_values").context("no pixel_values")?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    tch::no_grad(|| -> Result<()> {
        match tower.as_str() {
            "dinov1" => out.push((
                "last_hidden_state".into(),
                load_dino_v1(dir, opts)?.model.forward(pixels)?,
            )),
            "dinov2" => out.push((
                "last_hidden_state".into(),
                load_dino_v2(dir, opts)?.model.forward(pixels)?,
            )),
            "clip-vision" | "ip" => {
                let m = load_clip_vision(dir, opts)?;
                let o = m.model.forward(pixels)?;
                if tower == "ip" {
                    let file = args.get(5).context("ip needs IP_ADAPTER_FILE")?;
                    let (_vs, proj) =
                        ImageProjection::load(Path::new(file), Device::Cpu, Kind::Float)?;
                    let embeds = inputs.get("image_embeds").context("no image_embeds")?;
                    out.push(("tokens".into(), proj.forward(embeds)?));
                }
                out.push(("last_hidden_state".into(), o.last_hidden_state));
                out.push(("image_embeds".into(), o.image_embeds));
            }
            other => bail!("unknown tower {other}"),
        }
        Ok(())
    })?;
    Tensor::write_safetensors(&out, output)?;
    Ok(())
}
