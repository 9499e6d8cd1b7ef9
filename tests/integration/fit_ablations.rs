//! The paper's ablation switches change exactly what they say: no teacher, no discriminators,
//! no shared text encoder, teacher-first, echo off.

use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Tensor};
use trainer::fit::config::{FitConfig, Stage};
use trainer::fit::distill::Distiller;

use crate::fit::{dreambench, overrides, run_quiet, snapshot, tiny_models};

fn config(student: &Path, teacher: &Path, extra: &[&str]) -> FitConfig {
    let concept = format!(
        "concepts=[{{images: '{}', token: '<new1>', class: dog}}]",
        dreambench("dog").display()
    );
    FitConfig::load(
        None,
        &overrides(student, teacher, &[&[concept.as_str()], extra].concat()),
    )
    .unwrap()
}

fn moved(before: &HashMap<String, Tensor>, vs: &nn::VarStore) -> bool {
    vs.variables().iter().all(|(k, v)| !before[k].equal(v))
}

fn unchanged(before: &HashMap<String, Tensor>, vs: &nn::VarStore) -> bool {
    vs.variables().iter().all(|(k, v)| before[k].equal(v))
}

fn frozen_unchanged(d: &Distiller, snaps: &[(String, HashMap<String, Tensor>)]) {
    for ((name, snap), (_, vs)) in snaps.iter().zip(d.frozen_stores()) {
        assert!(unchanged(snap, vs), "frozen {name} changed");
    }
}

fn frozen(d: &Distiller) -> Vec<(String, HashMap<String, Tensor>)> {
    d.frozen_stores()
        .into_iter()
        .map(|(n, vs)| (n, snapshot(vs)))
        .collect()
}

#[test]
fn no_teacher_trains_the_student_and_rows_from_the_discriminators() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let mut d = Distiller::new(config(&student, &teacher, &["ablation.teacher=false"])).unwrap();
    assert!(d.teacher.is_none(), "no teacher is loaded");
    assert!(!d.frozen_stores().iter().any(|(n, _)| n == "teacher_unet"));
    let (kv, rows, heads) = (
        snapshot(&d.kv_student.vs),
        snapshot(&d.rows.vs),
        snapshot(&d.losses.ensemble.heads),
    );
    let fz = frozen(&d);
    for _ in 0..2 {
        let log = d.step().unwrap();
        assert!(log.teacher.is_none());
        let s = log.student.unwrap();
        assert_eq!((s.c_t, s.identity, s.mse, s.swd), (0.0, 0.0, 0.0, 0.0));
        assert!(s.adversarial > 0.0 && s.loss == s.adversarial);
    }
    assert!(moved(&kv, &d.kv_student.vs), "student K/V train");
    assert!(
        moved(&rows, &d.rows.vs),
        "the student's loss trains the rows"
    );
    assert!(moved(&heads, &d.losses.ensemble.heads), "heads train");
    frozen_unchanged(&d, &fz);
    // Without discriminators nothing would teach the student: refused up front.
    let err = FitConfig::load(
        None,
        &overrides(
            &student,
            &teacher,
            &[
                "concepts=[{images: x, token: '<new1>', class: dog}]",
                "ablation.teacher=false",
                "discriminators=[]",
            ],
        ),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("discriminators"), "{err:#}");
}

#[test]
fn no_discriminators_and_discriminator_subsets() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let mut d = Distiller::new(config(&student, &teacher, &["discriminators=[]"])).unwrap();
    assert!(d.losses.ensemble.members.is_empty());
    assert!(d.losses.ensemble.heads.variables().is_empty());
    let (kv, tkv, rows) = (
        snapshot(&d.kv_student.vs),
        snapshot(&d.teacher.as_ref().unwrap().kv.vs),
        snapshot(&d.rows.vs),
    );
    let log = d.step().unwrap();
    let s = log.student.unwrap();
    assert_eq!((s.adversarial, s.discriminator_loss), (0.0, 0.0));
    assert!(s.identity > 0.0 && s.mse > 0.0 && s.swd > 0.0);
    assert!(log.teacher.is_some());
    assert!(moved(&kv, &d.kv_student.vs));
    assert!(moved(&tkv, &d.teacher.as_ref().unwrap().kv.vs));
    assert!(moved(&rows, &d.rows.vs));

    let d = Distiller::new(config(&student, &teacher, &["discriminators=[dinov2]"])).unwrap();
    let names: Vec<&str> = d
        .losses
        .ensemble
        .members
        .iter()
        .map(|m| m.backbone.name())
        .collect();
    assert_eq!(names, ["dinov2"]);
}

#[test]
fn unshared_text_encoder_gives_the_student_its_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let mut d = Distiller::new(config(
        &student,
        &teacher,
        &["ablation.shared_text_encoder=false"],
    ))
    .unwrap();
    let own_rows = snapshot(&d.student_text.as_ref().unwrap().rows.vs);
    let shared_rows = snapshot(&d.rows.vs);
    assert!(d
        .frozen_stores()
        .iter()
        .any(|(n, _)| n == "student_text_encoder"));
    let fz = frozen(&d);
    d.step().unwrap();
    d.step().unwrap();
    assert!(
        moved(&own_rows, &d.student_text.as_ref().unwrap().rows.vs),
        "the student's own rows train"
    );
    assert!(moved(&shared_rows, &d.rows.vs), "the teacher's rows train");
    frozen_unchanged(&d, &fz);

    // The run folder keeps both sets of rows, and the student samples with its own encoder.
    let run = dir.path().join("run");
    run_quiet(
        config(
            &student,
            &teacher,
            &["ablation.shared_text_encoder=false", "iterations=1"],
        ),
        &run,
    );
    let own: HashMap<String, Tensor> =
        Tensor::read_safetensors(run.join("student_tokens.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let opts = trainer::checkpoint::LoadOptions {
        device: tch::Device::Cpu,
        kind: tch::Kind::Float,
        variant: None,
    };
    let p =
        trainer::fit::run_dir::load_trained(&run, trainer::fit::run_dir::Trained::Student, opts)
            .unwrap();
    let shared: HashMap<String, Tensor> = Tensor::read_safetensors(run.join("tokens.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        !shared["<new1>"].equal(&own["<new1>"]),
        "two different rows were learned"
    );
    let row = p.text_encoder.model.added_rows().unwrap().get(0);
    assert!(row.equal(&own["<new1>"]), "the student reads its own row");
}

#[test]
fn teacher_first_trains_the_teacher_then_the_student() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let c = config(
        &student,
        &teacher,
        &["ablation.teacher_first=true", "iterations=2"],
    );
    assert_eq!(
        c.stages(),
        [(Stage::TeacherOnly, 2), (Stage::StudentOnly, 2)]
    );
    let mut d = Distiller::new(c).unwrap();
    let snap = |d: &Distiller| {
        (
            snapshot(&d.teacher.as_ref().unwrap().kv.vs),
            snapshot(&d.rows.vs),
            snapshot(&d.kv_student.vs),
            snapshot(&d.losses.ensemble.heads),
        )
    };
    let (t0, r0, s0, h0) = snap(&d);
    for _ in 0..2 {
        let log = d.step().unwrap();
        assert_eq!(log.stage, Stage::TeacherOnly);
        assert!(log.teacher.is_some() && log.student.is_none());
    }
    assert!(moved(&t0, &d.teacher.as_ref().unwrap().kv.vs));
    assert!(moved(&r0, &d.rows.vs));
    assert!(unchanged(&s0, &d.kv_student.vs), "the student waits");
    assert!(unchanged(&h0, &d.losses.ensemble.heads));
    let (t1, r1, _, _) = snap(&d);
    for _ in 0..2 {
        let log = d.step().unwrap();
        assert_eq!(log.stage, Stage::StudentOnly);
        assert!(log.teacher.is_none() && log.student.is_some());
    }
    assert!(
        unchanged(&t1, &d.teacher.as_ref().unwrap().kv.vs),
        "the teacher is frozen"
    );
    assert!(unchanged(&r1, &d.rows.vs), "the rows are frozen");
    assert!(moved(&s0, &d.kv_student.vs));
    assert!(moved(&h0, &d.losses.ensemble.heads));
}

#[test]
fn echo_switch_adds_or_removes_the_echo_stage() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let on = config(
        &student,
        &teacher,
        &["echo.enabled=true", "echo.iterations=3", "iterations=2"],
    );
    assert_eq!(on.stages(), [(Stage::Distill, 2), (Stage::Echo, 3)]);
    assert_eq!((on.total_iterations(), on.stage_after(2)), (5, Stage::Echo));
    let off = config(&student, &teacher, &["iterations=2"]);
    assert_eq!(off.stages(), [(Stage::Distill, 2)]);
    let run = dir.path().join("off");
    run_quiet(config(&student, &teacher, &["iterations=1"]), &run);
    assert!(
        !run.join("echo").exists(),
        "no echo samples without the echo stage"
    );
}

/// `discriminator_real: reconstructions` changes only what the discriminators see as real: the
/// photos through the VAE instead of the photos. From the same seed and batch, one iteration
/// leaves the student, the teacher and the token rows bit-equal to a run on photos; only the
/// discriminator heads differ.
#[test]
fn reconstructed_reals_change_only_the_discriminator_step() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let mut photos = Distiller::new(config(&student, &teacher, &[])).unwrap();
    let mut recon = Distiller::new(config(
        &student,
        &teacher,
        &["discriminator_real=reconstructions"],
    ))
    .unwrap();
    let batch = photos.draw_batch();
    assert!(recon.draw_batch().images.equal(&batch.images), "same seed");
    let latents = photos.photo_latents(&batch);
    assert!(photos
        .discriminator_reals(&batch, &latents)
        .equal(&batch.images));

    let reals = recon.discriminator_reals(&batch, &recon.photo_latents(&batch));
    let vae = recon.student_networks().vae;
    let expected = tch::no_grad(|| {
        let latents = vae
            .encode(&batch.images)
            .sample_with(&batch.posterior_noise);
        vae.decode(&latents)
    });
    assert_eq!(reals.size(), batch.images.size());
    assert!(
        reals.allclose(&expected, 1e-5, 1e-5, false),
        "decode(encode(photos))"
    );
    let gap = (&reals - &batch.images).abs().max().double_value(&[]);
    assert!(gap > 1e-3, "a random VAE changes the photos ({gap})");

    let stores = |d: &Distiller| {
        (
            snapshot(&d.kv_student.vs),
            snapshot(&d.teacher.as_ref().unwrap().kv.vs),
            snapshot(&d.rows.vs),
            snapshot(&d.losses.ensemble.heads),
        )
    };
    let before = stores(&photos);
    photos.step_on(&batch).unwrap();
    recon.step_on(&batch).unwrap();
    let (kv, teacher_kv, rows, heads) = stores(&photos);
    assert!(
        moved(&before.0, &photos.kv_student.vs),
        "the student trained"
    );
    assert!(unchanged(&kv, &recon.kv_student.vs), "student K/V");
    assert!(
        unchanged(&teacher_kv, &recon.teacher.as_ref().unwrap().kv.vs),
        "teacher K/V"
    );
    assert!(unchanged(&rows, &recon.rows.vs), "token rows");
    assert!(
        !unchanged(&heads, &recon.losses.ensemble.heads),
        "the heads saw other reals"
    );
}
