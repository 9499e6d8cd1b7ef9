//! `exporter bake --patch BASE.onnx`: the run's learned matrices written into a UNet ONNX
//! someone else exported and optimised (Olive, optimum), whose initializer names need not be
//! diffusers'. Each base matrix the run changes (K/V, or the projections LoRA adapts) is found
//! by content, as stored or transposed, in the graph's precision; the patch is written only
//! when every one of them is found exactly once.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use runtime::hub::model_dir;

use crate::cli::BakeArgs;
use crate::onnx::model_file::{read_model, tensor_bytes, write_proto, PROTOBUF_LIMIT};
use crate::onnx::Array;
use crate::run_folder::{Run, UnetChange};
use crate::weights::Weights;

/// `array` (optionally transposed) as bytes of `data_type`.
fn encode(array: &Array, transposed: bool, data_type: i32) -> Option<Vec<u8>> {
    let a = if transposed {
        array.transposed()
    } else {
        array.clone()
    };
    if data_type == DataType::FLOAT as i32 {
        Some(a.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    } else if data_type == DataType::FLOAT16 as i32 {
        Some(
            a.data
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        )
    } else {
        None
    }
}

/// Runs `exporter bake --patch`.
pub fn run(args: &BakeArgs, onnx_path: &Path) -> Result<()> {
    let run_dir = args
        .run
        .as_deref()
        .context("--patch needs --run RUN_DIR: the run whose weights to write in")?;
    let run = Run::read(run_dir)?;
    let base = model_dir(&args.base)?;
    let unet = Weights::open(&base.join("unet"), "diffusion_pytorch_model")?;
    match &run.unet {
        UnetChange::None => bail!(
            "a {} run changes only the text encoder: there is nothing to patch in a UNet (bake it instead)",
            run.method
        ),
        UnetChange::Whole(_) => {
            bail!("a DreamBooth run changes every UNet weight: bake it instead of patching")
        }
        UnetChange::Replace { .. } | UnetChange::Lora { .. } => {}
    }
    let changes = run.changed_matrices(&unet, &args.base)?;
    let mut model = read_model(onnx_path)?;
    let dir = onnx_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();

    // Inline every initializer's data (external data is rewritten with the output).
    let initializers = &mut model.graph.mut_or_insert_default().initializer;
    for t in initializers.iter_mut() {
        t.raw_data = tensor_bytes(t, &dir)?;
        t.external_data.clear();
        t.data_location = DataLocation::DEFAULT.into();
    }
    // Candidate initializers by their two dimensions.
    let mut by_dims: BTreeMap<(i64, i64), Vec<usize>> = BTreeMap::new();
    for (i, t) in initializers.iter().enumerate() {
        if let [a, b] = t.dims[..] {
            by_dims.entry((a, b)).or_default().push(i);
        }
    }
    let mut matched: BTreeMap<usize, (usize, bool)> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut transposed_count = 0;
    for (c, change) in changes.iter().enumerate() {
        let (o, i) = (change.base.shape[0] as i64, change.base.shape[1] as i64);
        let mut found: Vec<(usize, bool)> = Vec::new();
        // As stored, then transposed; a square matrix is looked up both ways among the same
        // candidates, and a symmetric one counts once.
        for (dims, transposed) in [((o, i), false), ((i, o), true)] {
            for &idx in by_dims.get(&dims).map(Vec::as_slice).unwrap_or_default() {
                let t = &initializers[idx];
                let same = encode(&change.base, transposed, t.data_type)
                    .is_some_and(|bytes| bytes == t.raw_data);
                if same && !found.iter().any(|(f, _)| *f == idx) {
                    found.push((idx, transposed));
                }
            }
        }
        match found.as_slice() {
            [] => missing.push(change.name.clone()),
            [(idx, transposed)] => {
                if let Some((other, _)) = matched.get(idx) {
                    bail!(
                        "{} and {} have the same base values in {}: cannot tell which is which",
                        changes[*other].name,
                        change.name,
                        onnx_path.display()
                    );
                }
                transposed_count += usize::from(*transposed);
                matched.insert(*idx, (c, *transposed));
            }
            _ => bail!(
                "{} appears {} times in {}: cannot tell which to replace",
                change.name,
                found.len(),
                onnx_path.display()
            ),
        }
    }
    if !missing.is_empty() {
        bail!(
            "matched {} of {} matrices the run changes in {}; not found: {}{}. Refusing to write a partial patch: is this an export of {} (fused or quantised weights cannot be matched)?",
            matched.len(),
            changes.len(),
            onnx_path.display(),
            missing.iter().take(4).cloned().collect::<Vec<_>>().join(", "),
            if missing.len() > 4 { ", ..." } else { "" },
            args.base
        );
    }
    for (idx, (c, transposed)) in &matched {
        let t = &mut initializers[*idx];
        t.raw_data = encode(&changes[*c].new, *transposed, t.data_type)
            .expect("matched tensors are f32 or f16");
    }

    // Write beside the target, then rename the file (and its data) into place.
    let out = &args.out;
    if out.exists() && !args.force {
        bail!(
            "{} already exists: pass --force to replace it",
            out.display()
        );
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp_dir = parent.join(format!(".patch.tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp_dir)?;
    let tmp = tmp_dir.join(out.file_name().context("--out is not a file path")?);
    let result = write_proto(model, &tmp, args.external_data, PROTOBUF_LIMIT).and_then(|w| {
        for f in &w.files {
            let name = f.file_name().unwrap_or_default();
            std::fs::rename(f, parent.join(name))
                .with_context(|| format!("cannot write {}", parent.join(name).display()))?;
        }
        Ok(w)
    });
    let _ = std::fs::remove_dir_all(&tmp_dir);
    let written = result?;
    println!(
        "patched {} of {} matrices ({} stored transposed) from {} into {} ({} files)",
        matched.len(),
        changes.len(),
        transposed_count,
        run_dir.display(),
        out.display(),
        written.files.len()
    );
    Ok(())
}
