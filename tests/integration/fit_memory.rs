//! Memory options change how the student's backward pass runs, not what it computes: the
//! checkpointed VAE decoder (`checkpoint_decoder`) gives the same losses and the same trained
//! tensors as keeping its activations, bit for bit on the CPU.

use std::path::Path;

use trainer::fit::config::FitConfig;
use trainer::fit::distill::Distiller;

use crate::fit::{dreambench, overrides, snapshot, tiny_models};

fn distiller(student: &Path, teacher: &Path, extra: &[&str]) -> Distiller {
    let concept = format!(
        "concepts=[{{images: '{}', token: '<new1>', class: dog}}]",
        dreambench("dog").display()
    );
    let config = FitConfig::load(
        None,
        &overrides(student, teacher, &[&[concept.as_str()], extra].concat()),
    )
    .unwrap();
    Distiller::new(config).unwrap()
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
