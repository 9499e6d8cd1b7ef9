//! `exporter inspect`: what a model folder or an `.onnx` file holds, so a user can see what they
//! ship. For a folder the manifest's hashes are checked and a mismatch fails the command.

use std::path::Path;

use anyhow::{bail, Result};
use onnx_protobuf::{tensor_proto::DataType, GraphProto, ModelProto, ValueInfoProto};
use protobuf::Enum;
use runtime::manifest::Manifest;

use crate::cli::InspectArgs;
use crate::onnx::model_file::{external_files, read_model};

/// Nodes of `g` and of the graphs in its nodes' attributes (`If` branches).
fn count_nodes(g: &GraphProto) -> usize {
    g.node.len()
        + g.node
            .iter()
            .flat_map(|n| &n.attribute)
            .filter_map(|a| a.g.as_ref())
            .map(count_nodes)
            .sum::<usize>()
}

fn type_name(elem: i32) -> String {
    DataType::from_i32(elem)
        .map(|t| format!("{t:?}").to_lowercase())
        .unwrap_or_else(|| format!("type {elem}"))
}

fn describe(v: &ValueInfoProto) -> String {
    let t = v.type_.tensor_type();
    let dims: Vec<String> = t
        .shape
        .dim
        .iter()
        .map(|d| {
            if d.has_dim_param() {
                d.dim_param().to_string()
            } else {
                d.dim_value().to_string()
            }
        })
        .collect();
    format!("{} {}[{}]", v.name, type_name(t.elem_type), dims.join(", "))
}

/// Parameters (initializer values) of a model.
pub fn parameters(model: &ModelProto) -> u64 {
    model
        .graph
        .initializer
        .iter()
        .map(|t| t.dims.iter().product::<i64>().max(1) as u64)
        .sum()
}

fn show_model(path: &Path) -> Result<()> {
    let model = read_model(path)?;
    let opsets: Vec<String> = model
        .opset_import
        .iter()
        .map(|o| {
            let domain = if o.domain.is_empty() {
                "ai.onnx"
            } else {
                &o.domain
            };
            format!("{domain} {}", o.version)
        })
        .collect();
    println!("{}", path.display());
    println!(
        "  producer {} {}, IR version {}, opset {}",
        model.producer_name,
        model.producer_version,
        model.ir_version,
        opsets.join(", ")
    );
    let g = &model.graph;
    println!(
        "  {} nodes (subgraphs included), {} initializers, {:.2} M parameters",
        count_nodes(g),
        g.initializer.len(),
        parameters(&model) as f64 / 1e6
    );
    for input in &g.input {
        println!("  input  {}", describe(input));
    }
    for output in &g.output {
        println!("  output {}", describe(output));
    }
    let external = external_files(&model);
    if !external.is_empty() {
        println!("  external data: {}", external.join(", "));
    }
    for p in &model.metadata_props {
        println!("  {} = {}", p.key, p.value);
    }
    Ok(())
}

/// Runs `exporter inspect`.
pub fn run(args: &InspectArgs) -> Result<()> {
    let path = &args.path;
    if path.is_file() {
        return show_model(path);
    }
    let manifest = Manifest::read(path)?;
    println!(
        "{}: {} v{} by {}, base {}{}",
        path.display(),
        manifest.format,
        manifest.format_version,
        manifest.producer,
        manifest.base_model,
        manifest
            .method
            .as_ref()
            .map(|m| format!(", method {m}"))
            .unwrap_or_default()
    );
    let tokens: Vec<String> = manifest
        .tokens
        .iter()
        .map(|t| format!("{} = {}", t.token, t.id))
        .collect();
    println!(
        "  tokens [{}], {}×{} px, steps {:?}, dtype {}, latent scaling {}",
        tokens.join(", "),
        manifest.resolution.width,
        manifest.resolution.height,
        manifest.steps,
        manifest.dtype,
        manifest.latent.scaling_factor
    );
    for (role, network) in &manifest.networks {
        print!("[{role}] ");
        show_model(&path.join(&network.file))?;
    }
    let problems = manifest.verify(path);
    if problems.is_empty() {
        println!(
            "manifest: all {} files match their sha256",
            manifest.files.len()
        );
        Ok(())
    } else {
        for p in &problems {
            eprintln!("  {p}");
        }
        bail!(
            "{}: {} of {} files do not match the manifest",
            path.display(),
            problems.len(),
            manifest.files.len()
        )
    }
}
