//! The committed toy world (`trainer/assets/toy`): its DreamBench folder is what `trainer
//! toy-data` writes for the default world, its pre-trained models load and draw, `trainer bench`
//! times a fit iteration on them with the toy settings, and the toy table's manifest runs end to
//! end on two subjects with a few iterations (the full table is a benchmark command, not a test).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind};
use trainer::checkpoint::component::LoadOptions;
use trainer::sampling::{NoiseSource, Pipeline, SampleRequest};
use trainer::toy::{write_toy_data, ToyWorld, ToyWorldConfig};

const OPTS: LoadOptions = LoadOptions {
    device: Device::Cpu,
    kind: Kind::Float,
    variant: None,
};

fn toy() -> PathBuf {
    tests::workspace_root().join("trainer/assets/toy")
}

/// Every file under `dir`, by path relative to it.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn committed_toy_dreambench_is_what_toy_data_writes() {
    let dir = tempfile::tempdir().unwrap();
    let world = ToyWorld::new(ToyWorldConfig::default()).unwrap();
    let data = write_toy_data(&world, &dir.path().join("toy"), 1, 0).unwrap();
    let (fresh, committed) = (files(&data.dreambench), files(&toy().join("dreambench")));
    assert_eq!(
        fresh.keys().collect::<Vec<_>>(),
        committed.keys().collect::<Vec<_>>(),
        "the committed folder's files differ from toy-data's: regenerate it with `trainer toy-data`"
    );
    for (path, bytes) in &fresh {
        assert!(
            committed[path] == *bytes,
            "{}: toy-data now writes other bytes (the world changed; the committed models were trained on the old one)",
            path.display()
        );
    }
}

#[test]
fn committed_toy_models_load_and_draw() {
    let models = toy().join("models");
    let request = |steps: usize, guidance: f64| SampleRequest {
        prompt: "a red star on a white background".into(),
        negative_prompt: String::new(),
        steps,
        guidance,
        scheduler: None,
        height: 64,
        width: 64,
    };
    for (name, req) in [("student", request(1, 0.0)), ("teacher", request(4, 4.0))] {
        let p = Pipeline::load(&models.join(name), OPTS).unwrap();
        let images = p.sample(&req, &NoiseSource::Seed(0)).unwrap().images;
        assert_eq!(images.size(), [1, 3, 64, 64]);
        let (lo, hi) = (
            images.min().double_value(&[]),
            images.max().double_value(&[]),
        );
        assert!(
            lo.is_finite() && hi.is_finite() && hi - lo > 0.1,
            "{name} draws a flat or broken image ({lo}..{hi})"
        );
    }
    trainer::towers::load_clip_model(&models.join("towers/clip"), OPTS).unwrap();
    trainer::towers::load_dino_v1(&models.join("towers/dino-v1"), OPTS).unwrap();
    let manifest: serde_yaml::Value =
        serde_yaml::from_slice(&std::fs::read(models.join("manifest.yaml")).unwrap()).unwrap();
    assert!(manifest["gates"]["vae_psnr"].as_f64().is_some());
    assert!(manifest["packed"].is_mapping());
}

#[test]
fn trainer_bench_times_an_iteration_on_the_toy_models() {
    let (toy, models) = (toy(), toy().join("models"));
    let arg = |p: PathBuf| p.display().to_string();
    let said = tests::run_binary_ok(
        "trainer",
        &[
            "bench",
            "--config",
            &arg(toy.join("fit.yaml")),
            "--student",
            &arg(models.join("student")),
            "--teacher",
            &arg(models.join("teacher")),
            "--towers",
            &arg(models.join("towers")),
            "--images",
            &arg(toy.join("dreambench/medal_01")),
            "--warmup",
            "0",
            "--iters",
            "1",
            "--profile",
        ],
    );
    assert!(said.contains("batch 2, 64 px"), "{said}");
    assert!(said.contains("seconds per iteration"), "{said}");
    // --profile: every phase of the iteration, in order.
    let phases = [
        "encode",
        "teacher_step",
        "student_forward",
        "teacher_target",
        "decode",
        "student_losses",
        "student_backward",
        "student_optimizer",
        "discriminator_step",
    ];
    let at: Vec<usize> = phases
        .iter()
        .map(|p| {
            said.find(&format!("  {p} "))
                .unwrap_or_else(|| panic!("no {p}:\n{said}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{said}");
}

/// CI's reduced toy table: every row of the committed manifest, two subjects, two iterations,
/// two prompts, one seed.
#[test]
fn toy_table_runs_every_row_on_two_subjects() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("table");
    let manifest = toy().join("bench-table.yaml");
    tests::run_binary_ok(
        "trainer",
        &[
            "bench-table",
            "--manifest",
            manifest.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--subjects",
            "medal_01,totem_03",
            "--set",
            "iterations=2",
            "--set",
            "echo.iterations=1",
            "--set",
            "echo.samples=2",
            "--set",
            "samples.every=0",
            "--prompts",
            "2",
            "--seeds",
            "0",
            "--quiet",
        ],
    );
    let table = std::fs::read_to_string(out.join("metrics.md")).unwrap();
    let labels: Vec<String> =
        serde_yaml::from_slice::<serde_yaml::Value>(&std::fs::read(&manifest).unwrap()).unwrap()
            ["methods"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| m["label"].as_str().unwrap().to_string())
            .collect();
    // The paper's 13 rows and the labelled adversarial-weight row (docs/toy-world.md).
    assert_eq!(labels.len(), 14);
    for label in &labels {
        assert!(table.contains(label.as_str()), "{label} is not in\n{table}");
    }
}

/// The toy table grows a subject at a time in docs/toy-table (docs/toy-world.md): every
/// committed subject's table must record the fingerprints of the committed toy models (a
/// retrained world is caught here until its tables are scored again), and they merge.
#[test]
fn committed_toy_tables_record_the_committed_models_and_merge() {
    use trainer::eval::{bench_table::Manifest, fingerprint};
    let manifest = Manifest::load(&toy().join("bench-table.yaml")).unwrap();
    let now = fingerprint::fingerprints(&manifest.inputs()).unwrap();
    assert_eq!(
        now.keys().map(String::as_str).collect::<Vec<_>>(),
        ["clip", "dino", "student", "teacher", "towers"]
    );
    let docs = tests::workspace_root().join("docs/toy-table");
    let mut tables: Vec<PathBuf> = std::fs::read_dir(&docs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    tables.sort();
    assert!(tables.len() >= 4, "{tables:?}");
    for table in &tables {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(table).unwrap()).unwrap();
        let recorded: BTreeMap<String, String> =
            serde_json::from_value(json["meta"]["inputs"].clone()).unwrap_or_else(|e| {
                panic!("{}: meta.inputs: {e}", table.display());
            });
        let diff = fingerprint::differences(&recorded, &now);
        assert!(diff.is_empty(), "{}: {diff:?}", table.display());
        let subjects = json["meta"]["subjects"].as_array().unwrap();
        let stem = table.file_stem().unwrap().to_str().unwrap();
        assert_eq!(subjects, &[serde_json::json!(stem)], "{}", table.display());
    }
    let out = tempfile::tempdir().unwrap();
    let o = tests::merge_tables(out.path(), &tables, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.path().join("metrics.json")).unwrap()).unwrap()
    };
    let merged = read();
    assert_eq!(
        merged["meta"]["subjects"].as_array().unwrap().len(),
        tables.len()
    );
    // The merge carries the fingerprints on, so it can be merged again.
    assert_eq!(
        merged["meta"]["inputs"],
        serde_json::to_value(&now).unwrap()
    );
    committed_tables_compare_rows_subject_by_subject(out.path(), &tables, &merged);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("### Paired by subject"), "{stdout}");
    // Any row may be the reference; a name that is no row is refused with the rows listed.
    let o = tests::merge_tables(out.path(), &tables, &["--reference", "LoRA@1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read()["paired"]["reference"], "LoRA");
    let o = tests::merge_tables(out.path(), &tables, &["--reference", "LoRA@4"]);
    crate::fit::assert_refused(&o, "--reference \"LoRA@4\" names no row of the table");
    committed_tables_give_the_best_baseline_per_subject(out.path(), &tables);
}

/// `merge-tables --versus` on the committed toy tables (the per-subject table of
/// docs/toy-world.md): each subject's best one-step baseline, recomputed here from the rows.
fn committed_tables_give_the_best_baseline_per_subject(out: &Path, tables: &[PathBuf]) {
    let baselines = [
        "Custom Diffusion",
        "Textual Inversion",
        "DreamBooth",
        "LoRA",
    ];
    let mut args = Vec::new();
    for b in baselines {
        args.extend(["--versus".to_string(), format!("{b}@1")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = tests::merge_tables(out, tables, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let merged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let rows = merged["rows"].as_array().unwrap();
    let best = &merged["best_of"];
    assert_eq!(best["reference"], "EchoDistill (distillation)");
    let subjects = best["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), tables.len());
    let mean = |label: &str, subject: &str, metric: &str| -> f64 {
        let row = rows
            .iter()
            .find(|r| r["label"] == label && r["steps"] == 1)
            .unwrap();
        row["subjects"][subject][metric]["mean"].as_f64().unwrap()
    };
    let mut above = BTreeMap::new();
    for s in subjects {
        let subject = s["subject"].as_str().unwrap();
        for metric in ["clip_i", "dino"] {
            let (label, top) = baselines
                .into_iter()
                .map(|l| (l, mean(l, subject, metric)))
                .fold(
                    ("", f64::NEG_INFINITY),
                    |a, b| if b.1 > a.1 { b } else { a },
                );
            let got = &s[format!("best_{metric}")];
            assert_eq!(got["label"], label, "{subject} {metric}");
            assert_eq!(got["mean"].as_f64().unwrap(), top, "{subject} {metric}");
            let mine = mean("EchoDistill (distillation)", subject, metric);
            assert_eq!(s[metric].as_f64().unwrap(), mine);
            *above.entry(metric).or_insert(0usize) += usize::from(mine > top);
        }
    }
    assert_eq!(best["above_clip_i"], above["clip_i"]);
    assert_eq!(best["above_dino"], above["dino"]);
    let md = std::fs::read_to_string(out.join("metrics.md")).unwrap();
    assert!(
        md.contains("### Per subject: EchoDistill (distillation) (1 step) against the best of Custom Diffusion (1 step), Textual Inversion (1 step), DreamBooth (1 step), LoRA (1 step)"),
        "{md}"
    );
    let o = tests::merge_tables(out, tables, &["--versus", "EchoDistill (distillation)@1"]);
    crate::fit::assert_refused(&o, "names the reference row itself");
    let o = tests::merge_tables(out, tables, &["--versus", "LoRA@4"]);
    crate::fit::assert_refused(&o, "--versus \"LoRA@4\" names no row of the table");
}

/// The merged toy table compares every row with the manifest's first (EchoDistill's one-step
/// student) over all its subjects: the per-subject differences, recomputed here from the rows,
/// give `paired`'s means and counts; metrics.md shows them and paired.png draws them.
fn committed_tables_compare_rows_subject_by_subject(
    out: &Path,
    tables: &[PathBuf],
    merged: &serde_json::Value,
) {
    let rows = merged["rows"].as_array().unwrap();
    let paired = &merged["paired"];
    assert_eq!(paired["reference"], rows[0]["label"]);
    assert_eq!(paired["reference"], "EchoDistill (distillation)");
    let compared = paired["rows"].as_array().unwrap();
    assert_eq!(compared.len(), rows.len() - 1);
    for (c, row) in compared.iter().zip(&rows[1..]) {
        assert_eq!((&c["label"], &c["steps"]), (&row["label"], &row["steps"]));
        for metric in ["clip_t", "clip_i", "dino"] {
            let d: Vec<f64> = rows[0]["subjects"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(s, m)| {
                    m[metric]["mean"].as_f64().unwrap()
                        - row["subjects"][s][metric]["mean"].as_f64().unwrap()
                })
                .collect();
            assert_eq!(d.len(), tables.len());
            let got = &c[metric];
            assert_eq!(got["n"], tables.len());
            let mean = d.iter().sum::<f64>() / d.len() as f64;
            assert!((got["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
            let higher = d.iter().filter(|x| **x > 0.0).count();
            assert_eq!(got["higher"], higher, "{} {metric}", row["label"]);
            let lower = d.iter().filter(|x| **x < 0.0).count();
            assert_eq!(got["lower"], lower, "{} {metric}", row["label"]);
            // The sign test's tail with exact integer binomial coefficients.
            let m = (higher + lower) as u128;
            let choose = |k: u128| (0..k).fold(1u128, |c, i| c * (m - i) / (i + 1));
            let tail: u128 = (0..=higher.min(lower) as u128).map(choose).sum();
            let p = (2.0 * tail as f64 / 2f64.powi(m as i32)).min(1.0);
            assert!((got["sign_p"].as_f64().unwrap() - p).abs() < 1e-12);
        }
    }
    let md = std::fs::read_to_string(out.join("metrics.md")).unwrap();
    assert!(
        md.contains("### Paired by subject: EchoDistill (distillation) (1 step) minus each row"),
        "{md}"
    );
    assert!(md.contains("| LoRA | 1 | "), "{md}");
    assert!(out.join("paired.png").is_file());
}
