//! `trainer eval`: the DreamBench folder (every photo loads; malformed folders are refused), the
//! protocol's prompts and live/object split, the metrics against cosines computed by hand on the
//! tiny towers, and an evaluation of a tiny run end to end (tables, chart, gallery, resume).

use std::fs;
use std::path::Path;

use tch::{Device, Kind};
use trainer::checkpoint::LoadOptions;
use trainer::eval::dreambench::DreamBench;
use trainer::eval::metrics::{to_tower_pixels, MetricTowers};
use trainer::eval::protocol::EvalSettings;
use trainer::eval::{evaluate_into, table};
use trainer::fit::config::FitConfig;

use crate::fit::{dreambench, overrides, run_quiet, tiny_models};

/// f32 on the CPU, as the evaluation tests load runs.
pub const OPTS: LoadOptions = LoadOptions {
    device: Device::Cpu,
    kind: Kind::Float,
    variant: None,
};

fn bench() -> DreamBench {
    DreamBench::open(&tests::dreambench_dir()).unwrap()
}

#[test]
fn dreambench_has_the_protocols_subjects_prompts_and_split() {
    let b = bench();
    assert_eq!(b.subjects.len(), 30);
    assert_eq!(b.object_prompts.len(), 25);
    assert_eq!(b.live_prompts.len(), 25);
    let live: Vec<&str> = b
        .subjects
        .iter()
        .filter(|s| s.live)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        live,
        ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
    );
    let dog = b.subject("dog").unwrap();
    let prompts = b.prompts(dog, "<new1>");
    assert_eq!(prompts[0].text, "a <new1> dog in the jungle");
    assert_eq!(prompts[0].clip_text, "a dog in the jungle");
    assert_eq!(prompts[10].text, "a <new1> dog wearing a red hat");
    let teapot = b.subject("teapot").unwrap();
    let p = b.prompts(teapot, "<new1>");
    assert_eq!(p[24].text, "a cube shaped <new1> teapot");
    assert_eq!(
        p[10].clip_text,
        "a teapot with a wheat field in the background"
    );
    let sloth = b.subject("grey_sloth_plushie").unwrap();
    assert_eq!(b.prompts(sloth, "")[20].text, "a red stuffed animal");
    assert!(prompts.iter().all(|p| !p.clip_text.contains("<new1>")));
}

#[test]
fn every_dreambench_photo_loads_and_preprocesses() {
    let b = bench();
    let mut count = 0;
    for s in &b.subjects {
        let photos = b.references(s).unwrap();
        assert!(!photos.is_empty(), "{}", s.name);
        for p in photos {
            let t = to_tower_pixels(&p.image, 224);
            assert_eq!(t.size(), [3, 224, 224], "{}", p.path.display());
            let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
            assert!(
                (-1.0..=1.0).contains(&lo) && (-1.0..=1.0).contains(&hi) && hi > lo,
                "{}: {lo}..{hi}",
                p.path.display()
            );
            count += 1;
        }
    }
    assert!(count >= 150, "only {count} photos");
}

#[test]
fn malformed_dataset_folders_are_refused_with_the_reason() {
    let src = tests::dreambench_dir().join("dataset");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let err = |p: &Path| format!("{:#}", DreamBench::open(p).unwrap_err());
    assert!(
        err(root).contains("prompts_and_classes.txt"),
        "{}",
        err(root)
    );

    // The class file names subjects whose folders are missing.
    fs::copy(
        src.join("prompts_and_classes.txt"),
        root.join("prompts_and_classes.txt"),
    )
    .unwrap();
    let e = err(root);
    assert!(e.contains("backpack") && e.contains("no folder"), "{e}");

    // Every folder present, one of them empty.
    let b = bench();
    for s in &b.subjects {
        fs::create_dir_all(root.join(&s.name)).unwrap();
    }
    let ok = DreamBench::open(root).unwrap();
    let e = format!(
        "{:#}",
        ok.references(ok.subject("dog").unwrap()).unwrap_err()
    );
    assert!(e.contains("dog") && e.contains("no images"), "{e}");
    let e = format!("{:#}", ok.subject("unicorn").unwrap_err());
    assert!(
        e.contains("unicorn") && e.contains("known: backpack"),
        "{e}"
    );

    // A class file without prompt lists.
    fs::write(
        root.join("prompts_and_classes.txt"),
        "Classes\n\nsubject_name,class\ndog,dog\n",
    )
    .unwrap();
    assert!(err(root).contains("prompt list"), "{}", err(root));
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn rows(t: &tch::Tensor) -> Vec<Vec<f32>> {
    (0..t.size()[0])
        .map(|i| Vec::<f32>::try_from(t.get(i)).unwrap())
        .collect()
}

#[test]
fn metrics_are_the_cosines_of_the_towers_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    tests::init_tiny(&dir.path().join("m"), "tiny-student", "0");
    let towers_dir = dir.path().join("m/towers");
    let towers = MetricTowers::load(
        &towers_dir.join("clip"),
        &towers_dir.join("dino-v1"),
        None,
        OPTS,
    )
    .unwrap();
    let photos = bench().references(bench().subject("dog").unwrap()).unwrap();
    let refs_img: Vec<_> = photos[..3].iter().map(|p| p.image.clone()).collect();
    let gen: Vec<_> = photos[3..5].iter().map(|p| p.image.clone()).collect();
    let texts = vec![
        "a dog in the snow".to_string(),
        "a dog on the beach".to_string(),
    ];
    let refs = towers.references(&refs_img).unwrap();
    let scores = towers.score(&gen, &texts, &refs).unwrap();

    // By hand: embeddings of each image, prompt and reference, then plain cosines.
    let gc = rows(&towers.clip_images(&gen).unwrap());
    let gd = rows(&towers.dino_images(&gen).unwrap());
    let tx = rows(&towers.clip_texts(&texts).unwrap());
    let rc = rows(&towers.clip_images(&refs_img).unwrap());
    let rd = rows(&towers.dino_images(&refs_img).unwrap());
    for (i, s) in scores.iter().enumerate() {
        let clip_t = cosine(&gc[i], &tx[i]);
        let clip_i = rc.iter().map(|r| cosine(&gc[i], r)).sum::<f64>() / 3.0;
        let dino = rd.iter().map(|r| cosine(&gd[i], r)).sum::<f64>() / 3.0;
        assert!((s.clip_t - clip_t).abs() < 1e-5, "{} vs {clip_t}", s.clip_t);
        assert!((s.clip_i - clip_i).abs() < 1e-5, "{} vs {clip_i}", s.clip_i);
        assert!((s.dino - dino).abs() < 1e-5, "{} vs {dino}", s.dino);
        // CLIP-self: two images, so the cosine with the other one.
        let other = cosine(&gc[i], &gc[1 - i]);
        let clip_self = s.clip_self.unwrap();
        assert!((clip_self - other).abs() < 1e-5, "{clip_self} vs {other}");
    }
    // An image scored against itself as the only reference has CLIP-I and DINO 1.
    let own = towers.references(&gen[..1]).unwrap();
    let s = towers.score(&gen[..1], &texts[..1], &own).unwrap()[0];
    assert!(
        (s.clip_i - 1.0).abs() < 1e-5 && (s.dino - 1.0).abs() < 1e-5,
        "{s:?}"
    );
    // Different prompts give different CLIP-T: the text side is live.
    assert!((scores[0].clip_t - cosine(&gc[0], &tx[1])).abs() > 1e-6);
}

/// A tiny EchoDistill run trained on DreamBench's `dog` for `iterations`.
pub fn tiny_run(dir: &Path, iterations: usize) -> std::path::PathBuf {
    let (student, teacher) = tiny_models(dir);
    let run = dir.join("run");
    let mut o = overrides(&student, &teacher, &[&format!("iterations={iterations}")]);
    o.push(format!(
        "concepts=[{{images: '{}', token: '<new1>', class: dog}}]",
        dreambench("dog").display()
    ));
    run_quiet(FitConfig::load(None, &o).unwrap(), &run);
    run
}

pub fn eval_settings(towers: &Path, steps: Vec<usize>) -> EvalSettings {
    EvalSettings {
        dataset: tests::dreambench_dir(),
        subject: None,
        references: None,
        label: None,
        teacher: false,
        steps,
        seeds: vec![0, 1],
        prompts: Some(2),
        scheduler: None,
        guidance: None,
        resolution: None,
        clip: towers.join("clip"),
        dino: towers.join("dino-v1"),
        dino_size: None,
        quiet: true,
    }
}

#[test]
fn eval_scores_a_run_writes_every_table_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 1);
    let towers = dir.path().join("student/towers");
    let out = dir.path().join("eval");
    let settings = eval_settings(&towers, vec![1, 2]);
    let first = evaluate_into(&run, &settings, &out, OPTS).unwrap();
    let recs = &first.outcome.records;
    assert_eq!(recs.len(), 2 * 2 * 2);
    assert_eq!(first.outcome.generated, 8);
    assert!(recs
        .iter()
        .all(|r| r.subject == "dog" && r.label == "EchoDistill"));
    assert_eq!(recs[0].prompt, "a <new1> dog in the jungle");
    assert_eq!(recs[0].clip_prompt, "a dog in the jungle");
    assert_eq!(
        recs.iter().map(|r| r.seed).collect::<Vec<_>>(),
        [0, 1, 0, 1, 0, 1, 0, 1]
    );
    for r in recs {
        assert!(out.join(&r.image).is_file(), "{}", r.image);
        for v in [r.score.clip_t, r.score.clip_i, r.score.dino] {
            assert!(v.is_finite() && (-1.0..=1.0).contains(&v), "{r:?}");
        }
    }
    assert_eq!(first.rows.len(), 2);
    for f in [
        "metrics.csv",
        "metrics.json",
        "metrics.md",
        "metrics.png",
        "scores.csv",
        "scores.jsonl",
        "gallery.html",
        "gallery/echodistill-dog-1step.png",
        "gallery/echodistill-dog-2step.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let md = fs::read_to_string(out.join("metrics.md")).unwrap();
    assert!(
        md.contains("| EchoDistill | 1 |") && md.contains("| EchoDistill | 2 |"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["meta"]["prompts_per_subject"], 2);
    assert_eq!(
        json["rows"][0]["overall"]["dino"]["n"].as_u64(),
        Some(4),
        "{json}"
    );
    assert_eq!(
        table::read_scores(&out.join("scores.jsonl")).unwrap(),
        *recs
    );

    // A second evaluation reuses every image and gives the same numbers.
    let again = evaluate_into(&run, &settings, &out, OPTS).unwrap();
    assert_eq!(again.outcome.generated, 0);
    assert_eq!(again.outcome.records, *recs);

    // The same seed gives the same image as `trainer sample --run` would: generation is seeded.
    let other = dir.path().join("eval2");
    let fresh = evaluate_into(&run, &eval_settings(&towers, vec![1]), &other, OPTS).unwrap();
    assert_eq!(
        fs::read(other.join(&fresh.outcome.records[0].image)).unwrap(),
        fs::read(out.join(&recs[0].image)).unwrap()
    );
}

#[test]
fn eval_cli_refuses_unknown_subjects_and_missing_backbones() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path(), 1);
    let towers = dir.path().join("student/towers");
    let base = |subject: &str, clip: &Path| -> Vec<String> {
        [
            "eval",
            "--run",
            &run.display().to_string(),
            "--out",
            &dir.path().join("e").display().to_string(),
            "--dataset",
            &tests::dreambench_dir().display().to_string(),
            "--subject",
            subject,
            "--clip",
            &clip.display().to_string(),
            "--dino",
            &towers.join("dino-v1").display().to_string(),
            "--prompts",
            "1",
            "--seeds",
            "0",
            "--steps",
            "1",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let call = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tests::run_binary("trainer", &refs)
    };
    let out = call(base("unicorn", &towers.join("clip")));
    crate::fit::assert_refused(&out, "no subject \"unicorn\"");
    let out = call(base("dog", &towers.join("dino-v1")));
    crate::fit::assert_refused(&out, "text_config");
    let out = call(base("dog", &towers.join("clip")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| EchoDistill | 1 |"), "{stdout}");
}

/// Runs `trainer bench-table --manifest M --out O --quiet EXTRA...`, whatever its outcome.
fn bench_table_output(manifest: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let (manifest, out) = (manifest.display().to_string(), out.display().to_string());
    let mut args = vec![
        "bench-table",
        "--manifest",
        &manifest,
        "--out",
        &out,
        "--quiet",
    ];
    args.extend(extra);
    tests::run_binary("trainer", &args)
}

/// A bench-table run that must succeed: its stdout and stderr.
fn bench_table_cli(manifest: &Path, out: &Path, extra: &[&str]) -> String {
    let o = bench_table_output(manifest, out, extra);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The outcomes of running and of collecting the same table (for checks both must refuse).
fn run_and_collect(manifest: &Path, out: &Path) -> [std::process::Output; 2] {
    [
        bench_table_output(manifest, out, &[]),
        bench_table_output(manifest, out, &["--collect"]),
    ]
}

#[test]
fn bench_table_runs_fit_eval_table_resumes_and_shards_to_the_same_table() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let towers = student.join("towers");
    let fit: Vec<String> = overrides(&student, &teacher, &["iterations=1"]);
    let manifest = serde_json::json!({
        "dataset": tests::dreambench_dir(),
        "subjects": ["dog", "can"],
        "fit": fit,
        "eval": {"clip": towers.join("clip"), "dino": towers.join("dino-v1"), "seeds": [0], "prompts": 2},
        "methods": [
            {"label": "EchoDistill", "cost": 3},
            {"label": "EchoDistill teacher", "reuse": "EchoDistill", "teacher": true, "steps": [2]},
            {"label": "w/o discriminators", "set": ["discriminators=[]"]},
            {"label": "Textual Inversion", "set": ["method=textual-inversion"]},
            {"label": "Custom Diffusion SD 2.1", "set": ["method=custom-diffusion", "baseline.model=teacher"], "steps": [2]},
        ],
    });
    let path = dir.path().join("table.yaml");
    fs::write(&path, serde_yaml_string(&manifest)).unwrap();

    let whole = dir.path().join("whole");
    let log = bench_table_cli(&path, &whole, &[]);
    assert!(log.contains("| EchoDistill | 1 |"), "{log}");
    assert!(log.contains("| EchoDistill teacher | 2 |"), "{log}");
    assert!(log.contains("| w/o discriminators | 1 |"), "{log}");
    assert!(log.contains("| Textual Inversion | 1 |"), "{log}");
    assert!(log.contains("| Custom Diffusion SD 2.1 | 2 |"), "{log}");
    let csv = fs::read_to_string(whole.join("metrics.csv")).unwrap();
    // 5 rows x (overall + 2 subjects), each over 2 prompts x 1 seed per subject.
    assert_eq!(csv.lines().count(), 1 + 5 * 3, "{csv}");
    assert!(csv.contains("EchoDistill,1,all,4,"), "{csv}");
    for f in ["metrics.md", "metrics.json", "metrics.png"] {
        assert!(whole.join(f).is_file(), "{f}");
    }

    // Again: every cell is finished, nothing is redone, the table is the same.
    let again = bench_table_cli(&path, &whole, &[]);
    assert_eq!(again.matches("trained already").count(), 8, "{again}");
    assert_eq!(again.matches("evaluated already").count(), 10, "{again}");
    assert_eq!(fs::read_to_string(whole.join("metrics.csv")).unwrap(), csv);

    // A changed setting: Textual Inversion's cells were trained at another learning rate, so
    // both running and collecting refuse them, naming the cells and the key; a setting that
    // does not change what is trained (save_every) is no reason to refit.
    let mut changed = manifest.clone();
    changed["fit"]
        .as_array_mut()
        .unwrap()
        .push("save_every=7".into());
    changed["methods"][3]["set"] =
        serde_json::json!(["method=textual-inversion", "baseline.lr=0.001"]);
    let changed_path = dir.path().join("changed.yaml");
    fs::write(&changed_path, serde_yaml_string(&changed)).unwrap();
    for o in run_and_collect(&changed_path, &whole) {
        crate::fit::assert_refused(&o, "2 cell(s) were trained with other settings");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("textual-inversion/dog"), "{err}");
        assert!(err.contains("textual-inversion/can"), "{err}");
        assert!(err.contains("baseline.lr: 0.0005 -> 0.001"), "{err}");
        assert!(!err.contains("save_every"), "{err}");
    }
    let mut only_operational = manifest.clone();
    only_operational["fit"]
        .as_array_mut()
        .unwrap()
        .push("save_every=7".into());
    fs::write(&changed_path, serde_yaml_string(&only_operational)).unwrap();
    let reused = bench_table_cli(&changed_path, &whole, &[]);
    assert_eq!(reused.matches("trained already").count(), 8, "{reused}");

    // Two shards, then collect: the same table.
    let sharded = dir.path().join("sharded");
    let early = tests::run_binary(
        "trainer",
        &[
            "bench-table",
            "--manifest",
            &path.display().to_string(),
            "--out",
            &sharded.display().to_string(),
            "--collect",
        ],
    );
    crate::fit::assert_refused(&early, "cells are not finished");
    let s0 = bench_table_cli(&path, &sharded, &["--shard", "0/2"]);
    assert!(s0.contains("--collect"), "{s0}");
    // Dealt by cost (EchoDistill 3, the others 1): each shard gets one EchoDistill fit and
    // three others, cost 6 of 12 (round-robin would give shard 0 both EchoDistill fits).
    assert!(s0.contains("shard 0/2: 4 of 8 units, cost 6 of 12"), "{s0}");
    assert_eq!(s0.matches("EchoDistill on").count(), 3, "{s0}");
    assert!(!sharded.join("metrics.csv").exists());
    bench_table_cli(&path, &sharded, &["--shard", "1/2"]);
    bench_table_cli(&path, &sharded, &["--collect"]);
    assert_eq!(
        fs::read_to_string(sharded.join("metrics.csv")).unwrap(),
        csv
    );

    merge_tables_rebuild_the_table_from_its_cells(&whole);

    // The table records its models' fingerprints; models changed in place (a retrained world
    // at the same paths) are refused by running, collecting and merging, naming the model.
    let meta: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(whole.join("metrics.json")).unwrap()).unwrap();
    let inputs = meta["meta"]["inputs"].as_object().unwrap();
    let roles: Vec<&str> = inputs.keys().map(String::as_str).collect();
    assert_eq!(roles, ["clip", "dino", "student", "teacher", "towers"]);
    let index = student.join("model_index.json");
    let mut text = fs::read_to_string(&index).unwrap();
    text.push('\n');
    fs::write(&index, text).unwrap();
    for o in run_and_collect(&path, &whole) {
        crate::fit::assert_refused(&o, "the inputs changed since");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("student: sha256") && !err.contains("teacher"),
            "{err}"
        );
    }
    let rescored = dir.path().join("rescored");
    let cell = whole.join("cells/echodistill/dog/run");
    let o = tests::run_binary(
        "trainer",
        &[
            "eval",
            "--run",
            cell.to_str().unwrap(),
            "--out",
            rescored.to_str().unwrap(),
            "--dataset",
            tests::dreambench_dir().to_str().unwrap(),
            "--subject",
            "dog",
            "--clip",
            towers.join("clip").to_str().unwrap(),
            "--dino",
            towers.join("dino-v1").to_str().unwrap(),
            "--prompts",
            "2",
            "--seeds",
            "0",
            "--steps",
            "1",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let other_models = tests::merge_tables(
        &dir.path().join("mixed"),
        &[
            whole.join("cells/echodistill/can/eval-echodistill"),
            rescored,
        ],
        &[],
    );
    crate::fit::assert_refused(&other_models, "was scored on other inputs than");
}

/// `trainer merge-tables` on every cell's own `metrics.json` gives the table `bench-table`
/// assembled from their images: each subject's numbers as they are, the overall ones pooled
/// to the same values. Cells of the same subject twice, and other protocols, are refused.
fn merge_tables_rebuild_the_table_from_its_cells(whole: &Path) {
    let mut cells: Vec<String> = Vec::new();
    for method in fs::read_dir(whole.join("cells")).unwrap() {
        for subject in fs::read_dir(method.unwrap().path()).unwrap() {
            for e in fs::read_dir(subject.unwrap().path()).unwrap() {
                let e = e.unwrap().path();
                if e.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("eval-")
                {
                    cells.push(e.display().to_string());
                }
            }
        }
    }
    assert_eq!(cells.len(), 10);
    cells.sort();
    let merged = whole.parent().unwrap().join("merged");
    let merge = |inputs: &[String]| tests::merge_tables(&merged, inputs, &[]);
    let out = merge(&cells);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = |dir: &Path| -> Vec<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
        v["rows"].as_array().unwrap().clone()
    };
    let (expected, got) = (rows(whole), rows(&merged));
    assert_eq!(got.len(), expected.len());
    for e in &expected {
        let g = got
            .iter()
            .find(|g| g["label"] == e["label"] && g["steps"] == e["steps"])
            .unwrap_or_else(|| panic!("no merged row for {}", e["label"]));
        assert_eq!(g["subjects"], e["subjects"], "{}", e["label"]);
        for metric in ["clip_t", "clip_i", "dino", "clip_self"] {
            let (x, y) = (&g["overall"][metric], &e["overall"][metric]);
            assert_eq!(x["n"], y["n"]);
            for k in ["mean", "se"] {
                let (a, b) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
                assert!(
                    (a - b).abs() < 1e-12,
                    "{} {metric} {k}: {a} vs {b}",
                    e["label"]
                );
            }
        }
    }
    assert!(merged.join("metrics.md").is_file() && merged.join("metrics.png").is_file());

    let twice = merge(&[cells[0].clone(), whole.display().to_string()]);
    crate::fit::assert_refused(&twice, "merge tables of different subjects only");
    let other = whole.parent().unwrap().join("other-seeds.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(format!("{}/metrics.json", cells[1])).unwrap())
            .unwrap();
    v["meta"]["seeds"] = serde_json::json!([0, 1]);
    fs::write(&other, v.to_string()).unwrap();
    let mixed = merge(&[cells[0].clone(), other.display().to_string()]);
    crate::fit::assert_refused(&mixed, "merge tables of the same protocol only");
}

fn serde_yaml_string(v: &serde_json::Value) -> String {
    // JSON is YAML; the manifest reader takes either.
    serde_json::to_string_pretty(v).unwrap()
}
