//! ONNX Runtime, loaded at run time from its shared library.
//!
//! The library is not linked: `ort`'s `load-dynamic` mode opens `libonnxruntime.so` by path, so
//! a missing or wrong library is an error the caller can report rather than a crash at start-up.

use std::path::{Path, PathBuf};

/// The library could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load ONNX Runtime from {}: {message}; install onnxruntime 1.31 (./run.sh setup) or set ORT_DYLIB_PATH to its libonnxruntime.so", .path.display())]
pub struct OnnxRuntimeLoadError {
    /// The library path tried.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Loads ONNX Runtime from `path` once per process and returns its build description.
pub fn load_onnxruntime(path: &Path) -> Result<&'static str, OnnxRuntimeLoadError> {
    let error = |message: String| OnnxRuntimeLoadError {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(error("no such file".into()));
    }
    // The builder is dropped unused: only the library load matters here, sessions come later.
    let _ = ort::init_from(path).map_err(|e| error(e.to_string()))?;
    Ok(ort::info())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_names_the_path_and_the_fix() {
        let err = load_onnxruntime(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/libonnxruntime.so"), "{text}");
        assert!(text.contains("ORT_DYLIB_PATH"), "{text}");
    }
}
