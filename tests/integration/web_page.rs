//! The browser page end to end: tiny models → `trainer fit` → `exporter bake` (split and fused)
//! → `runtime serve-web` on 127.0.0.1 → Debian's headless Chromium, driven by
//! `tests/scripts/web_page.mjs` (playwright-core). The canvas pixels the page draws for a seed
//! match the native runtime's image for that seed within the exporter's bound (no byte off by
//! more than 1, at least 99.5% identical) on the WASM provider for 1/2/4 steps, split and fused,
//! and on WebGPU (SwiftShader, a correctness check); the wasm tokenizer gives the native ids on
//! the tokenizer test prompts; bad input shows a message; any console error or uncaught
//! exception fails the test. A screenshot of the page is kept in target/test-artifacts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use runtime::manifest::{sha256_file, Manifest, MANIFEST_FILE};
use runtime::onnx::{GenerateRequest, LoadOptions, Model};
use runtime::ClipTokenizer;
use serde_json::{json, Value};
use tests::{chromium, fixture, web_node_modules, workspace_root};

use crate::bake::copy_dir;
use crate::runtime_generate::{assert_close, bake_tiny, baked_tiny_run};
use crate::runtime_serve::{start_runtime, Server};

const PROMPT: &str = "a <new1> dog on the beach";

/// `runtime serve-web` for `model`; returns the server and the page's base URL.
fn serve_web(model: &Path, ready: &Path) -> (Server, String) {
    let (server, addr) = start_runtime(&["serve-web", "--model", model.to_str().unwrap()], ready);
    (server, format!("http://{addr}/"))
}

/// Runs the driver's `page` mode on `url` and returns its report.
fn drive(dir: &Path, name: &str, url: &str, actions: &Value, extra: &[&str]) -> Value {
    let actions_path = dir.join(format!("{name}-actions.json"));
    fs::write(&actions_path, actions.to_string()).unwrap();
    let report_path = dir.join(format!("{name}-report.json"));
    let out = Command::new("node")
        .arg(workspace_root().join("tests/scripts/web_page.mjs"))
        .args(["page", "--url", url, "--report"])
        .arg(&report_path)
        .arg("--actions")
        .arg(&actions_path)
        .args(extra)
        .env("ECHODISTILL_WEB_NODE", web_node_modules())
        .env("ECHODISTILL_CHROMIUM", chromium())
        .output()
        .expect("run node (./run.sh setup installs what the driver needs)");
    assert!(
        out.status.success(),
        "the page driver failed on {url}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&fs::read(&report_path).unwrap()).unwrap();
    eprintln!("{name}: {report}");
    report
}

/// Asserts the page logged no console error and threw nothing, but for the browser's own line
/// about a resource in `expected_404s` that the scenario asks for and the server rightly lacks.
fn assert_clean_console(report: &Value, expected_404s: &[&str]) {
    assert_eq!(report["pageErrors"], json!([]), "uncaught exceptions");
    for e in report["consoleErrors"].as_array().unwrap() {
        let url = e["url"].as_str().unwrap_or("");
        let text = e["text"].as_str().unwrap_or("");
        let expected = text.starts_with("Failed to load resource")
            && text.contains("404")
            && expected_404s.iter().any(|u| url.ends_with(u));
        assert!(expected, "console error: {e}");
    }
}

/// The canvas pixels an action wrote (raw RGBA) as RGB.
fn read_rgb(path: &Path) -> Vec<u8> {
    let rgba = fs::read(path).unwrap();
    rgba.chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// The native runtime's image of `PROMPT` from `seed`.
fn native(model: &Model, seed: u64, steps: u32) -> Vec<u8> {
    model
        .generate(&GenerateRequest::new(PROMPT, seed, steps))
        .unwrap()
        .images
        .remove(0)
        .rgb
}

/// Generations of `PROMPT` from `seed` for each step count, with their pixel files.
fn generations(dir: &Path, name: &str, seed: u64, steps: &[u32]) -> (Value, Vec<PathBuf>) {
    let files: Vec<PathBuf> = steps
        .iter()
        .map(|s| dir.join(format!("{name}-{s}.rgba")))
        .collect();
    let actions = steps
        .iter()
        .zip(&files)
        .map(|(s, f)| json!({"prompt": PROMPT, "seed": seed.to_string(), "steps": s, "rgba": f}))
        .collect();
    (Value::Array(actions), files)
}

#[test]
fn page_draws_what_the_native_runtime_draws() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    baked_tiny_run(dir.path());
    // Each loaded once (the fused session takes seconds to create).
    let split = Model::load(&d("split"), &LoadOptions::default()).unwrap();
    let fused = Model::load(&d("fused"), &LoadOptions::default()).unwrap();
    // Seeds past 2^53 cross into JavaScript as BigInt, not as a rounded Number.
    let seed = u64::MAX - 1;

    // The split graphs on WASM, 1/2/4 steps; with the tokenizer check and the screenshot.
    let prompts: Value =
        serde_json::from_slice(&fs::read(fixture("tokenizer_goldens.json")).unwrap()).unwrap();
    let prompts: Vec<&str> = prompts["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "sd2-new1")
        .expect("the sd2-new1 group")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["prompt"].as_str().unwrap())
        .collect();
    fs::write(d("prompts.json"), json!(prompts).to_string()).unwrap();
    let artifacts = workspace_root().join("target/test-artifacts");
    fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("web-page.png");
    let (server, url) = serve_web(&d("split"), &d("ready-split"));
    let (actions, files) = generations(dir.path(), "split-wasm", seed, &[1, 2, 4]);
    let report = drive(
        dir.path(),
        "split-wasm",
        &format!("{url}?ep=wasm"),
        &actions,
        &[
            "--tokenize",
            d("prompts.json").to_str().unwrap(),
            "--screenshot",
            screenshot.to_str().unwrap(),
        ],
    );
    assert_eq!(report["state"], "ready", "{}", report["error"]);
    assert_eq!(report["provider"], "wasm");
    assert_clean_console(&report, &[]);
    for ((steps, file), action) in [1, 2, 4]
        .into_iter()
        .zip(&files)
        .zip(report["actions"].as_array().unwrap())
    {
        assert_eq!(action["error"], Value::Null);
        assert_eq!(
            (action["width"].as_u64(), action["height"].as_u64()),
            (Some(64), Some(64))
        );
        assert_close(
            &format!("page split WASM {steps} step(s)"),
            &read_rgb(file),
            &native(&split, seed, steps),
        );
    }
    let tokenizer = ClipTokenizer::from_dir(&d("split/tokenizer")).unwrap();
    let page_ids = report["tokenized"].as_array().expect("the page's ids");
    assert_eq!(page_ids.len(), prompts.len());
    for (prompt, ids) in prompts.iter().zip(page_ids) {
        let want: Vec<u64> = tokenizer
            .encode(prompt)
            .ids
            .iter()
            .map(|&i| u64::from(i))
            .collect();
        let got: Vec<u64> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(got, want, "ids of {prompt:?}");
    }
    assert!(
        image::open(&screenshot).is_ok(),
        "a screenshot at {}",
        screenshot.display()
    );

    // WebGPU on SwiftShader: the same picture (a correctness check; SwiftShader is the CPU).
    let (actions, files) = generations(dir.path(), "split-webgpu", seed, &[1]);
    let report = drive(
        dir.path(),
        "split-webgpu",
        &format!("{url}?ep=webgpu"),
        &actions,
        &["--webgpu"],
    );
    assert_eq!(report["state"], "ready", "{}", report["error"]);
    assert_eq!(report["provider"], "webgpu");
    assert_clean_console(&report, &[]);
    assert_close(
        "page split WebGPU 1 step",
        &read_rgb(&files[0]),
        &native(&split, seed, 1),
    );
    drop(server);

    // The fused pipeline on WASM.
    let (_server, url) = serve_web(&d("fused"), &d("ready-fused"));
    let (actions, files) = generations(dir.path(), "fused-wasm", seed, &[1, 2]);
    let report = drive(
        dir.path(),
        "fused-wasm",
        &format!("{url}?ep=wasm"),
        &actions,
        &[],
    );
    assert_eq!(report["state"], "ready", "{}", report["error"]);
    assert_clean_console(&report, &[]);
    for (steps, file) in [1, 2].into_iter().zip(&files) {
        assert_close(
            &format!("page fused WASM {steps} step(s)"),
            &read_rgb(file),
            &native(&fused, seed, steps),
        );
    }
}

/// A copy of `model` whose manifest says its networks hold `parameters` weights each.
fn with_parameters(model: &Path, out: &Path, parameters: u64) {
    copy_dir(model, out);
    let mut m = Manifest::read(out).unwrap();
    for n in m.networks.values_mut() {
        n.parameters = parameters;
    }
    fs::write(out.join(MANIFEST_FILE), m.to_yaml().unwrap()).unwrap();
}

#[test]
fn page_shows_clear_messages_for_bad_input_without_console_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let student = d("student");
    tests::init_tiny(&student, "tiny-student", "0");
    let model = d("model");
    bake_tiny(&student, None, &model, false);

    // A missing model folder.
    let (_server, url) = serve_web(&model, &d("ready"));
    let report = drive(
        dir.path(),
        "missing",
        &format!("{url}?model=missing/"),
        &json!([]),
        &[],
    );
    assert_eq!(report["state"], "error");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("No model folder at") && error.contains("serve-web"),
        "{error}"
    );
    assert_clean_console(&report, &["missing/manifest.yaml"]);

    // Form input: a seed that is no number, an empty prompt, a prompt over 77 tokens (a warning,
    // and the image still comes), then a good generation; provider chosen by the page itself
    // (headless Chromium without --enable-unsafe-webgpu has no adapter: WASM, and it says why).
    let long = "a photo of a dog ".repeat(30);
    let actions = json!([
        {"prompt": PROMPT, "seed": "12x"},
        {"prompt": PROMPT, "seed": "-1"},
        {"prompt": PROMPT, "seed": "18446744073709551616"},
        {"prompt": "   ", "seed": "1"},
        {"prompt": long, "seed": "3"},
        {"prompt": "a dog", "seed": "3"},
    ]);
    let report = drive(dir.path(), "form", &url, &actions, &[]);
    assert_eq!(report["state"], "ready", "{}", report["error"]);
    assert_eq!(report["provider"], "wasm");
    let note = report["providerNote"].as_str().unwrap();
    assert!(note.contains("CPU") && note.contains("WebGPU"), "{note}");
    let a = report["actions"].as_array().unwrap();
    for (i, want) in [
        (0, "\"12x\" is not a whole number"),
        (1, "\"-1\" is not a whole number"),
        (2, "is not a whole number"),
        (3, "The prompt is empty"),
    ] {
        let error = a[i]["error"].as_str().unwrap_or_default();
        assert!(error.contains(want), "action {i}: {error:?}");
    }
    assert_eq!(a[4]["error"], Value::Null);
    let warning = a[4]["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("77 tokens") && warning.contains("dropped"),
        "{warning:?}"
    );
    assert!(a[4]["result"].as_str().unwrap().contains("seed 3"));
    assert_eq!(
        (a[5]["error"].clone(), a[5]["warning"].clone()),
        (Value::Null, Value::Null)
    );
    assert_clean_console(&report, &[]);

    // A damaged network: caught by the manifest's hash, and, with the hash updated to match,
    // by onnxruntime-web itself.
    let garbage = b"this is not an ONNX model".repeat(40);
    let stale = d("stale-hash");
    copy_dir(&model, &stale);
    fs::write(stale.join("unet.onnx"), &garbage).unwrap();
    let matching = d("matching-hash");
    copy_dir(&stale, &matching);
    let mut m = Manifest::read(&matching).unwrap();
    m.files.insert(
        "unet.onnx".into(),
        sha256_file(&matching.join("unet.onnx")).unwrap(),
    );
    fs::write(matching.join(MANIFEST_FILE), m.to_yaml().unwrap()).unwrap();
    for (name, folder, want) in [
        (
            "stale-hash",
            &stale,
            "unet.onnx does not match the model's manifest",
        ),
        (
            "matching-hash",
            &matching,
            "unet.onnx could not be loaded by onnxruntime-web",
        ),
    ] {
        let (_server, url) = serve_web(folder, &d(&format!("ready-{name}")));
        let report = drive(dir.path(), name, &url, &json!([]), &[]);
        assert_eq!(report["state"], "error");
        let error = report["error"].as_str().unwrap();
        assert!(
            error.contains(want) && error.contains("bake the folder again"),
            "{error}"
        );
        assert_clean_console(&report, &[]);
    }

    // Models too large for WASM, by their manifests: past 4 GB refused, past 300 M weights
    // loaded only after the user agrees.
    for (name, parameters) in [("huge", 400_000_000u64), ("large", 150_000_000)] {
        let folder = d(name);
        with_parameters(&model, &folder, parameters);
        let (_server, url) = serve_web(&folder, &d(&format!("ready-{name}")));
        let report = drive(
            dir.path(),
            name,
            &url,
            &json!([{"prompt": "a dog", "seed": "1"}]),
            &["--confirm"],
        );
        if name == "huge" {
            assert_eq!(report["state"], "error");
            let error = report["error"].as_str().unwrap();
            assert!(
                error.contains("4 GB") && error.contains("WebGPU"),
                "{error}"
            );
        } else {
            let warning = report["slowWarning"].as_str().unwrap_or_default();
            assert!(
                warning.contains("minutes") && warning.contains("WebGPU"),
                "{warning:?}"
            );
            assert_eq!(report["state"], "ready", "{}", report["error"]);
            assert_eq!(report["actions"][0]["error"], Value::Null);
        }
        assert_clean_console(&report, &[]);
    }
}
