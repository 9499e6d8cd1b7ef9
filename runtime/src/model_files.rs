//! The files of a diffusers/transformers model folder, read without a tensor library: which
//! safetensors files hold a component's weights (plain, a variant such as fp16, or sharded),
//! their headers and metadata, byte ranges of single tensors, and the fingerprint that ties a
//! run's learned weights to the base weights they replace. Shared by the trainer and the exporter.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

/// The safetensors files holding a component's weights: `BASE[.variant].safetensors`, or the
/// shards an `…safetensors.index.json` lists. `base` is `diffusion_pytorch_model` (diffusers) or
/// `model` (transformers). Without a variant the plain file is preferred and an fp16 one is used
/// when it is all there is. Pickle `.bin` files are refused with a conversion hint.
pub fn weight_files(dir: &Path, base: &str, variant: Option<&str>) -> Result<Vec<PathBuf>> {
    check_component_dir(dir)?;
    let mut candidates = Vec::new();
    if let Some(v) = variant {
        candidates.push(format!("{base}.{v}.safetensors"));
    }
    candidates.push(format!("{base}.safetensors"));
    if variant.is_none() {
        candidates.push(format!("{base}.fp16.safetensors"));
    }
    for name in &candidates {
        let single = dir.join(name);
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join(format!("{name}.index.json"));
        if index.is_file() {
            return shards(dir, &index);
        }
    }
    for pickle in [
        format!("{base}.bin"),
        format!("{base}.fp16.bin"),
        format!("{base}.ckpt"),
    ] {
        let path = dir.join(&pickle);
        if path.is_file() {
            bail!(
                "{} is a pickle checkpoint, which is not read (loading pickles can run code). Convert it once with diffusers/transformers: `Model.from_pretrained(\"{}\").save_pretrained(\"{}\", safe_serialization=True)`",
                path.display(),
                dir.display(),
                dir.display()
            );
        }
    }
    bail!(
        "{}: no weights found (looked for {})",
        dir.display(),
        candidates.join(", ")
    )
}

/// Fails with a hint unless `dir` is a folder (a component such as `unet/`).
pub fn check_component_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} not found: expected a model folder with config.json and safetensors weights (inside a diffusers model: unet/, vae/, text_encoder/)",
            dir.display()
        );
    }
    Ok(())
}

fn shards(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no weight_map", index.display()))?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(|v| v.as_str())
        .map(|f| dir.join(f))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Where one tensor lies in a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// safetensors dtype name: `F32`, `F16`, `BF16`, ...
    pub dtype: String,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Absolute byte offset of the data in the file.
    pub start: u64,
    /// Length of the data in bytes.
    pub len: u64,
}

/// A safetensors file's index: every tensor's place, and the `__metadata__` strings.
#[derive(Debug, Clone)]
pub struct SafetensorsHeader {
    /// The file.
    pub path: PathBuf,
    /// Tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The metadata strings (empty when the file has none).
    pub metadata: BTreeMap<String, String>,
}

impl SafetensorsHeader {
    /// Reads and checks the header of `path` (offsets inside the file, sizes matching shapes).
    pub fn read(path: &Path) -> Result<Self> {
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let file_len = file.metadata()?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let len = u64::from_le_bytes(len);
        ensure!(
            len < 100 << 20 && 8 + len <= file_len,
            "{}: not a safetensors file (header of {len} bytes)",
            path.display()
        );
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header)
            .with_context(|| format!("{}: truncated header", path.display()))?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
            .with_context(|| format!("{}: malformed safetensors header", path.display()))?;
        let mut tensors = BTreeMap::new();
        let mut metadata = BTreeMap::new();
        for (name, info) in header {
            if name == "__metadata__" {
                metadata = serde_json::from_value(info).unwrap_or_default();
                continue;
            }
            let dtype = info["dtype"].as_str().unwrap_or("?").to_string();
            let shape: Vec<u64> = serde_json::from_value(info["shape"].clone())
                .with_context(|| format!("{}: bad shape of {name}", path.display()))?;
            let offsets: [u64; 2] = serde_json::from_value(info["data_offsets"].clone())
                .with_context(|| format!("{}: bad offsets of {name}", path.display()))?;
            let start = 8 + len + offsets[0];
            ensure!(
                offsets[1] >= offsets[0] && 8 + len + offsets[1] <= file_len,
                "{}: {name} lies outside the file (truncated download?)",
                path.display()
            );
            let elements: u64 = shape.iter().product();
            if let Some(size) = dtype_size(&dtype) {
                ensure!(
                    elements * size == offsets[1] - offsets[0],
                    "{}: {name} has {} bytes for shape {shape:?} of {dtype}",
                    path.display(),
                    offsets[1] - offsets[0]
                );
            }
            tensors.insert(
                name,
                TensorInfo {
                    dtype,
                    shape,
                    start,
                    len: offsets[1] - offsets[0],
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            metadata,
        })
    }

    /// The raw little-endian bytes of `name`.
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let info = self
            .tensors
            .get(name)
            .with_context(|| format!("{name} is not in {}", self.path.display()))?;
        let mut file = File::open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        let mut data = vec![0u8; info.len as usize];
        file.seek(SeekFrom::Start(info.start))?;
        file.read_exact(&mut data)
            .with_context(|| format!("{}: truncated tensor {name}", self.path.display()))?;
        Ok(data)
    }
}

/// Bytes per element of a safetensors dtype, when it is a numeric one this project reads.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    match dtype {
        "F64" | "I64" | "U64" => Some(8),
        "F32" | "I32" | "U32" => Some(4),
        "F16" | "BF16" | "I16" | "U16" => Some(2),
        "I8" | "U8" | "BOOL" => Some(1),
        _ => None,
    }
}

/// The `__metadata__` of a safetensors file.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    Ok(SafetensorsHeader::read(path)?.metadata)
}

/// A stored tensor: dtype name, shape, raw little-endian bytes.
pub type RawTensor = (String, Vec<u64>, Vec<u8>);

/// Raw bytes, dtype and shape of the named tensors of one checkpoint's `files`, read from their
/// byte ranges only (a UNet file is gigabytes; its K/V are a few percent of it).
pub fn read_raw(files: &[PathBuf], names: &[String]) -> Result<BTreeMap<String, RawTensor>> {
    let mut found = BTreeMap::new();
    for path in files {
        let header = SafetensorsHeader::read(path)?;
        for name in names {
            if let Some(info) = header.tensors.get(name) {
                let data = header.read_bytes(name)?;
                found.insert(name.clone(), (info.dtype.clone(), info.shape.clone(), data));
            }
        }
    }
    if let Some(missing) = names.iter().find(|n| !found.contains_key(*n)) {
        bail!(
            "{missing} is not in {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(found)
}

/// SHA-256 (hex) of the named tensors as stored in one checkpoint's `files`: for each name in
/// sorted order, the name, its dtype, its shape and its raw little-endian bytes. A run records
/// it for the base K/V it replaces; a bake recomputes it from the base and refuses a mismatch.
pub fn fingerprint(files: &[PathBuf], names: &[String]) -> Result<String> {
    let raw = read_raw(files, names)?;
    let mut hash = Sha256::new();
    for (name, (dtype, shape, data)) in &raw {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(dtype.as_bytes());
        hash.update([0]);
        for d in shape {
            hash.update(d.to_le_bytes());
        }
        hash.update(data);
    }
    Ok(hex(&hash.finalize()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
