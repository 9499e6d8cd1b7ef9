//! The toy world's files: `trainer toy-data` writes a folder `trainer eval` reads as DreamBench
//! (a tiny run trained on a toy subject is scored against it), with captions of the grammar, and
//! refuses to overwrite.

use std::fs;

use trainer::eval::dreambench::DreamBench;
use trainer::eval::evaluate_into;
use trainer::eval::protocol::EvalSettings;
use trainer::fit::config::FitConfig;

use crate::eval::{eval_settings, OPTS};
use crate::fit::{overrides, run_quiet, tiny_models};

#[test]
fn toy_data_writes_a_dreambench_folder_that_eval_reads_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("toy");
    let o = tests::run_binary(
        "trainer",
        &[
            "toy-data",
            "--out",
            out.to_str().unwrap(),
            "--samples",
            "16",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(said.contains("30 subjects"), "{said}");
    for f in [
        "pretrain-samples.png",
        "subjects.png",
        "index.html",
        "dreambench/subjects.yaml",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let captions = fs::read_to_string(out.join("pretrain-captions.txt")).unwrap();
    assert_eq!(captions.lines().count(), 16);
    for line in captions.lines() {
        let (_, caption) = line.split_once('\t').unwrap();
        trainer::toy::parse(caption).unwrap();
    }

    // A tiny EchoDistill run on a toy subject, scored with the toy folder as the dataset.
    let bench = DreamBench::open(&out.join("dreambench")).unwrap();
    let subject = bench.subject("badge_03").unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let run = dir.path().join("run");
    let mut o = overrides(&student, &teacher, &["iterations=1"]);
    o.push(format!(
        "concepts=[{{images: '{}', token: '<new1>', class: {}}}]",
        bench.folder(subject).display(),
        subject.class
    ));
    run_quiet(FitConfig::load(None, &o).unwrap(), &run);
    let settings = EvalSettings {
        dataset: out.join("dreambench"),
        seeds: vec![0],
        ..eval_settings(&dir.path().join("student/towers"), vec![1])
    };
    let scored = evaluate_into(&run, &settings, &dir.path().join("eval"), OPTS).unwrap();
    let records = &scored.outcome.records;
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.subject == "badge_03"));
    assert_eq!(records[0].prompt, "a <new1> badge on a blue background");
    assert_eq!(records[0].clip_prompt, "a badge on a blue background");
    for r in records {
        for v in [r.score.clip_t, r.score.clip_i, r.score.dino] {
            assert!(v.is_finite() && (-1.0..=1.0).contains(&v), "{r:?}");
        }
    }

    // The folder is never overwritten, and bad settings are named.
    let again = tests::run_binary("trainer", &["toy-data", "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("already exists"),
        "{err}"
    );
    let bad = tests::run_binary(
        "trainer",
        &[
            "toy-data",
            "--out",
            dir.path().join("x").to_str().unwrap(),
            "--resolution",
            "4",
        ],
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("resolution 4"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A caption the text encoder sees cut off would teach the wrong scene: every caption (the
/// longest shapes of the grammar included) and every toy prompt fits CLIP's 77 positions.
#[test]
fn toy_captions_fit_the_text_encoder() {
    use trainer::toy::caption::Description;
    use trainer::toy::{ToyWorld, ToyWorldConfig, TOY_PROMPTS};

    let tokenizer = runtime::ClipTokenizer::from_dir(&tests::clip_tokenizer_dir()).unwrap();
    let world = ToyWorld::new(ToyWorldConfig::default()).unwrap();
    let mut longest = 0;
    for i in 0..3000 {
        let scene = world.scene(i);
        for caption in [
            Description::full(&scene).to_string(),
            world.caption(i, &scene),
        ] {
            let encoding = tokenizer.encode(&caption);
            assert_eq!(encoding.truncated, 0, "{caption}");
            longest = longest.max(encoding.attention_mask.iter().sum::<u32>());
        }
    }
    // Two fully described objects on a two-colour background are the longest captions.
    assert!((30..77).contains(&longest), "{longest}");
    for template in TOY_PROMPTS {
        let prompt = template.replace("{0}", "sks").replace("{1}", "totem");
        assert_eq!(tokenizer.encode(&prompt).truncated, 0, "{prompt}");
    }
}
