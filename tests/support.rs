//! Shared helpers for the integration tests: where the real CLIP vocabulary, the workspace's
//! binaries, the Python reference environment and the committed fixtures are.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// A committed fixture under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A path from an environment variable that `./run.sh` exports; the message says how to get it.
fn setup_path(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if Path::new(&p).exists() => PathBuf::from(p),
        Some(p) => panic!(
            "{var}={} does not exist: run ./run.sh setup",
            Path::new(&p).display()
        ),
        None => panic!(
            "{var} is not set: run the tests through ./run.sh test (or eval \"$(./run.sh env)\")"
        ),
    }
}

/// The DreamBench dataset folder: `ECHODISTILL_DREAMBENCH`, else `../shared/datasets/dreambooth`
/// beside the workspace (where CI has it). Read in place, never copied (CC-BY-4.0).
pub fn dreambench_dir() -> PathBuf {
    let dir = std::env::var_os("ECHODISTILL_DREAMBENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/datasets/dreambooth"));
    assert!(
        dir.join("dataset").is_dir(),
        "{} has no dataset/: set ECHODISTILL_DREAMBENCH to the DreamBench folder (CI has it in ../shared)",
        dir.display()
    );
    dir
}

/// The real CLIP tokenizer folder that setup builds from the open-clip-torch wheel.
pub fn clip_tokenizer_dir() -> PathBuf {
    setup_path("ECHODISTILL_CLIP_TOKENIZER")
}

/// The node_modules folder with playwright-core that setup installs from web/package-lock.json.
pub fn web_node_modules() -> PathBuf {
    setup_path("ECHODISTILL_WEB_NODE")
}

/// The Chromium executable setup installs (Debian's).
pub fn chromium() -> PathBuf {
    setup_path("ECHODISTILL_CHROMIUM")
}

/// The Python interpreter of setup's reference environment (transformers).
pub fn reference_python() -> PathBuf {
    setup_path("ECHODISTILL_PYTHON")
}

/// Runs `tests/scripts/SCRIPT ARGS` in the reference environment and returns its stdout; a
/// failing script fails the test with its output.
pub fn run_reference_script<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> Vec<u8> {
    let out = Command::new(reference_python())
        .arg(workspace_root().join("tests/scripts").join(script))
        .args(args)
        .output()
        .expect("run the reference python");
    assert!(
        out.status.success(),
        "{script} failed on {:?}:\n{}{}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A workspace binary (trainer, exporter, ...), built by `cargo build --workspace --bins`.
pub fn binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Runs a workspace binary with `args` and returns its output.
pub fn run_binary(name: &str, args: &[&str]) -> Output {
    Command::new(binary(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// Runs a workspace binary that must succeed and returns its standard output (on failure, the
/// panic shows both streams).
pub fn run_binary_ok(name: &str, args: &[&str]) -> String {
    let o = run_binary(name, args);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{name} {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// `trainer merge-tables --out OUT [EXTRA...] TABLE...`: its outcome (tests check refusals too).
pub fn merge_tables<P: AsRef<Path>>(out: &Path, tables: &[P], extra: &[&str]) -> Output {
    let mut args = vec!["merge-tables".to_string(), "--out".into()];
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(tables.iter().map(|t| t.as_ref().display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_binary("trainer", &refs)
}

/// Writes a seeded random-weight model of `architecture` to `out` with `trainer init-tiny` and
/// the real CLIP vocabulary.
pub fn init_tiny(out: &Path, architecture: &str, seed: &str) {
    let tok = clip_tokenizer_dir();
    let result = run_binary(
        "trainer",
        &[
            "init-tiny",
            "--out",
            out.to_str().expect("utf-8 path"),
            "--architecture",
            architecture,
            "--seed",
            seed,
            "--tokenizer",
            tok.to_str().expect("utf-8 path"),
        ],
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
}
