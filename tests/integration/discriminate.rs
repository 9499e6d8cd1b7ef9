//! `trainer discriminate`: a run's discriminator heads score image folders. Heads trained on a
//! concept's photos call those photos more real than the run's own one-step samples; runs
//! without heads are refused by name.

use std::fs;

use trainer::fit::config::FitConfig;

use crate::fit::{assert_refused, dreambench, overrides, run_quiet, tiny_models};

#[test]
fn heads_score_the_photos_above_the_students_samples() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let concept = format!(
        "concepts=[{{images: '{}', token: '<new1>', class: dog}}]",
        dreambench("dog").display()
    );
    // Fast heads and a still student: the heads have one job, telling photos from samples.
    let fit = |out: &str, extra: &[&str]| {
        let config = FitConfig::load(
            None,
            &overrides(
                &student,
                &teacher,
                &[
                    &[
                        concept.as_str(),
                        "iterations=40",
                        "lr_discriminator=1e-3",
                        "lr_student=1e-12",
                        "lr_teacher=1e-12",
                    ],
                    extra,
                ]
                .concat(),
            ),
        )
        .unwrap();
        let run = dir.path().join(out);
        run_quiet(config, &run);
        run
    };
    let run = fit("run", &[]);
    let samples = dir.path().join("samples");
    fs::create_dir_all(&samples).unwrap();
    for seed in 0..4 {
        let out = samples.join(format!("{seed}.png"));
        tests::run_binary_ok(
            "trainer",
            &[
                "sample",
                "--run",
                run.to_str().unwrap(),
                "--prompt",
                "a photo of a <new1> dog",
                "--seed",
                &seed.to_string(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
    }
    let photos = dreambench("dog");
    let csv = dir.path().join("p.csv");
    let stdout = tests::run_binary_ok(
        "trainer",
        &[
            "discriminate",
            "--run",
            run.to_str().unwrap(),
            photos.to_str().unwrap(),
            samples.to_str().unwrap(),
            "--csv",
            csv.to_str().unwrap(),
        ],
    );
    assert!(stdout.contains("(iteration 40)"), "{stdout}");
    assert!(
        stdout.contains("| P(real) dinov1 | P(real) dinov2 | P(real) ip |"),
        "{stdout}"
    );
    let text = fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("folder,file,p_real_dinov1,p_real_dinov2,p_real_ip")
    );
    let mean = |folder: &std::path::Path| {
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(1)
            .filter(|l| l.starts_with(&format!("{},", folder.display())))
            .map(|l| {
                l.rsplit(',')
                    .take(3)
                    .map(|v| v.parse::<f64>().unwrap())
                    .collect()
            })
            .collect();
        for r in &rows {
            assert!(r.iter().all(|p| (0.0..=1.0).contains(p)), "{r:?}");
        }
        let n = rows.len();
        (n, rows.iter().flatten().sum::<f64>() / (3 * n) as f64)
    };
    let (n_photos, p_photos) = mean(&photos);
    let (n_samples, p_samples) = mean(&samples);
    assert_eq!(n_photos, fs::read_dir(&photos).unwrap().count());
    assert_eq!(n_samples, 4);
    assert!(
        p_photos > p_samples + 0.2,
        "photos {p_photos:.3}, samples {p_samples:.3}\n{stdout}"
    );

    // Runs without heads, and missing folders, are refused by name.
    let discriminate = |run: &std::path::Path, folder: &std::path::Path| {
        tests::run_binary(
            "trainer",
            &[
                "discriminate",
                "--run",
                run.to_str().unwrap(),
                folder.to_str().unwrap(),
            ],
        )
    };
    let plain = fit("plain", &["discriminators=[]", "iterations=1"]);
    assert_refused(&discriminate(&plain, &photos), "trained no discriminators");
    let baseline = fit("ti", &["method=textual-inversion", "iterations=1"]);
    assert_refused(
        &discriminate(&baseline, &photos),
        "only EchoDistill runs train discriminators",
    );
    let missing = dir.path().join("nowhere");
    assert_refused(
        &discriminate(&run, &missing),
        &missing.display().to_string(),
    );
}
