//! Only what EchoDistill trains can change: the UNet's cross-attention K/V copies and the new
//! token rows live in their own stores; one optimiser step moves them and leaves every loaded
//! weight bit-identical.

use std::collections::HashMap;

use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};
use tests::fixture;
use trainer::checkpoint::{expected_names, load_text_encoder, load_unet, LoadOptions};
use trainer::fit::trainable::{CrossAttentionKv, TokenRows};

const F32_CPU: LoadOptions = LoadOptions {
    device: Device::Cpu,
    kind: Kind::Float,
    variant: None,
};

fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.copy()))
        .collect()
}

#[test]
fn only_kv_copies_and_token_rows_train() {
    let model = fixture("models/tiny-student");
    let mut unet = load_unet(&model.join("unet"), F32_CPU).unwrap();
    let mut text = load_text_encoder(&model.join("text_encoder"), F32_CPU).unwrap();
    let (unet_before, text_before) = (snapshot(&unet.vs), snapshot(&text.vs));

    tch::manual_seed(0);
    let sample = Tensor::randn([1, 4, 8, 8], tch::kind::FLOAT_CPU);
    let t = Tensor::from_slice(&[500f32]);
    // The tiny vocabulary has 514 ids; the new token gets id 514, initialised from id 100.
    let mut ids = vec![512i64, 100, 513];
    ids.resize(77, 0);
    let with_init = Tensor::from_slice(&ids).view([1, 77]);
    ids[1] = 514;
    let with_new = Tensor::from_slice(&ids).view([1, 77]);
    let reference = tch::no_grad(|| {
        unet.model
            .forward(&sample, &t, &text.model.forward(&with_init))
    });

    let kv = CrossAttentionKv::attach(&mut unet.model, Device::Cpu).unwrap();
    let rows = TokenRows::attach(
        &mut text.model,
        &[("<new1>".to_string(), vec![100])],
        Device::Cpu,
    )
    .unwrap();
    let kv_names: Vec<String> = expected_names(&unet.vs)
        .into_iter()
        .filter(|n| n.contains(".attn2.to_k.") || n.contains(".attn2.to_v."))
        .collect();
    assert_eq!(
        kv.names(),
        kv_names.as_slice(),
        "the copies carry the diffusers names"
    );
    assert_eq!(text.model.num_ids(), 515);
    // Attaching changes nothing yet: the copies equal the weights, the row equals id 100's.
    let attached = tch::no_grad(|| {
        unet.model
            .forward(&sample, &t, &text.model.forward(&with_new))
    });
    assert!(
        attached.equal(&reference),
        "attaching the trainable copies changed the output"
    );

    let kv_before: Vec<Tensor> = kv.tensors().into_iter().map(|(_, v)| v.copy()).collect();
    let row_before = rows.rows.copy();
    let mut opt_kv = nn::AdamW::default().build(&kv.vs, 1e-3).unwrap();
    let mut opt_rows = nn::AdamW::default().build(&rows.vs, 1e-3).unwrap();
    let loss = unet
        .model
        .forward(&sample, &t, &text.model.forward(&with_new))
        .square()
        .mean(Kind::Float);
    opt_kv.zero_grad();
    opt_rows.zero_grad();
    loss.backward();
    opt_kv.step();
    opt_rows.step();

    for (before, after) in [
        (&unet_before, snapshot(&unet.vs)),
        (&text_before, snapshot(&text.vs)),
    ] {
        assert_eq!(before.len(), after.len());
        for (name, value) in before {
            assert!(value.equal(&after[name]), "frozen weight {name} changed");
        }
    }
    let kv_after: Vec<Tensor> = kv.tensors().into_iter().map(|(_, v)| v).collect();
    assert!(
        kv_before.iter().zip(&kv_after).all(|(a, b)| !a.equal(b)),
        "every K/V copy trains"
    );
    assert!(!row_before.equal(&rows.rows), "the token row trains");

    // The files: K/V under diffusers names, the row under its token.
    let dir = tempfile::tempdir().unwrap();
    kv.save(&dir.path().join("student.safetensors")).unwrap();
    rows.save(&dir.path().join("tokens.safetensors")).unwrap();
    let saved: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("student.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(saved.len(), kv_names.len());
    assert!(saved.contains_key("mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"));
    let tokens: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("tokens.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert!(tokens["<new1>"].equal(&rows.rows.get(0).detach()));
}

#[test]
fn half_precision_unet_runs_with_f32_trainable_copies() {
    let model = fixture("models/tiny-student");
    let opts = LoadOptions {
        kind: Kind::BFloat16,
        ..F32_CPU
    };
    let mut unet = load_unet(&model.join("unet"), opts).unwrap();
    let kv = CrossAttentionKv::attach(&mut unet.model, Device::Cpu).unwrap();
    assert!(kv.tensors().iter().all(|(_, v)| v.kind() == Kind::Float));
    let sample = Tensor::randn([1, 4, 8, 8], (Kind::BFloat16, Device::Cpu));
    let context = Tensor::randn([1, 77, 16], (Kind::BFloat16, Device::Cpu));
    let out = unet
        .model
        .forward(&sample, &Tensor::from_slice(&[10f32]), &context);
    out.to_kind(Kind::Float)
        .square()
        .mean(Kind::Float)
        .backward();
    let grads: f64 = kv
        .tensors()
        .iter()
        .map(|(_, v)| v.grad().abs().sum(Kind::Float).double_value(&[]))
        .sum();
    assert!(
        grads > 0.0,
        "gradients reach the f32 copies through the bf16 UNet"
    );
}

#[test]
fn bad_initializer_ids_are_refused() {
    let model = fixture("models/tiny-student");
    let mut text = load_text_encoder(&model.join("text_encoder"), F32_CPU).unwrap();
    let err = TokenRows::attach(
        &mut text.model,
        &[("<new1>".into(), vec![9999])],
        Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("outside the 514-row vocabulary"),
        "{err}"
    );
    assert!(TokenRows::attach(&mut text.model, &[], Device::Cpu).is_err());
}
