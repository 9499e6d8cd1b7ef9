//! The identity loss's image encoder for `trainer fit` on the toy models, in the layout `fit`'s
//! `towers` folder expects: IP-Adapter's `image_encoder/` (a transformers
//! `CLIPVisionModelWithProjection`) and `ip-adapter.safetensors` (its image projection).
//!
//! The toy world pre-trains one CLIP, so the encoder is that CLIP's vision tower and projection,
//! copied unchanged. IP-Adapter's projection is trained with an adapter the toy world does not
//! have; the identity loss only compares projected tokens by cosine, so the stand-in is a seeded
//! orthogonal map per token followed by an identity LayerNorm, which keeps the angles between
//! (centred) embeddings. The coupling this creates (the ID loss reads the network that scores
//! CLIP-I) has a counterpart in the paper, whose DINOv1 discriminator backbone is its evaluation
//! DINO; the toy table's docs say so.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use runtime::GaussianRng;
use tch::{Kind, Tensor};

use crate::checkpoint::{create_folder_beside, read_tensors, write_beside};

/// IP-Adapter's image tokens (`clip_extra_context_tokens` of ip-adapter_sd15).
pub const IP_TOKENS: i64 = 4;

/// Writes `towers/image_encoder/` and `towers/ip-adapter.safetensors` from `towers/clip/` unless
/// they exist; `cross_attention_dim` is the UNets' (the width of IP-Adapter's tokens).
pub fn write_fit_towers(towers: &Path, cross_attention_dim: i64, seed: u64) -> Result<()> {
    let clip = towers.join("clip");
    let encoder = towers.join("image_encoder");
    if !encoder.exists() {
        let config_path = clip.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", config_path.display()))?;
        let vision = vision_config(&config)
            .with_context(|| format!("{}: not a CLIPModel config", config_path.display()))?;
        let tensors = read_tensors(&[clip.join("model.safetensors")])?;
        let mut vision_tensors: Vec<(String, Tensor)> = tensors
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with("vision_model.") || name == "visual_projection.weight"
            })
            .collect();
        ensure!(
            vision_tensors
                .iter()
                .any(|(n, _)| n == "visual_projection.weight"),
            "{}: no visual_projection.weight",
            clip.display()
        );
        vision_tensors.sort_by(|a, b| a.0.cmp(&b.0));
        create_folder_beside(&encoder, "image encoder", |tmp| {
            std::fs::write(
                tmp.join("config.json"),
                serde_json::to_string_pretty(&vision)? + "\n",
            )?;
            let file = tmp.join("model.safetensors");
            Tensor::write_safetensors(&vision_tensors, &file)
                .with_context(|| format!("cannot write {}", file.display()))
        })?;
    }
    let projection = towers.join("ip-adapter.safetensors");
    if !projection.exists() {
        let config_path = encoder.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let config: serde_json::Value = serde_json::from_str(&text)?;
        let embed_dim = config["projection_dim"]
            .as_i64()
            .with_context(|| format!("{}: no projection_dim", config_path.display()))?;
        let tensors = ip_projection(embed_dim, cross_attention_dim, seed);
        write_beside(&projection, |tmp| {
            Tensor::write_safetensors(&tensors, tmp)
                .with_context(|| format!("cannot write {}", projection.display()))
        })?;
    }
    Ok(())
}

/// A `CLIPVisionModelWithProjection` config from a `CLIPModel` config: its `vision_config` with
/// the model's `projection_dim`.
fn vision_config(config: &serde_json::Value) -> Option<serde_json::Value> {
    let mut vision = config.get("vision_config")?.clone();
    let object = vision.as_object_mut()?;
    object.insert(
        "architectures".into(),
        serde_json::json!(["CLIPVisionModelWithProjection"]),
    );
    object.insert("model_type".into(), "clip_vision_model".into());
    object.insert(
        "projection_dim".into(),
        config.get("projection_dim")?.clone(),
    );
    Some(vision)
}

/// `image_proj.*` of an IP-Adapter file: `proj` maps the embedding to [`IP_TOKENS`] tokens of
/// width `dim`, each by its own orthogonal map (the leading `dim` × `embed_dim` block of a
/// seeded Gaussian matrix's Q factor); zero bias; the LayerNorm starts as the identity.
fn ip_projection(embed_dim: i64, dim: i64, seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = GaussianRng::new(seed);
    let side = embed_dim.max(dim);
    let blocks: Vec<Tensor> = (0..IP_TOKENS)
        .map(|_| {
            let noise = Tensor::from_slice(&rng.normal((side * side) as usize)).view([side, side]);
            let (q, r) = Tensor::linalg_qr(&noise, "reduced");
            // Q is unique once R's diagonal is made positive.
            let q = q * r.diagonal(0, 0, 1).sign().unsqueeze(0);
            q.narrow(0, 0, dim).narrow(1, 0, embed_dim)
        })
        .collect();
    let weight = Tensor::cat(&blocks, 0).contiguous();
    let zeros = |n: i64| Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
    // In name order.
    [
        ("image_proj.norm.bias", zeros(dim)),
        ("image_proj.norm.weight", zeros(dim) + 1.0),
        ("image_proj.proj.bias", zeros(IP_TOKENS * dim)),
        ("image_proj.proj.weight", weight),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each token's map is orthogonal, so it keeps the angle between two embeddings.
    #[test]
    fn the_projection_keeps_angles_per_token() {
        let tensors = ip_projection(8, 8, 3);
        let weight = &tensors
            .iter()
            .find(|(n, _)| n == "image_proj.proj.weight")
            .unwrap()
            .1;
        assert_eq!(weight.size(), [IP_TOKENS * 8, 8]);
        for k in 0..IP_TOKENS {
            let q = weight.narrow(0, k * 8, 8);
            let gram = q.matmul(&q.tr());
            let err = (gram - Tensor::eye(8, (Kind::Float, tch::Device::Cpu)))
                .abs()
                .max()
                .double_value(&[]);
            assert!(err < 1e-5, "token {k}: QQᵀ differs from I by {err}");
        }
        // The same seed gives the same bytes.
        let again = ip_projection(8, 8, 3);
        for ((na, a), (nb, b)) in tensors.iter().zip(&again) {
            assert_eq!(na, nb);
            assert!(a.equal(b), "{na} differs between two calls with one seed");
        }
    }
}
