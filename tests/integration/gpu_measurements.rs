//! tests/scripts/gpu_measurements.sh, the one command a lent GPU machine runs for the owed GPU
//! figures (issues #5, #6, #11), runs its steps on the tiny architectures on the CPU: the
//! models it writes, `trainer bench` with the upload comparison, a short fit and bench-eval,
//! `trainer bench` with the decoder checkpointed, then the UNets too, the summary table and the log archive. The
//! eager PyTorch reference is left out (no PyTorch in CI); on a GPU machine it runs between the
//! benches.

use std::process::Command;

use tests::{binary, clip_tokenizer_dir, workspace_root};

/// The s/iteration cell of the summary row that starts with `side`, round 1.
fn seconds(summary: &str, side: &str) -> f64 {
    let row = summary
        .lines()
        .find(|l| l.starts_with(&format!("| {side} | 1 |")))
        .unwrap_or_else(|| panic!("no {side:?} row in\n{summary}"));
    let cell = row.split('|').nth(3).unwrap().trim();
    cell.parse()
        .unwrap_or_else(|_| panic!("{side}: {cell:?} is not a number in\n{summary}"))
}

#[test]
fn the_gpu_script_runs_its_steps_on_the_tiny_models() {
    let dir = tempfile::tempdir().unwrap();
    let (out, work) = (dir.path().join("out"), dir.path().join("work"));
    let output = Command::new("bash")
        .arg(workspace_root().join("tests/scripts/gpu_measurements.sh"))
        .args(["--trainer".as_ref(), binary("trainer").as_os_str()])
        .args(["--tokenizer".as_ref(), clip_tokenizer_dir().as_os_str()])
        .args(["--out".as_ref(), out.as_os_str()])
        .args(["--work".as_ref(), work.as_os_str()])
        .args(["--size", "tiny", "--device", "cpu", "--dtype", "f32"])
        .args(["--iters", "1", "--rounds", "1", "--no-reference"])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the script failed:\n{log}");
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(!summary.contains("FAILED"), "{summary}");
    assert!(seconds(&summary, "trainer bench") > 0.0);
    assert!(seconds(&summary, "trainer bench, pageable uploads") > 0.0);
    assert!(seconds(&summary, "trainer bench, checkpoint_decoder=true") > 0.0);
    assert!(
        seconds(
            &summary,
            "trainer bench, checkpoint_decoder=true checkpoint_unet=true"
        ) > 0.0
    );
    assert!(
        summary.contains("end to end") && summary.contains("per generated-and-scored image"),
        "no bench-eval figure in\n{summary}"
    );
    // Everything else comes back as one archive (a device call returns at most 8 files).
    let listed = Command::new("tar")
        .arg("-tzf")
        .arg(out.join("logs.tar.gz"))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listed.stdout);
    for name in [
        "trainer-bench-1.log",
        "trainer-bench-checkpointed.log",
        "trainer-bench-checkpointed-unet.log",
        "fit.log",
        "bench-eval.log",
        "init-student.log",
    ] {
        assert!(
            names.contains(name),
            "{name} is not in logs.tar.gz: {names}"
        );
    }
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2, "{out:?}");
}
