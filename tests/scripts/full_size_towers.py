"""Full-size tower parity: the Rust (tch) image towers against transformers on the real architectures.

Each case builds a transformers model from the real Hugging Face config with seeded random weights
(nothing is downloaded), saves it with save_pretrained(safe_serialization=True), runs transformers
(float32, CPU, eval, no_grad, attn_implementation="sdpa") on a seeded N(0,1) input, frees the model,
then runs the Rust `tower_outputs` binary on the same folder and input and prints, for every output
tensor, max |reference| and the max abs error of the Rust output, plus wall times and peak RSS.

Cases (configs are the real ones; only the weights are random):
  dinov1-s16      facebook/dino-vits16: ViTModel(add_pooling_layer=False), 2x3x224x224
  dinov2-l-518    facebook/dinov2-large: Dinov2Model, 1x3x518x518 (37x37 patches, native positions)
  dinov2-l-224    the same folder at 1x3x224x224 (16x16 patches, bicubic-interpolated positions)
  clip-h14-ip     h94/IP-Adapter models/image_encoder (CLIP ViT-H/14, gelu) run as TOWER=ip with a
                  seeded IP-Adapter image_proj file (Linear(1024, 4*768) + LayerNorm(768)), the
                  projection's input being transformers' own image_embeds for the same pixels
  clip-l14        openai/clip-vit-large-patch14 vision tower (quick_gelu), TOWER=clip-vision

Random weights: the transformers default init, plus (so they are exercised) Dinov2's lambda1
layer-scales (0.5 + 0.1 randn), its cls / mask tokens and position embeddings (0.02 randn), and every
LayerNorm's affine parameters (weight 1 + 0.1 randn, bias 0.1 randn) in all towers (the default init
leaves them at ones / zeros, where a port that misnames or skips a LayerNorm still matches).

    $ECHODISTILL_PYTHON tests/scripts/full_size_towers.py \
        [--binary /tmp/tower_outputs] [--workdir /tmp/fulltowers] [--cases dinov1-s16,...] [--keep]
"""

import argparse
import gc
import os
import resource
import shutil
import subprocess
import sys
import time

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    ViTConfig,
    ViTModel,
)

DINO_V1 = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
               image_size=224, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True)
DINO_V2_L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4,
                 image_size=518, patch_size=14, layerscale_value=1.0, use_swiglu_ffn=False,
                 layer_norm_eps=1e-6)
CLIP_H14 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)
CLIP_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                layer_norm_eps=1e-5)
IP_TOKENS, IP_DIM = 4, 768

ALL_CASES = ("dinov1-s16", "dinov2-l-518", "dinov2-l-224", "clip-h14-ip", "clip-l14")

RUST_RSS = []  # per-call peak RSS of the Rust binary, GiB
ROWS = []  # (case, output, shape, max|ref|, max abs err, times string)


def log(*a):
    print(*a, flush=True)


def rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def randomize_layernorms(model, seed):
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm) and m.elementwise_affine:
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                n += 1
    return n


def build(cls, cfg_cls, cfg, seed, **kwargs):
    t = time.perf_counter()
    config = cfg_cls(**cfg, attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = cls(config, **kwargs).eval().to(torch.float32)
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    n_ln = randomize_layernorms(model, seed + 1)
    nparams = sum(p.numel() for p in model.parameters())
    log(f"  built {cls.__name__}: {nparams / 1e6:.1f}M params, {n_ln} LayerNorms randomized")
    return model, time.perf_counter() - t


def save(model, folder):
    t = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    files = sorted(os.listdir(folder))
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    log(f"  saved {folder}: {files}, {size / 2**30:.2f} GiB")
    return time.perf_counter() - t


def forward(model, x):
    t = time.perf_counter()
    with torch.no_grad():
        out = model(pixel_values=x)
    return out, time.perf_counter() - t


def run_rust(binary, args, workdir):
    cmd = [binary] + args
    log("  $ " + " ".join(cmd))
    so, se = os.path.join(workdir, "rust.stdout"), os.path.join(workdir, "rust.stderr")
    t = time.perf_counter()
    with open(so, "wb") as fo, open(se, "wb") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe)
        _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    rc = os.waitstatus_to_exitcode(status)
    rss = ru.ru_maxrss / 2**20  # KiB -> GiB, this call only
    RUST_RSS.append(rss)
    out, err = open(so, "rb").read(), open(se, "rb").read()
    if out.strip():
        log("  stdout: " + out.decode(errors="replace").strip())
    if rc != 0:
        log(f"  RUST FAILED rc={rc}; stderr verbatim:\n" + err.decode(errors="replace"))
    elif err.strip():
        log("  stderr: " + err.decode(errors="replace").strip()[-2000:])
    return rc, dt, rss


def compare(case, refs, out_path, times):
    got = load_file(out_path)
    log(f"  rust outputs: {{{', '.join(f'{k}: {list(v.shape)}' for k, v in got.items())}}}")
    for name, ref in refs.items():
        if name not in got:
            log(f"  {name}: MISSING from rust output")
            ROWS.append((case, name, list(ref.shape), ref.abs().max().item(), float("nan"), times))
            continue
        r = got[name]
        if tuple(r.shape) != tuple(ref.shape):
            log(f"  {name}: SHAPE MISMATCH rust {list(r.shape)} vs ref {list(ref.shape)}")
            ROWS.append((case, name, list(ref.shape), ref.abs().max().item(), float("nan"), times))
            continue
        err = (r.to(torch.float32) - ref).abs()
        mref = ref.abs().max().item()
        merr = err.max().item()
        rel = (err.norm() / ref.norm()).item()
        log(f"  {name} {list(ref.shape)}: max|ref| {mref:.4g}  max abs err {merr:.3g}  "
            f"mean abs err {err.mean().item():.3g}  rel L2 {rel:.3g}")
        ROWS.append((case, name, list(ref.shape), mref, merr, times))


def fmt_times(d):
    return ", ".join(f"{k} {v:.1f}s" for k, v in d.items())


def case_dinov1(a):
    case = "dinov1-s16"
    log(f"== {case}")
    folder = os.path.join(a.workdir, case)
    model, tb = build(ViTModel, ViTConfig, DINO_V1, 101, add_pooling_layer=False)
    ts = save(model, folder)
    x = torch.randn((2, 3, 224, 224), generator=torch.Generator().manual_seed(201))
    out, tf = forward(model, x)
    refs = {"last_hidden_state": out.last_hidden_state.contiguous()}
    del model, out
    gc.collect()
    inp, outp = os.path.join(a.workdir, f"{case}.in.safetensors"), os.path.join(a.workdir, f"{case}.out.safetensors")
    save_file({"pixel_values": x.contiguous()}, inp)
    rc, tr, crss = run_rust(a.binary, ["dinov1", folder, inp, outp], a.workdir)
    times = dict(build=tb, save=ts, hf_fwd=tf, rust=tr)
    log(f"  times: {fmt_times(times)}; python peak RSS {rss_gib():.2f} GiB, rust peak RSS {crss:.2f} GiB")
    if rc == 0:
        compare(case, refs, outp, fmt_times(times))
    else:
        ROWS.append((case, "RUST FAILED", None, float("nan"), float("nan"), fmt_times(times)))
    if not a.keep:
        shutil.rmtree(folder, ignore_errors=True)


def case_dinov2(a, sizes):
    log("== dinov2-l (build once, run each size)")
    folder = os.path.join(a.workdir, "dinov2-l")
    model, tb = build(Dinov2Model, Dinov2Config, DINO_V2_L, 102)
    g = torch.Generator().manual_seed(302)
    n_ls = 0
    with torch.no_grad():
        emb = model.embeddings
        for p in (emb.cls_token, emb.mask_token, emb.position_embeddings):
            p.copy_(0.02 * torch.randn(p.shape, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=g))
                n_ls += 1
    log(f"  randomized cls/mask/position embeddings and {n_ls} lambda1 layer-scales")
    ts = save(model, folder)
    pending = []
    for i, s in enumerate(sizes):
        case = f"dinov2-l-{s}"
        x = torch.randn((1, 3, s, s), generator=torch.Generator().manual_seed(202 + i))
        out, tf = forward(model, x)
        log(f"  {case}: transformers forward {tf:.1f}s, last_hidden_state {list(out.last_hidden_state.shape)}")
        pending.append((case, x, {"last_hidden_state": out.last_hidden_state.contiguous()}, tf))
        del out
    del model
    gc.collect()
    for case, x, refs, tf in pending:
        inp, outp = (os.path.join(a.workdir, f"{case}.in.safetensors"),
                     os.path.join(a.workdir, f"{case}.out.safetensors"))
        save_file({"pixel_values": x.contiguous()}, inp)
        rc, tr, crss = run_rust(a.binary, ["dinov2", folder, inp, outp], a.workdir)
        times = dict(build=tb, save=ts, hf_fwd=tf, rust=tr)
        log(f"  {case} times: {fmt_times(times)}; python peak RSS {rss_gib():.2f} GiB, "
            f"rust peak RSS {crss:.2f} GiB")
        if rc == 0:
            compare(case, refs, outp, fmt_times(times))
        else:
            ROWS.append((case, "RUST FAILED", None, float("nan"), float("nan"), fmt_times(times)))
    if not a.keep:
        shutil.rmtree(folder, ignore_errors=True)


def case_clip_h14_ip(a):
    case = "clip-h14-ip"
    log(f"== {case}")
    folder = os.path.join(a.workdir, case)
    model, tb = build(CLIPVisionModelWithProjection, CLIPVisionConfig, CLIP_H14, 103)
    ts = save(model, folder)
    x = torch.randn((1, 3, 224, 224), generator=torch.Generator().manual_seed(203))
    out, tf = forward(model, x)
    e = out.image_embeds.contiguous()
    # IP-Adapter image_proj (tencent ImageProjModel): LayerNorm(proj(x).reshape(b, 4, 768)), eps 1e-5.
    torch.manual_seed(403)
    proj = torch.nn.Linear(CLIP_H14["projection_dim"], IP_TOKENS * IP_DIM)
    norm = torch.nn.LayerNorm(IP_DIM, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.1 * torch.randn(IP_DIM))
        norm.bias.copy_(0.1 * torch.randn(IP_DIM))
        tokens = norm(proj(e).reshape(-1, IP_TOKENS, IP_DIM))
    ip_path = os.path.join(a.workdir, "ip-adapter.safetensors")
    save_file({"image_proj.proj.weight": proj.weight.detach().contiguous(),
               "image_proj.proj.bias": proj.bias.detach().contiguous(),
               "image_proj.norm.weight": norm.weight.detach().contiguous(),
               "image_proj.norm.bias": norm.bias.detach().contiguous()}, ip_path)
    refs = {"last_hidden_state": out.last_hidden_state.contiguous(), "image_embeds": e,
            "tokens": tokens.contiguous()}
    del model, out
    gc.collect()
    inp, outp = os.path.join(a.workdir, f"{case}.in.safetensors"), os.path.join(a.workdir, f"{case}.out.safetensors")
    save_file({"pixel_values": x.contiguous(), "image_embeds": e}, inp)
    rc, tr, crss = run_rust(a.binary, ["ip", folder, inp, outp, ip_path], a.workdir)
    times = dict(build=tb, save=ts, hf_fwd=tf, rust=tr)
    log(f"  times: {fmt_times(times)}; python peak RSS {rss_gib():.2f} GiB, rust peak RSS {crss:.2f} GiB")
    if rc == 0:
        compare(case, refs, outp, fmt_times(times))
    else:
        ROWS.append((case, "RUST FAILED", None, float("nan"), float("nan"), fmt_times(times)))
    if not a.keep:
        shutil.rmtree(folder, ignore_errors=True)


def case_clip_l14(a):
    case = "clip-l14"
    log(f"== {case}")
    folder = os.path.join(a.workdir, case)
    model, tb = build(CLIPVisionModelWithProjection, CLIPVisionConfig, CLIP_L14, 104)
    ts = save(model, folder)
    x = torch.randn((1, 3, 224, 224), generator=torch.Generator().manual_seed(204))
    out, tf = forward(model, x)
    refs = {"last_hidden_state": out.last_hidden_state.contiguous(), "image_embeds": out.image_embeds.contiguous()}
    del model, out
    gc.collect()
    inp, outp = os.path.join(a.workdir, f"{case}.in.safetensors"), os.path.join(a.workdir, f"{case}.out.safetensors")
    save_file({"pixel_values": x.contiguous()}, inp)
    rc, tr, crss = run_rust(a.binary, ["clip-vision", folder, inp, outp], a.workdir)
    times = dict(build=tb, save=ts, hf_fwd=tf, rust=tr)
    log(f"  times: {fmt_times(times)}; python peak RSS {rss_gib():.2f} GiB, rust peak RSS {crss:.2f} GiB")
    if rc == 0:
        compare(case, refs, outp, fmt_times(times))
    else:
        ROWS.append((case, "RUST FAILED", None, float("nan"), float("nan"), fmt_times(times)))
    if not a.keep:
        shutil.rmtree(folder, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="/tmp/tower_outputs")
    ap.add_argument("--workdir", default="/tmp/fulltowers")
    ap.add_argument("--cases", default=",".join(ALL_CASES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the model folders")
    a = ap.parse_args()
    cases = [c for c in a.cases.split(",") if c]
    for c in cases:
        if c not in ALL_CASES:
            sys.exit(f"unknown case {c}; known: {ALL_CASES}")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    os.makedirs(a.workdir, exist_ok=True)
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    if "dinov1-s16" in cases:
        case_dinov1(a)
    sizes = [s for s, c in ((518, "dinov2-l-518"), (224, "dinov2-l-224")) if c in cases]
    if sizes:
        case_dinov2(a, sizes)
    gc.collect()
    if "clip-h14-ip" in cases:
        case_clip_h14_ip(a)
    gc.collect()
    if "clip-l14" in cases:
        case_clip_l14(a)
    log(f"\ntotal {time.perf_counter() - t0:.0f}s; python peak RSS {rss_gib():.2f} GiB; "
        f"rust peak RSS (max over calls) {max(RUST_RSS, default=0):.2f} GiB")
    log("\n| case | output | shape | max abs ref | max abs err | times |")
    log("|---|---|---|---|---|---|")
    for case, name, shape, mref, merr, times in ROWS:
        log(f"| {case} | {name} | {shape} | {mref:.4g} | {merr:.3g} | {times} |")


if __name__ == "__main__":
    main()
