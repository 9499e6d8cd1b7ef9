//! transformers' `CLIPTextModel` as an ONNX graph: token embeddings (the learned token rows
//! appended after the vocabulary), positions, the causal encoder layers and the final LayerNorm.
//!
//! Input: `input_ids` (batch, sequence) int64. Output: `last_hidden_state` (batch, sequence,
//! hidden) f32, what SD's UNet attends to.

use anyhow::{bail, Result};
use onnx_protobuf::tensor_proto::DataType;
use runtime::model_config::ClipTextConfig;

use super::blocks;
use crate::onnx::graph::attr_int;
use crate::onnx::{Array, Dim, Graph, WeightType};
use crate::weights::Weights;

/// Builds the text encoder graph with `added_rows` (one row per added token, in id order)
/// after the checkpoint's vocabulary.
pub fn build(
    config: &ClipTextConfig,
    w: &mut Weights,
    added_rows: Option<&Array>,
    weight_type: WeightType,
) -> Result<Graph> {
    // transformers 5 saves `CLIPTextModel` without the `text_model.` prefix; older files have it.
    let prefix = if w
        .shape("text_model.embeddings.token_embedding.weight")
        .is_some()
    {
        "text_model."
    } else {
        ""
    };
    let hidden = config.hidden_size as usize;
    let heads = config.num_attention_heads as usize;
    if !hidden.is_multiple_of(heads) {
        bail!("text encoder: hidden_size {hidden} does not split into {heads} heads");
    }
    let mut g = Graph::new("text_encoder", weight_type);
    let ids = g.input(
        "input_ids",
        DataType::INT64,
        &[Dim::Named("batch"), Dim::Named("sequence")],
    );

    let table_name = format!("{prefix}embeddings.token_embedding.weight");
    let mut table = w.take(&table_name)?;
    if let Some(rows) = added_rows {
        if rows.shape[1..] != table.shape[1..] {
            bail!(
                "the token rows are {:?} wide, the text encoder's embeddings {:?}",
                rows.shape,
                table.shape
            );
        }
        table = table.concat_rows(rows);
    }
    let table = g.weight(&table_name, &table);
    let tokens = g.op("Gather", &[&table, &ids], vec![attr_int("axis", 0)]);
    let positions = w.take(&format!("{prefix}embeddings.position_embedding.weight"))?;
    let max = positions.shape[0];
    let positions = g.weight(
        &format!("{prefix}embeddings.position_embedding.weight"),
        &positions,
    );
    let ids_shape = g.shape(&ids);
    let one = g.ints(&[1]);
    let two = g.ints(&[2]);
    let zero = g.ints(&[0]);
    let n = g.slice(&ids_shape, &one, &two, &[0]);
    let used = g.slice(&positions, &zero, &n, &[0]);
    let mut x = g.add(&tokens, &used);

    // Causal mask: the lowest finite value above the diagonal, sliced to (sequence, sequence).
    let lowest = match weight_type {
        WeightType::F32 => f32::MIN,
        WeightType::F16 => half::f16::MIN.to_f32(),
    };
    let mut mask = vec![0f32; max * max];
    for i in 0..max {
        for j in i + 1..max {
            mask[i * max + j] = lowest;
        }
    }
    let mask = g.constant_compute(&Array::new(vec![max, max], mask));
    let starts = g.ints(&[0, 0]);
    let ends = g.concat(&[&n, &n], 0);
    let mask = g.slice(&mask, &starts, &ends, &[0, 1]);

    let eps = config.layer_norm_eps;
    for i in 0..config.num_hidden_layers as usize {
        let p = format!("{prefix}encoder.layers.{i}");
        g.push(&p);
        let h = blocks::layer_norm(&mut g, w, &x, &format!("{p}.layer_norm1"), eps)?;
        let q = blocks::linear(&mut g, w, &h, &format!("{p}.self_attn.q_proj"), true)?;
        let k = blocks::linear(&mut g, w, &h, &format!("{p}.self_attn.k_proj"), true)?;
        let v = blocks::linear(&mut g, w, &h, &format!("{p}.self_attn.v_proj"), true)?;
        let a = g.attention(&q, &k, &v, heads, hidden / heads, Some(&mask), false);
        let a = blocks::linear(&mut g, w, &a, &format!("{p}.self_attn.out_proj"), true)?;
        x = g.add(&x, &a);
        let h = blocks::layer_norm(&mut g, w, &x, &format!("{p}.layer_norm2"), eps)?;
        let h = blocks::linear(&mut g, w, &h, &format!("{p}.mlp.fc1"), true)?;
        let h = match config.hidden_act.as_str() {
            "gelu" => g.gelu(&h),
            "quick_gelu" => g.quick_gelu(&h),
            other => {
                bail!("text encoder: hidden_act {other:?} is not supported (gelu, quick_gelu)")
            }
        };
        let h = blocks::linear(&mut g, w, &h, &format!("{p}.mlp.fc2"), true)?;
        x = g.add(&x, &h);
        g.pop();
    }
    let x = blocks::layer_norm(&mut g, w, &x, &format!("{prefix}final_layer_norm"), eps)?;
    g.output_f32(
        &x,
        "last_hidden_state",
        &[
            Dim::Named("batch"),
            Dim::Named("sequence"),
            Dim::Fixed(config.hidden_size),
        ],
    );
    w.check_all_taken(&[])?;
    Ok(g)
}
