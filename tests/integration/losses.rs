//! The student's losses: MS-SWD's properties and agreement with a plain loop implementation,
//! gradients against finite differences, and a discriminator step that learns to separate
//! real from fake while the backbones stay untouched.

use std::path::PathBuf;
use std::rc::Rc;

use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};
use tests::fixture;
use trainer::checkpoint::LoadOptions;
use trainer::discriminator::{Backbone, Ensemble};
use trainer::losses::adversarial::AdversarialLoss;
use trainer::losses::alignment::{identity_loss, latent_mse};
use trainer::losses::ms_swd::MsSwd;
use trainer::towers::{dino_input, load_dino_v1, load_dino_v2, IpEncoder};

fn towers() -> PathBuf {
    fixture("towers")
}

/// A smooth random image in [-0.8, 0.8] (batch, 3, size, size).
fn image(seed: i64, batch: i64, size: i64, kind: Kind) -> Tensor {
    tch::manual_seed(seed);
    let coarse = Tensor::rand([batch, 3, size / 4, size / 4], (kind, Device::Cpu));
    (coarse.upsample_bilinear2d([size, size], false, None, None) * 1.6 - 0.8).to_kind(kind)
}

fn swd(seed: u64, scales: usize, patch: i64, x: &Tensor, y: &Tensor) -> f64 {
    MsSwd::with_settings(scales, 32, patch, seed)
        .forward(x, y)
        .unwrap()
        .double_value(&[0])
}

#[test]
fn ms_swd_is_zero_symmetric_and_grows_with_colour_shift_and_blur() {
    let x = image(1, 1, 96, Kind::Float);
    let y = image(2, 1, 96, Kind::Float);
    assert_eq!(swd(0, 5, 11, &x, &x), 0.0);
    let (xy, yx) = (swd(3, 5, 11, &x, &y), swd(3, 5, 11, &y, &x));
    assert!(xy > 0.0 && (xy - yx).abs() < 1e-5 * xy, "{xy} vs {yx}");
    // A growing shift of the red channel, measured with the same directions each time.
    let shift = |amount: f64| {
        let red = Tensor::from_slice(&[amount, 0.0, 0.0])
            .to_kind(Kind::Float)
            .view([1, 3, 1, 1]);
        (&x + red).clamp(-1.0, 1.0)
    };
    let shifted: Vec<f64> = [0.05, 0.1, 0.2, 0.4]
        .iter()
        .map(|&a| swd(4, 5, 11, &x, &shift(a)))
        .collect();
    assert!(
        shifted.windows(2).all(|w| w[0] < w[1]),
        "colour shift: {shifted:?}"
    );
    // Growing blur: repeated 3x3 box filters.
    let blur = |times: usize| {
        let k = Tensor::ones([3, 1, 3, 3], (Kind::Float, Device::Cpu)) / 9.0;
        let mut t = x.shallow_clone();
        for _ in 0..times {
            t = t.reflection_pad2d([1, 1, 1, 1]).conv2d(
                &k,
                None::<Tensor>,
                [1, 1],
                [0, 0],
                [1, 1],
                3,
            );
        }
        t
    };
    let blurred: Vec<f64> = [1, 2, 4, 8]
        .iter()
        .map(|&n| swd(5, 5, 11, &x, &blur(n)))
        .collect();
    assert!(blurred.windows(2).all(|w| w[0] < w[1]), "blur: {blurred:?}");
}

#[test]
fn ms_swd_is_permutation_invariant_only_for_single_pixel_patches_at_one_scale() {
    // With 1x1 patches and one scale, MS-SWD compares colour distributions only, so shuffling
    // pixels changes nothing; 11x11 patches see the neighbourhoods the shuffle destroys.
    let x = image(6, 1, 32, Kind::Float);
    tch::manual_seed(7);
    let perm = Tensor::randperm(32 * 32, (Kind::Int64, Device::Cpu));
    let shuffled = x
        .view([1, 3, 32 * 32])
        .index_select(2, &perm)
        .view([1, 3, 32, 32]);
    assert!(swd(8, 1, 1, &x, &shuffled) < 1e-5);
    assert!(swd(8, 1, 11, &x, &shuffled) > 0.1);
}

// ---- An independent MS-SWD written with loops, sharing no code with the library. ----

fn reflect(i: i64, n: i64) -> usize {
    let r = if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    };
    r as usize
}

type Img = Vec<Vec<Vec<f64>>>; // [channel][row][col]

fn to_img(t: &Tensor) -> Img {
    let s = t.size();
    (0..3)
        .map(|c| {
            (0..s[2])
                .map(|i| (0..s[3]).map(|j| t.double_value(&[0, c, i, j])).collect())
                .collect()
        })
        .collect()
}

fn pyramid_loop(img: &Img, levels: usize) -> Vec<Img> {
    let w = [1.0, 4.0, 6.0, 4.0, 1.0];
    let mut out = vec![img.clone()];
    for _ in 1..levels {
        let last = out.last().unwrap();
        let (h, wd) = (last[0].len() as i64, last[0][0].len() as i64);
        let next: Img = (0..3)
            .map(|c| {
                (0..h)
                    .step_by(2)
                    .map(|i| {
                        (0..wd)
                            .step_by(2)
                            .map(|j| {
                                let mut acc = 0.0;
                                for a in 0..5 {
                                    for b in 0..5 {
                                        acc += w[a] * w[b] / 256.0
                                            * last[c][reflect(i + a as i64 - 2, h)]
                                                [reflect(j + b as i64 - 2, wd)];
                                    }
                                }
                                acc
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        out.push(next);
    }
    out
}

#[allow(clippy::needless_range_loop)]
fn lab_loop(img: &Img) -> Img {
    let (h, w) = (img[0].len(), img[0][0].len());
    let mut out = vec![vec![vec![0.0; w]; h]; 3];
    for i in 0..h {
        for j in 0..w {
            let lin: Vec<f64> = (0..3)
                .map(|c| {
                    let v = img[c][i][j];
                    if v > 0.04045 {
                        ((v + 0.055) / 1.055).powf(2.4)
                    } else {
                        v / 12.92
                    }
                })
                .collect();
            // The linear-RGB → XYZ matrix of the official MS-SWD code (its rational constants,
            // within 1e-5 of the IEC sRGB matrix), written out as decimals.
            let x = 0.412_386_563_252_991_7 * lin[0]
                + 0.357_591_490_920_625_4 * lin[1]
                + 0.180_450_491_203_563_7 * lin[2];
            let y = 0.212_636_821_677_323_84 * lin[0]
                + 0.715_182_981_841_250_7 * lin[1]
                + 0.072_180_196_481_425_47 * lin[2];
            let z = 0.019_330_620_152_483_987 * lin[0]
                + 0.119_197_163_640_208_45 * lin[1]
                + 0.950_372_587_005_435_4 * lin[2];
            let f = |t: f64| {
                let d: f64 = 6.0 / 29.0;
                if t > d * d * d {
                    t.cbrt()
                } else {
                    t / (3.0 * d * d) + 4.0 / 29.0
                }
            };
            let (fx, fy, fz) = (f(x * 1.052_156_925), f(y), f(z * 0.918_357_670));
            out[0][i][j] = 116.0 * fy - 16.0;
            out[1][i][j] = 500.0 * (fx - fy);
            out[2][i][j] = 200.0 * (fy - fz);
        }
    }
    out
}

// Index loops on purpose: this is the plain reading of the definition.
#[allow(clippy::needless_range_loop)]
fn swd_loop(a: &Img, b: &Img, dirs: &Tensor) -> f64 {
    let (p, patch) = (dirs.size()[0], dirs.size()[2]);
    let (h, w) = (a[0].len() as i64, a[0][0].len() as i64);
    let half = patch / 2;
    let project = |img: &Img, d: i64| {
        let mut v = Vec::new();
        for i in 0..h {
            for j in 0..w {
                let mut acc = 0.0;
                for c in 0..3 {
                    for u in 0..patch {
                        for t in 0..patch {
                            acc += dirs.double_value(&[d, c as i64, u, t])
                                * img[c][reflect(i + u - half, h)][reflect(j + t - half, w)];
                        }
                    }
                }
                v.push(acc);
            }
        }
        v.sort_by(f64::total_cmp);
        v
    };
    let mut total = 0.0;
    for d in 0..p {
        let (pa, pb) = (project(a, d), project(b, d));
        total += pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).sum::<f64>() / pa.len() as f64;
    }
    total / p as f64
}

#[test]
fn ms_swd_equals_a_plain_loop_implementation() {
    let (scales, patch) = (3, 5);
    let x = image(9, 1, 24, Kind::Double);
    let y = image(10, 1, 24, Kind::Double);
    let mut ms = MsSwd::with_settings(scales, 6, patch, 11);
    let dirs: Vec<Tensor> = (0..scales)
        .map(|_| ms.sample_directions(Kind::Double, Device::Cpu))
        .collect();
    let fast = ms.forward_with(&x, &y, &dirs).unwrap().double_value(&[0]);
    let unit = |t: &Tensor| to_img(&((t + 1.0) / 2.0).clamp(0.0, 1.0));
    let (px, py) = (
        pyramid_loop(&unit(&x), scales),
        pyramid_loop(&unit(&y), scales),
    );
    let slow: f64 = px
        .iter()
        .zip(&py)
        .zip(&dirs)
        .map(|((a, b), d)| swd_loop(&lab_loop(a), &lab_loop(b), d))
        .sum::<f64>()
        / scales as f64;
    assert!(
        (fast - slow).abs() <= 1e-9 * slow.max(1.0),
        "library {fast} vs loops {slow}"
    );
}

// ---- Gradients against central finite differences, in f64. ----

fn check_gradient(what: &str, x: &Tensor, f: impl Fn(&Tensor) -> Tensor) {
    let x = x.detach().set_requires_grad(true);
    let loss = f(&x);
    loss.backward();
    let grad = x.grad();
    let flat = x.detach().flatten(0, -1);
    let n = flat.size()[0];
    let h = 1e-6;
    for k in [0, n / 7, n / 3, n / 2, n - 1] {
        let bump = |delta: f64| {
            let y = flat.copy();
            let _ = y.get(k).g_add_scalar_(delta);
            f(&y.view(x.size().as_slice())).double_value(&[])
        };
        let numeric = (bump(h) - bump(-h)) / (2.0 * h);
        let analytic = grad.flatten(0, -1).double_value(&[k]);
        let tol = 1e-5 * (1.0 + numeric.abs());
        assert!(
            (numeric - analytic).abs() <= tol,
            "{what}: d/dx[{k}] numeric {numeric} vs autograd {analytic}"
        );
    }
}

const F64_CPU: LoadOptions = LoadOptions {
    device: Device::Cpu,
    kind: Kind::Double,
    variant: None,
};

#[test]
fn loss_gradients_match_finite_differences() {
    let x = image(12, 1, 24, Kind::Double);
    let y = image(13, 1, 24, Kind::Double);
    let mut ms = MsSwd::with_settings(3, 8, 5, 14);
    let dirs: Vec<Tensor> = (0..3)
        .map(|_| ms.sample_directions(Kind::Double, Device::Cpu))
        .collect();
    check_gradient("ms-swd", &x, |t| {
        ms.forward_with(t, &y, &dirs).unwrap().sum(Kind::Double)
    });
    check_gradient("latent mse", &x, |t| latent_mse(t, &y));

    let ip = IpEncoder::load(
        &towers().join("clip-vision"),
        &towers().join("ip-adapter/ip-adapter.safetensors"),
        F64_CPU,
        true,
    )
    .unwrap();
    let target = tch::no_grad(|| ip.tokens(&y)).unwrap();
    check_gradient("identity", &x, |t| {
        identity_loss(&ip.tokens(t).unwrap(), &target)
    });

    let dino = load_dino_v1(&towers().join("dino-v1"), F64_CPU).unwrap();
    let ensemble = Ensemble::new(
        vec![Backbone::DinoV1(dino, dino_input(32, true))],
        AdversarialLoss::CrossEntropy,
        Device::Cpu,
    )
    .unwrap();
    let mut heads = ensemble.heads;
    heads.set_kind(Kind::Double);
    let ensemble = Ensemble { heads, ..ensemble };

    check_gradient("adversarial (generator)", &x, |t| {
        ensemble.generator_loss(t).unwrap().to_kind(Kind::Double)
    });
}

#[test]
fn discriminator_heads_learn_while_backbones_stay_frozen() {
    let opts = LoadOptions {
        kind: Kind::Float,
        ..F64_CPU
    };
    let ip = Rc::new(
        IpEncoder::load(
            &towers().join("clip-vision"),
            &towers().join("ip-adapter/ip-adapter.safetensors"),
            opts,
            true,
        )
        .unwrap(),
    );
    // Copies of every backbone weight, in name order.
    let snapshot = |e: &Ensemble| -> Vec<Tensor> {
        let stores: Vec<&nn::VarStore> = e
            .members
            .iter()
            .flat_map(|m| match &m.backbone {
                Backbone::DinoV1(m, _) => vec![&m.vs],
                Backbone::DinoV2(m, _) => vec![&m.vs],
                Backbone::Ip(ip) => vec![&ip.encoder.vs, &ip.projection.0],
            })
            .collect();
        let mut vars: Vec<(String, Tensor)> = stores.iter().flat_map(|s| s.variables()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.into_iter().map(|(_, t)| t.copy()).collect()
    };
    for loss in [AdversarialLoss::CrossEntropy, AdversarialLoss::Hinge] {
        let ensemble = Ensemble::new(
            vec![
                Backbone::DinoV1(
                    load_dino_v1(&towers().join("dino-v1"), opts).unwrap(),
                    dino_input(32, true),
                ),
                Backbone::DinoV2(
                    load_dino_v2(&towers().join("dino-v2"), opts).unwrap(),
                    dino_input(32, true),
                ),
                Backbone::Ip(ip.clone()),
            ],
            loss,
            Device::Cpu,
        )
        .unwrap();
        let before = snapshot(&ensemble);
        let heads_before: Vec<Tensor> = ensemble
            .heads
            .trainable_variables()
            .iter()
            .map(Tensor::copy)
            .collect();
        let mut opt = nn::Adam::default().build(&ensemble.heads, 1e-3).unwrap();
        // Separable batches: warm-tinted "real" images, cool-tinted "fake" ones.
        let batch = |seed: i64| {
            let base = image(seed, 8, 32, Kind::Float) * 0.5;
            let tint = Tensor::from_slice(&[0.4f32, 0.0, -0.4]).view([1, 3, 1, 1]);
            (
                (&base + &tint).clamp(-1.0, 1.0),
                (&base - &tint).clamp(-1.0, 1.0),
            )
        };
        // What fit does: the student's pass hands over its backbone features (with the IP
        // tokens its identity loss computed) and the discriminator step detaches them. Same
        // loss, bit for bit, as a fresh pass over the detached images.
        {
            let (real, fake) = batch(50);
            let fake = fake.set_requires_grad(true);
            let tokens = ip.tokens(&fake).unwrap();
            let handed = ensemble.features(&fake, Some(&tokens)).unwrap();
            let fresh = ensemble.features(&fake, None).unwrap();
            for (h, f) in handed.iter().zip(&fresh) {
                assert!(h.equal(f), "{loss:?}: handed-over features differ");
            }
            let real_features = ensemble.features(&real, None).unwrap();
            let reused = ensemble
                .discriminator_loss_of(&real_features, &handed)
                .unwrap();
            let again = ensemble.discriminator_loss(&real, &fake).unwrap();
            assert!(reused.equal(&again), "{loss:?}: {reused:?} vs {again:?}");
            assert!(
                ensemble
                    .generator_loss_of(&handed, &fake)
                    .equal(&ensemble.generator_loss(&fake).unwrap()),
                "{loss:?}: generator loss from handed-over features"
            );
        }
        for step in 0..60 {
            let (real, fake) = batch(100 + step);
            let l = ensemble.discriminator_loss(&real, &fake).unwrap();
            opt.backward_step(&l);
        }
        let (real, fake) = batch(999);
        let logits_real = tch::no_grad(|| ensemble.logits(&real)).unwrap();
        let logits_fake = tch::no_grad(|| ensemble.logits(&fake)).unwrap();
        for (k, (r, f)) in logits_real.iter().zip(&logits_fake).enumerate() {
            let correct = r.argmax(1, false).eq(1).sum(Kind::Int64).int64_value(&[])
                + f.argmax(1, false).eq(0).sum(Kind::Int64).int64_value(&[]);
            let accuracy = correct as f64 / 16.0;
            assert!(accuracy > 0.95, "{loss:?}: member {k} accuracy {accuracy}");
        }
        let after = snapshot(&ensemble);
        assert_eq!(before.len(), after.len());
        assert!(
            before.iter().zip(&after).all(|(a, b)| a.equal(b)),
            "{loss:?}: a backbone weight changed"
        );
        let heads_after = ensemble.heads.trainable_variables();
        assert!(
            heads_before
                .iter()
                .zip(&heads_after)
                .any(|(a, b)| !a.equal(b)),
            "{loss:?}: the heads did not train"
        );
    }
}
