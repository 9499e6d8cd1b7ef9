//! Memory options change how the backward passes run, not what they compute: the checkpointed
//! VAE decoder (`checkpoint_decoder`) gives the same losses and the same trained tensors as
//! keeping its activations, bit for bit on the CPU; the checkpointed UNets (`checkpoint_unet`)
//! the same up to the rounding of gradients summed in another order.

use std::path::Path;

use tch::nn;
use trainer::fit::baseline::Baseline;
use trainer::fit::config::{FitConfig, MethodKind};
use trainer::fit::distill::Distiller;

use crate::fit::{dreambench, overrides, snapshot, tiny_models};

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

fn distiller(student: &Path, teacher: &Path, extra: &[&str]) -> Distiller {
    Distiller::new(config(student, teacher, extra)).unwrap()
}

/// How far two runs' gradients on a store are apart (what its optimiser's last step used): the
/// largest |g_a − g_b| over the largest |g_a|.
fn gradient_difference(a: &nn::VarStore, b: &nn::VarStore) -> f64 {
    let b = b.variables();
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (k, va) in a.variables() {
        let (ga, gb) = (va.grad(), b[&k].grad());
        assert_eq!(
            ga.defined(),
            gb.defined(),
            "{k}: a gradient on one side only"
        );
        if ga.defined() {
            diff = diff.max((&ga - &gb).abs().max().double_value(&[]));
            scale = scale.max(ga.abs().max().double_value(&[]));
        }
    }
    assert!(scale > 0.0, "the store has gradients");
    diff / scale
}

/// |a − b| relative to `scale` (a loss term against the total it is part of).
fn relative(a: f64, b: f64, scale: f64) -> f64 {
    (a - b).abs() / scale.abs()
}

/// Two runs of three iterations, with and without the checkpoint, from the same seed: equal
/// logged losses and bit-equal student K/V, token rows and discriminator heads. With the
/// teacher (latent and image losses both reach the student) and without it (images only).
#[test]
fn checkpointed_decoder_gives_the_same_update() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    for extra in [&[][..], &["ablation.teacher=false"][..]] {
        let mut kept = distiller(&student, &teacher, extra);
        let mut checkpointed = distiller(
            &student,
            &teacher,
            &[extra, &["checkpoint_decoder=true"]].concat(),
        );
        let start = snapshot(&kept.kv_student.vs);
        for _ in 0..3 {
            let (a, b) = (kept.step().unwrap(), checkpointed.step().unwrap());
            let (a, b) = (a.student.unwrap(), b.student.unwrap());
            assert_eq!(
                (a.loss, a.identity, a.mse, a.swd, a.adversarial, a.grad_norm),
                (b.loss, b.identity, b.mse, b.swd, b.adversarial, b.grad_norm),
                "{extra:?}"
            );
            assert_eq!(a.discriminator_loss, b.discriminator_loss, "{extra:?}");
        }
        for (name, x, y) in [
            (
                "student K/V",
                &kept.kv_student.vs,
                &checkpointed.kv_student.vs,
            ),
            ("token rows", &kept.rows.vs, &checkpointed.rows.vs),
            (
                "discriminator heads",
                &kept.losses.ensemble.heads,
                &checkpointed.losses.ensemble.heads,
            ),
        ] {
            let y = snapshot(y);
            for (k, v) in x.variables() {
                assert!(v.equal(&y[&k]), "{extra:?}: {name} {k} differs");
            }
        }
        assert!(
            kept.kv_student
                .vs
                .variables()
                .iter()
                .any(|(k, v)| !start[k].equal(v)),
            "{extra:?}: the student trained"
        );
    }
}

/// Agreement of the checkpointed UNets with the plain ones: measured at most 1.0e-5 on the
/// gradients and 7.7e-7 on the logged losses (float rounding of sums taken in another order; a
/// lost gradient path is off by 5.4e-3 in the unit tests of `models/unet_checkpoint.rs`). The
/// updates themselves are not compared: Adam's first steps normalise each gradient entry, so
/// entries near its ε turn rounding into visible differences.
const UNET_TOLERANCE: f64 = 1e-4;

/// EchoDistill for three iterations with every UNet checkpointed (the teacher's step and the
/// student's one step): the same gradients of the student's and the teacher's K/V and the token
/// rows in each step, and the same logged losses, up to rounding.
#[test]
fn checkpointed_unets_give_the_same_echodistill_update() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    let mut kept = distiller(&student, &teacher, &[]);
    let mut checkpointed = distiller(&student, &teacher, &["checkpoint_unet=true"]);
    let (mut worst_loss, mut worst_gradient) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        let (a, b) = (kept.step().unwrap(), checkpointed.step().unwrap());
        let (ta, tb) = (a.teacher.unwrap(), b.teacher.unwrap());
        let (sa, sb) = (a.student.unwrap(), b.student.unwrap());
        for (what, x, y, scale) in [
            ("teacher loss", ta.loss, tb.loss, ta.loss),
            ("student loss", sa.loss, sb.loss, sa.loss),
            ("identity", sa.identity, sb.identity, sa.loss),
            ("mse", sa.mse, sb.mse, sa.loss),
            ("swd", sa.swd, sb.swd, sa.loss),
        ] {
            let d = relative(x, y, scale);
            assert!(d < UNET_TOLERANCE, "{what}: {x} vs {y}");
            worst_loss = worst_loss.max(d);
        }
        // Each step used the same gradients (they stay on the stores until the next step).
        for (name, a, b) in [
            (
                "student K/V",
                &kept.kv_student.vs,
                &checkpointed.kv_student.vs,
            ),
            (
                "teacher K/V",
                &kept.teacher.as_ref().unwrap().kv.vs,
                &checkpointed.teacher.as_ref().unwrap().kv.vs,
            ),
            ("token rows", &kept.rows.vs, &checkpointed.rows.vs),
        ] {
            let d = gradient_difference(a, b);
            assert!(d < UNET_TOLERANCE, "{name}: gradient difference {d}");
            worst_gradient = worst_gradient.max(d);
        }
    }
    eprintln!("EchoDistill: losses {worst_loss:e}, gradients {worst_gradient:e}");
}

/// DreamBooth (every UNet weight, the time embedding's included) and LoRA (adapters inside the
/// attention) for three steps with the UNet checkpointed: the same gradients and losses up to
/// rounding.
#[test]
fn checkpointed_unets_give_the_same_baseline_update() {
    let dir = tempfile::tempdir().unwrap();
    let (student, teacher) = tiny_models(dir.path());
    for method in [MethodKind::Dreambooth, MethodKind::Lora] {
        let m = format!("method={}", method.id());
        let mut kept = Baseline::new(config(&student, &teacher, &[&m])).unwrap();
        let mut checkpointed =
            Baseline::new(config(&student, &teacher, &[&m, "checkpoint_unet=true"])).unwrap();
        let (mut worst_loss, mut worst_gradient) = (0.0f64, 0.0f64);
        for _ in 0..3 {
            let (a, b) = (kept.step().unwrap(), checkpointed.step().unwrap());
            let (a, b) = (a.finetune.unwrap(), b.finetune.unwrap());
            let d = relative(a.loss, b.loss, a.loss);
            assert!(
                d < UNET_TOLERANCE,
                "{method:?}: loss {} vs {}",
                a.loss,
                b.loss
            );
            worst_loss = worst_loss.max(d);
            for ((name, a), (_, b)) in kept
                .trained_stores()
                .into_iter()
                .zip(checkpointed.trained_stores())
            {
                let d = gradient_difference(a, b);
                assert!(
                    d < UNET_TOLERANCE,
                    "{method:?} {name}: gradient difference {d}"
                );
                worst_gradient = worst_gradient.max(d);
            }
        }
        eprintln!("{method:?}: losses {worst_loss:e}, gradients {worst_gradient:e}");
    }
}
