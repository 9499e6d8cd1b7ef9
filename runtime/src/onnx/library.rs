//! ONNX Runtime, loaded at run time from its shared library.
//!
//! The library is not linked: `ort`'s `load-dynamic` mode opens `libonnxruntime.so` by path, so
//! a missing or wrong library is an error the caller can report rather than a crash at start-up.
//! The path is, in order: the one given, `ORT_DYLIB_PATH`, or a library beside the executable.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

/// The library could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot load ONNX Runtime from {}: {message}; install onnxruntime 1.31 (./run.sh setup) or set ORT_DYLIB_PATH to its libonnxruntime.so", .path.display())]
pub struct OnnxRuntimeLoadError {
    /// The library path tried.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// The environment variable naming the library.
pub const DYLIB_VAR: &str = "ORT_DYLIB_PATH";

#[cfg(target_os = "linux")]
const NAMES: &[&str] = &["libonnxruntime.so", "libonnxruntime.so.1.31.1"];
#[cfg(target_os = "macos")]
const NAMES: &[&str] = &["libonnxruntime.dylib"];
#[cfg(windows)]
const NAMES: &[&str] = &["onnxruntime.dll"];
#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
const NAMES: &[&str] = &["libonnxruntime.so"];

/// Where the library is looked for when no path is given.
pub fn default_library_path() -> PathBuf {
    if let Some(p) = std::env::var_os(DYLIB_VAR).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    if let Some(dir) = beside {
        for name in NAMES {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
        return dir.join(NAMES[0]);
    }
    PathBuf::from(NAMES[0])
}

/// Loads ONNX Runtime from `path` once per process and returns its build description.
pub fn load_onnxruntime(path: &Path) -> Result<&'static str, OnnxRuntimeLoadError> {
    environment(Some(path))?;
    Ok(ort::info())
}

/// The process's ONNX Runtime environment, loading the library (from `path`, or
/// [`default_library_path`]) on first use. Later calls return the same environment whatever
/// path they pass: a process holds one library.
pub fn environment(path: Option<&Path>) -> Result<Environment, OnnxRuntimeLoadError> {
    static ENV: OnceLock<Environment> = OnceLock::new();
    static LOADING: Mutex<()> = Mutex::new(());
    if let Some(p) = path.filter(|p| !p.is_file()) {
        return Err(OnnxRuntimeLoadError {
            path: p.to_path_buf(),
            message: "no such file".into(),
        });
    }
    if let Some(env) = ENV.get() {
        return Ok(env.clone());
    }
    let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = ENV.get() {
        return Ok(env.clone());
    }
    let path = path.map_or_else(default_library_path, Path::to_path_buf);
    let error = |message: String| OnnxRuntimeLoadError {
        path: path.clone(),
        message,
    };
    if !path.is_file() {
        return Err(error("no such file".into()));
    }
    let env = ort::init_from(&path)
        .map_err(|e| error(e.to_string()))?
        .with_name("echodistill")
        .build()
        .map_err(|e| error(e.to_string()))?;
    Ok(ENV.get_or_init(|| env).clone())
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
