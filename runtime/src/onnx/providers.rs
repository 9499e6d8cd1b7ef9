//! Execution providers: where ONNX Runtime runs the graphs. CPU always; CUDA, TensorRT, CoreML
//! and DirectML when this crate is built with the cargo feature of the same name and the loaded
//! library has them. A provider that cannot be used falls back to CPU with a warning on stderr,
//! so the same command works on every machine.

use std::fmt;
use std::str::FromStr;

use ort::ep::ExecutionProviderDispatch;

/// An execution provider a user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// ONNX Runtime's CPU kernels (the default).
    Cpu,
    /// NVIDIA CUDA (feature `cuda`, onnxruntime-gpu).
    Cuda,
    /// NVIDIA TensorRT (feature `tensorrt`), with CUDA for what TensorRT does not take.
    TensorRt,
    /// Apple Core ML (feature `coreml`).
    CoreMl,
    /// DirectML on Windows (feature `directml`).
    DirectMl,
}

impl Provider {
    /// Every provider, in the order they are listed to users.
    pub const ALL: [Provider; 5] = [
        Provider::Cpu,
        Provider::Cuda,
        Provider::TensorRt,
        Provider::CoreMl,
        Provider::DirectMl,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
            Provider::CoreMl => "coreml",
            Provider::DirectMl => "directml",
        }
    }

    /// The providers to register for `self`, most preferred first, or why there are none.
    /// CPU needs no registration: ONNX Runtime always has it last.
    fn dispatches(self) -> Result<Vec<ExecutionProviderDispatch>, String> {
        let not_built = |feature: &str| {
            Err(format!(
                "this build has no {feature} support (rebuild with `--features {feature}`)"
            ))
        };
        match self {
            Provider::Cpu => Ok(Vec::new()),
            #[cfg(feature = "cuda")]
            Provider::Cuda => Ok(vec![ort::ep::CUDA::default().build().error_on_failure()]),
            #[cfg(not(feature = "cuda"))]
            Provider::Cuda => not_built("cuda"),
            #[cfg(feature = "tensorrt")]
            Provider::TensorRt => Ok(vec![
                ort::ep::TensorRT::default().build().error_on_failure(),
                ort::ep::CUDA::default().build(),
            ]),
            #[cfg(not(feature = "tensorrt"))]
            Provider::TensorRt => not_built("tensorrt"),
            #[cfg(feature = "coreml")]
            Provider::CoreMl => Ok(vec![ort::ep::CoreML::default().build().error_on_failure()]),
            #[cfg(not(feature = "coreml"))]
            Provider::CoreMl => not_built("coreml"),
            #[cfg(feature = "directml")]
            Provider::DirectMl => Ok(vec![ort::ep::DirectML::default()
                .build()
                .error_on_failure()]),
            #[cfg(not(feature = "directml"))]
            Provider::DirectMl => not_built("directml"),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Provider::ALL
            .into_iter()
            .find(|p| p.name() == lower)
            .ok_or_else(|| {
                format!(
                    "unknown execution provider {s:?}: choose one of {}",
                    Provider::ALL.map(Provider::name).join(", ")
                )
            })
    }
}

/// Session settings shared by every network of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Where to run.
    pub provider: Provider,
    /// Threads inside one operator (ONNX Runtime's intra-op pool); `None` lets it choose
    /// (one per physical core).
    pub threads: Option<usize>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            provider: Provider::Cpu,
            threads: None,
        }
    }
}

/// Builds a session for `path` with `options`. A provider that cannot be registered is
/// reported on stderr and the session is built for CPU instead; the provider actually used is
/// returned with the session.
pub(crate) fn session(
    env: &ort::environment::Environment,
    path: &std::path::Path,
    options: &SessionOptions,
) -> anyhow::Result<(ort::session::Session, Provider)> {
    use anyhow::Context;
    let build = |eps: Vec<ExecutionProviderDispatch>| -> anyhow::Result<ort::session::Session> {
        let mut builder = ort::session::Session::builder(env)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot create an ONNX Runtime session")?;
        if let Some(n) = options.threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| anyhow::anyhow!("--threads {n}: {e}"))?;
        }
        if !eps.is_empty() {
            builder = builder
                .with_execution_providers(eps)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        builder
            .commit_from_file(path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("ONNX Runtime cannot load {}", path.display()))
    };
    match options.provider.dispatches() {
        Ok(eps) if eps.is_empty() => Ok((build(eps)?, Provider::Cpu)),
        Ok(eps) => match build(eps) {
            Ok(s) => Ok((s, options.provider)),
            Err(e) => {
                eprintln!(
                    "warning: execution provider {} is not usable here ({e:#}); running {} on CPU",
                    options.provider,
                    path.display()
                );
                Ok((build(Vec::new())?, Provider::Cpu))
            }
        },
        Err(why) => {
            eprintln!(
                "warning: execution provider {}: {why}; running on CPU",
                options.provider
            );
            Ok((build(Vec::new())?, Provider::Cpu))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for p in Provider::ALL {
            assert_eq!(p.name().parse::<Provider>(), Ok(p));
        }
        assert_eq!("CUDA".parse::<Provider>(), Ok(Provider::Cuda));
        let err = "tpu".parse::<Provider>().unwrap_err();
        assert!(
            err.contains("cpu, cuda, tensorrt, coreml, directml"),
            "{err}"
        );
    }
}
