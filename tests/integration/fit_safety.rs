//! Safety of a run: NaN recovery (restore + lower learning rate, bounded, logged), Ctrl-C writes a
//! checkpoint and exits 130, and SIGKILL inside a checkpoint write leaves a run that resumes to
//! the same weights as an uninterrupted one.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use trainer::fit::config::FitConfig;
use trainer::fit::failpoint::Failpoint;
use trainer::fit::runner::{run, RunOptions, RunOutcome};

use crate::fit::{dreambench, overrides, resume_and_compare, run_quiet, tiny_models};

fn concept() -> String {
    format!(
        "concepts=[{{images: '{}', token: '<new1>', class: dog}}]",
        dreambench("dog").display()
    )
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn nan_restores_the_last_checkpoint_and_lowers_the_learning_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let config = |extra: &[&str]| {
        FitConfig::load(
            None,
            &overrides(
                &student,
                &teacher,
                &[&[concept().as_str(), "iterations=4", "save_every=2"], extra].concat(),
            ),
        )
        .unwrap()
    };
    let out = dir.path().join("run");
    let options = RunOptions {
        quiet: true,
        failpoints: vec![Failpoint::Nan(3)],
        ..RunOptions::default()
    };
    assert_eq!(
        run(config(&[]), &out, &options).unwrap(),
        RunOutcome::Finished
    );
    let events = lines(&out.join("events.jsonl"));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["iteration"], 3);
    assert_eq!(events[0]["restored_iteration"], 2);
    assert_eq!(events[0]["lr_scale"], 0.5);
    let log = lines(&out.join("log.jsonl"));
    let iterations: Vec<u64> = log
        .iter()
        .map(|l| l["iteration"].as_u64().unwrap())
        .collect();
    assert_eq!(iterations, [1, 2, 3, 4], "the poisoned iteration ran again");
    assert!(log
        .iter()
        .all(|l| l["teacher_loss"].as_f64().is_some_and(f64::is_finite)));
    assert_eq!(log[1]["lr_teacher"], 1e-5);
    assert_eq!(
        log[2]["lr_teacher"], 0.5e-5,
        "the rerun uses the lowered rate"
    );
    assert!(fs::read_to_string(out.join("report.html"))
        .unwrap()
        .contains("recovered"));

    // No recoveries allowed: the run stops with a message naming the checkpoint.
    let out = dir.path().join("strict");
    let err = run(config(&["recovery.max_events=0"]), &out, &options).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("diverged at iteration 3") && msg.contains("checkpoint"),
        "{msg}"
    );
}

fn spawn_fit(
    out: &Path,
    student: &Path,
    teacher: &Path,
    extra: &[&str],
    failpoint: Option<&str>,
) -> Child {
    let mut args: Vec<String> = vec!["fit".into(), "--out".into(), out.display().to_string()];
    for o in overrides(student, teacher, &[&[concept().as_str()], extra].concat()) {
        args.push("--set".into());
        args.push(o);
    }
    if let Some(f) = failpoint {
        args.push("--failpoint".into());
        args.push(f.into());
    }
    Command::new(tests::binary("trainer"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let out = dir.path().join("run");
    let child = spawn_fit(
        &out,
        &student,
        &teacher,
        &["iterations=1000", "save_every=0"],
        None,
    );
    let log = out.join("log.jsonl");
    wait_for("the first iteration", || {
        fs::read_to_string(&log).is_ok_and(|l| !l.is_empty())
    });
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("trainer fit --resume"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("checkpoint/state.json")).unwrap())
            .unwrap();
    let done = state["iteration"].as_u64().unwrap() as usize;
    assert!((1..1000).contains(&done), "checkpoint at {done}");
    assert_eq!(lines(&log).len(), done, "log and checkpoint agree");
    assert!(out.join("report.html").is_file());
}

/// Starts a run that pauses inside the checkpoint after iteration 2 at `point`, kills it with
/// SIGKILL there, and checks `--resume` ends where an uninterrupted run does.
fn killed_in_checkpoint(
    point: &str,
    dir: &Path,
    straight: &Path,
    student: &Path,
    teacher: &Path,
) -> PathBuf {
    let out = dir.join(format!("killed-{point}"));
    let mut child = spawn_fit(
        &out,
        student,
        teacher,
        &["iterations=3", "save_every=1"],
        Some(&format!("pause-checkpoint-{point}@2")),
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the run ended before the failpoint"
        );
        if line.contains("failpoint: paused") {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL: no handler, no cleanup
    child.wait().unwrap();
    resume_and_compare(
        straight,
        &out,
        &format!("a SIGKILL in the checkpoint's {point}"),
    );
    out
}

#[test]
fn sigkill_during_a_checkpoint_write_leaves_a_resumable_run() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let straight = dir.path().join("straight");
    let config = FitConfig::load(
        None,
        &overrides(
            &student,
            &teacher,
            &[concept().as_str(), "iterations=3", "save_every=1"],
        ),
    )
    .unwrap();
    run_quiet(config, &straight);
    for point in ["write", "swap"] {
        let out = killed_in_checkpoint(point, dir.path(), &straight, &student, &teacher);
        assert_eq!(lines(&out.join("log.jsonl")).len(), 3);
    }
}
