//! `.onnx` files: writing a [`Graph`] (weights inline, or in a `<name>_data` file beside it when
//! the protobuf would pass its 2 GiB limit) and reading models back, external data included.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use onnx_protobuf::tensor_proto::{DataLocation, DataType};
use onnx_protobuf::{
    GraphProto, Message, ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
};
use protobuf::Enum;

use super::graph::Graph;

/// The default-domain opset: 17 has LayerNormalization and is supported by onnxruntime 1.31
/// and onnxruntime-web 1.30 alike.
pub const OPSET: i64 = 17;
/// IR version 8, the one opset 17 requires.
pub const IR_VERSION: i64 = 8;
/// protobuf refuses messages of 2 GiB and more.
pub const PROTOBUF_LIMIT: u64 = 2 << 30;
/// Room left under the limit for the graph's nodes and names when deciding on external data.
const GRAPH_MARGIN: u64 = 64 << 20;
/// Tensors smaller than this stay inline even when weights go to external data.
const INLINE_BELOW: usize = 1024;
/// Alignment of tensors in the external data file (lets onnxruntime memory-map them).
const ALIGN: u64 = 4096;

/// Where weights go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExternalData {
    /// Inline, unless the file would pass protobuf's 2 GiB limit.
    Auto,
    /// Always in a `<file>_data` file beside the model.
    Always,
    /// Always inline; a model too big for that is refused.
    Never,
}

/// What [`write_model`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The `.onnx` file and, with external data, the data file.
    pub files: Vec<PathBuf>,
    /// Number of weight values.
    pub parameters: u64,
}

/// The external data file name of a model file: `unet.onnx` → `unet.onnx_data`.
pub fn data_file_name(model: &Path) -> String {
    format!(
        "{}_data",
        model.file_name().unwrap_or_default().to_string_lossy()
    )
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// Writes `graph` to `path` as a model with `metadata` (model-level key/value strings),
/// consuming it so its weights are not held twice. `limit` is the protobuf size limit
/// ([`PROTOBUF_LIMIT`]; smaller in tests).
pub fn write_model(
    graph: Graph,
    path: &Path,
    external: ExternalData,
    metadata: &[(String, String)],
    limit: u64,
) -> Result<Written> {
    let initializers = graph
        .initializers
        .into_iter()
        .map(|init| TensorProto {
            name: init.name,
            dims: init.dims,
            data_type: init.data_type as i32,
            raw_data: init.bytes,
            ..Default::default()
        })
        .collect();
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..Default::default()
        }],
        producer_name: "echodistill-exporter".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            name: graph.name,
            node: graph.nodes,
            initializer: initializers,
            input: graph.inputs,
            output: graph.outputs,
            ..Default::default()
        })
        .into(),
        metadata_props: metadata.iter().map(|(k, v)| entry(k, v)).collect(),
        ..Default::default()
    };
    write_proto(model, path, external, limit)
}

/// Writes a model whose initializers hold their data inline (`raw_data`) to `path`, moving
/// the weights to `<file>_data` beside it as `external` asks.
pub fn write_proto(
    mut model: ModelProto,
    path: &Path,
    external: ExternalData,
    limit: u64,
) -> Result<Written> {
    let initializers = &mut model.graph.mut_or_insert_default().initializer;
    let weight_bytes: u64 = initializers.iter().map(|t| t.raw_data.len() as u64).sum();
    let parameters: u64 = initializers
        .iter()
        .map(|t| t.dims.iter().product::<i64>().max(1) as u64)
        .sum();
    let use_external = match external {
        ExternalData::Always => true,
        ExternalData::Never => false,
        ExternalData::Auto => weight_bytes + GRAPH_MARGIN.min(limit / 4) >= limit,
    };
    let mut files = vec![path.to_path_buf()];
    if use_external {
        let data_name = data_file_name(path);
        let data_path = path.with_file_name(&data_name);
        let file = File::create(&data_path)
            .with_context(|| format!("cannot create {}", data_path.display()))?;
        let mut writer = BufWriter::new(file);
        let mut offset = 0u64;
        for tensor in initializers.iter_mut() {
            if tensor.raw_data.len() < INLINE_BELOW {
                continue;
            }
            let bytes = std::mem::take(&mut tensor.raw_data);
            let start = offset.div_ceil(ALIGN) * ALIGN;
            writer.write_all(&vec![0u8; (start - offset) as usize])?;
            writer.write_all(&bytes)?;
            offset = start + bytes.len() as u64;
            tensor.data_location = DataLocation::EXTERNAL.into();
            tensor.external_data = vec![
                entry("location", &data_name),
                entry("offset", &start.to_string()),
                entry("length", &bytes.len().to_string()),
            ];
        }
        writer
            .flush()
            .with_context(|| format!("cannot write {}", data_path.display()))?;
        files.push(data_path);
    }
    let size = model.compute_size();
    if size >= limit {
        for f in &files {
            let _ = std::fs::remove_file(f);
        }
        bail!(
            "{} would be a {size}-byte protobuf, over the {limit}-byte limit protobuf can read: write its weights as external data (--external-data auto or always)",
            path.display()
        );
    }
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = BufWriter::new(file);
    model
        .write_to_writer(&mut writer)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Written { files, parameters })
}

/// Reads a model's protobuf (not its external data).
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata()?.len();
    ensure!(
        len < PROTOBUF_LIMIT,
        "{} is {len} bytes, over protobuf's 2 GiB limit: not a loadable ONNX model",
        path.display()
    );
    ModelProto::parse_from_reader(&mut BufReader::new(file))
        .with_context(|| format!("{} is not an ONNX model", path.display()))
}

/// The external data files a model refers to, relative to its folder.
pub fn external_files(model: &ModelProto) -> Vec<String> {
    let mut files: Vec<String> = model
        .graph
        .initializer
        .iter()
        .filter_map(|t| {
            t.external_data
                .iter()
                .find(|e| e.key == "location")
                .map(|e| e.value.clone())
        })
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Bytes per element of the float and integer types initializers use.
pub fn element_size(data_type: i32) -> Option<usize> {
    let t = DataType::from_i32(data_type)?;
    Some(match t {
        DataType::FLOAT | DataType::INT32 | DataType::UINT32 => 4,
        DataType::FLOAT16 | DataType::BFLOAT16 | DataType::INT16 | DataType::UINT16 => 2,
        DataType::DOUBLE | DataType::INT64 | DataType::UINT64 => 8,
        DataType::INT8 | DataType::UINT8 | DataType::BOOL => 1,
        _ => return None,
    })
}

/// An initializer's raw little-endian bytes, from `raw_data`, its typed field, or its external
/// data file (relative to `dir`, the model's folder).
pub fn tensor_bytes(tensor: &TensorProto, dir: &Path) -> Result<Vec<u8>> {
    if tensor.data_location.value() == DataLocation::EXTERNAL as i32 {
        let get = |key: &str| {
            tensor
                .external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.clone())
        };
        let location = get("location")
            .with_context(|| format!("{}: external data without a location", tensor.name))?;
        let offset: u64 = get("offset").map_or(Ok(0), |v| v.parse())?;
        let elements: i64 = tensor.dims.iter().product();
        let length: u64 = match get("length") {
            Some(v) => v.parse()?,
            None => {
                elements as u64
                    * element_size(tensor.data_type)
                        .with_context(|| format!("{}: unknown element type", tensor.name))?
                        as u64
            }
        };
        let path = dir.join(&location);
        let mut file = File::open(&path).with_context(|| {
            format!(
                "{}: cannot open its external data {}",
                tensor.name,
                path.display()
            )
        })?;
        file.seek(SeekFrom::Start(offset))?;
        let mut data = vec![0u8; length as usize];
        file.read_exact(&mut data)
            .with_context(|| format!("{}: {} is truncated", tensor.name, path.display()))?;
        return Ok(data);
    }
    if !tensor.raw_data.is_empty() {
        return Ok(tensor.raw_data.clone());
    }
    Ok(match DataType::from_i32(tensor.data_type) {
        Some(DataType::FLOAT) => tensor
            .float_data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        Some(DataType::FLOAT16) | Some(DataType::BFLOAT16) => tensor
            .int32_data
            .iter()
            .flat_map(|v| (*v as u16).to_le_bytes())
            .collect(),
        Some(DataType::INT64) => tensor
            .int64_data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        Some(DataType::INT32) => tensor
            .int32_data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        Some(DataType::DOUBLE) => tensor
            .double_data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{Array, Dim, WeightType};

    fn tiny_graph() -> Graph {
        let mut g = Graph::new("t", WeightType::F32);
        let x = g.input("x", DataType::FLOAT, &[Dim::Named("batch"), Dim::Fixed(64)]);
        let w = Array::new(vec![64, 64], (0..4096).map(|i| i as f32).collect());
        let y = g.linear(&x, "lin", &w, None);
        g.output(
            &y,
            "y",
            DataType::FLOAT,
            &[Dim::Named("batch"), Dim::Fixed(64)],
        );
        g
    }

    #[test]
    fn external_data_round_trips_and_oversize_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        // Inline under a 10 kB limit would not fit the 16 kB weight: refused, nothing left.
        let err = write_model(tiny_graph(), &path, ExternalData::Never, &[], 10_000).unwrap_err();
        assert!(err.to_string().contains("external data"), "{err}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        // Auto moves it out under the same limit, and it reads back bit for bit.
        let written = write_model(tiny_graph(), &path, ExternalData::Auto, &[], 10_000).unwrap();
        assert_eq!(written.files.len(), 2);
        assert_eq!(written.parameters, 4096);
        let model = read_model(&path).unwrap();
        assert_eq!(external_files(&model), vec!["m.onnx_data".to_string()]);
        let t = &model.graph.initializer[0];
        let bytes = tensor_bytes(t, dir.path()).unwrap();
        let expected = Array::new(vec![64, 64], (0..4096).map(|i| i as f32).collect())
            .transposed()
            .data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>();
        assert_eq!(bytes, expected);
        // Under the real limit it stays inline.
        let written =
            write_model(tiny_graph(), &path, ExternalData::Auto, &[], PROTOBUF_LIMIT).unwrap();
        assert_eq!(written.files.len(), 1);
    }
}
