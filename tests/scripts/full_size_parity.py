"""Full-size parity: the Rust (tch) sampler against diffusers on the real SD architectures.

For each of three real architectures (SD-Turbo, SD 2.1 768-v, SD 1.5) this script builds a diffusers
StableDiffusionPipeline folder from the real Hugging Face configs with seeded random weights (nothing
is downloaded), runs the diffusers pipeline in float32 on the CPU at 64x64 pixels (8x8 latents) from a
given noise tensor with output_type="latent", then runs `trainer sample --noise ... --save-latents ...`
on the same folder and noise, and prints the max |reference latents| and the max abs error of the
Rust latents. Only the final latents are compared (the Rust PNG is 8-bit, so no image comparison).

Cases (the configs are the real ones; only the weights are random):
  sd-turbo   Euler, timestep_spacing "trailing", 1 step, guidance 0.
  sd21-768v  DDIM, v-prediction, upcast attention, 2 steps (kept short for CPU time), guidance 7.5,
             negative prompt "".
  sd15       SD 1.5 UNet / quick_gelu text encoder, pad token <|endoftext|>; SD-Turbo's Euler config
             with timestep_spacing "leading" (what SD 1.5's PNDM config uses), 1 step, guidance 0.
             A 1-step "leading" run samples at t=1 (sigma ~0.03), where the UNet barely moves the
             latents, so a 4-step run of the same folder is reported as an extra row.

Each case's folder (~5 GB in float32) is written under --workdir, measured, then deleted. The models
are built, saved and freed one at a time; the Python pipeline is freed before the Rust run.

Needs torch, diffusers, transformers and safetensors (the goldens environment) and a built trainer:
    $ECHODISTILL_PYTHON tests/scripts/full_size_parity.py \
        [--trainer /tmp/trainer-fullcheck] [--tokenizer ~/.cache/echodistill/clip-tokenizer] \
        [--workdir /tmp/fullsize] [--cases sd-turbo,sd21-768v,sd15]
"""

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import time

import diffusers
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

PROMPT = "a photo of a dog on the beach"
HEIGHT = WIDTH = 64
LATENT_SHAPE = (1, 4, HEIGHT // 8, WIDTH // 8)

SD_TURBO_SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "trailing", "trained_betas": None, "use_karras_sigmas": False,
}
SD21_SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
# SD 1.5 ships a PNDM config with timestep_spacing "leading"; Euler with the same betas stands in.
SD15_SCHEDULER = dict(SD_TURBO_SCHEDULER, timestep_spacing="leading")

BLOCKS = dict(
    in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
# diffusers reads attention_head_dim as the number of heads (legacy naming); SD 2.x: 64-dim heads.
SD2_UNET = dict(BLOCKS, sample_size=64, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                use_linear_projection=True, upcast_attention=False)
SD21_768_UNET = dict(SD2_UNET, sample_size=96, upcast_attention=True)
SD15_UNET = dict(BLOCKS, sample_size=64, attention_head_dim=8, cross_attention_dim=768,
                 use_linear_projection=False)
VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4, norm_num_groups=32, sample_size=768, scaling_factor=0.18215,
)
SD2_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
                bos_token_id=0, eos_token_id=2, pad_token_id=1)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                 projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1)

# name -> architecture, tokenizer pad token, and the runs (steps, guidance, negative prompt).
CASES = {
    "sd-turbo": dict(unet=SD2_UNET, text=SD2_TEXT, sched=(EulerDiscreteScheduler, SD_TURBO_SCHEDULER),
                     pad="!", runs=[(1, 0.0, None)], seed=100),
    "sd21-768v": dict(unet=SD21_768_UNET, text=SD2_TEXT, sched=(DDIMScheduler, SD21_SCHEDULER),
                      pad="!", runs=[(2, 7.5, "")], seed=200),
    "sd15": dict(unet=SD15_UNET, text=SD15_TEXT, sched=(EulerDiscreteScheduler, SD15_SCHEDULER),
                 pad="<|endoftext|>", runs=[(1, 0.0, None), (4, 0.0, None)], seed=300),
}


def rss_gib(who):
    return resource.getrusage(who).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


class Timer:
    def __init__(self, label):
        self.label = label

    def __enter__(self):
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t
        print(f"  {self.label}: {self.s:.1f} s (python peak RSS so far {rss_gib(resource.RUSAGE_SELF):.1f} GiB)",
              flush=True)


def write_tokenizer(src, dst, pad):
    """Copy the real CLIP tokenizer files; SD 1.x pads with <|endoftext|>, SD 2.x with "!"."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(dst, name)
        with open(path) as f:
            config = json.load(f)
        config["pad_token"] = pad
        with open(path, "w") as f:
            json.dump(config, f, indent=2)


def build_folder(case, folder, tokenizer_src):
    """Random-weight pipeline from the real configs, saved with safetensors."""
    seed = case["seed"]
    with Timer("build"):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**case["unet"]).eval()
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**VAE).eval()
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**case["text"])).eval()
        cls, cfg = case["sched"]
        scheduler = cls.from_config(cfg)
        tok_tmp = folder + "-tok"
        write_tokenizer(tokenizer_src, tok_tmp, case["pad"])
        tokenizer = CLIPTokenizer.from_pretrained(tok_tmp)
        shutil.rmtree(tok_tmp)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        params = {n: sum(p.numel() for p in m.parameters()) for n, m in
                  (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
        print(f"  parameters: {params}")
    with Timer("save_pretrained"):
        pipe.save_pretrained(folder, safe_serialization=True)
        # transformers 5 writes only tokenizer.json; put back the real four-file layout.
        write_tokenizer(tokenizer_src, os.path.join(folder, "tokenizer"), case["pad"])
    del pipe, unet, vae, text_encoder
    gc.collect()


def run_diffusers(folder, noise, steps, guidance, negative):
    with Timer("diffusers load"):
        pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32).to("cpu")
        pipe.set_progress_bar_config(disable=True)
    with torch.no_grad(), Timer(f"diffusers sample ({steps} step(s))") as t:
        latents = pipe(PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                       height=HEIGHT, width=WIDTH, latents=noise.clone(), output_type="latent").images
    info = dict(scheduler=type(pipe.scheduler).__name__, timesteps=pipe.scheduler.timesteps.tolist(),
                init_noise_sigma=float(pipe.scheduler.init_noise_sigma))
    del pipe
    gc.collect()
    return latents, t.s, info


def run_rust(trainer, folder, noise_file, out_dir, steps, guidance, negative):
    out = os.path.join(out_dir, f"rust-{steps}.safetensors")
    cmd = [trainer, "sample", "--model", folder, "--prompt", PROMPT, "--steps", str(steps),
           "--noise", noise_file, "--guidance", str(guidance), "--height", str(HEIGHT), "--width", str(WIDTH),
           "--out", os.path.join(out_dir, f"rust-{steps}.png"), "--save-latents", out]
    if negative is not None:
        cmd[4:4] = ["--negative-prompt", negative]
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    timed = ["/usr/bin/time", "-f", "MAXRSS_KB %M"] + cmd if os.path.exists("/usr/bin/time") else cmd
    print("  $ " + " ".join(repr(c) if " " in c or c == "" else c for c in cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.run(timed, cwd=out_dir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    rss = None
    stderr_lines = []
    for line in proc.stderr.splitlines():
        if line.startswith("MAXRSS_KB "):
            rss = int(line.split()[1]) / 2**20
        else:
            stderr_lines.append(line)
    print(f"  rust sample: {wall:.1f} s, exit {proc.returncode}, peak RSS "
          f"{'?' if rss is None else f'{rss:.1f} GiB'}", flush=True)
    if proc.stdout.strip():
        print("  rust stdout:\n" + "\n".join("    " + l for l in proc.stdout.strip().splitlines()))
    if stderr_lines:
        print("  rust stderr:\n" + "\n".join("    " + l for l in stderr_lines))
    if proc.returncode != 0:
        return None, wall, rss, "\n".join(stderr_lines)
    return load_file(out)["latents"], wall, rss, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", default="/tmp/trainer-fullcheck", help="the Rust trainer binary")
    parser.add_argument("--tokenizer", default=os.path.expanduser("~/.cache/echodistill/clip-tokenizer"),
                        help="a real CLIP tokenizer folder (SD 2.x files, pads with '!')")
    parser.add_argument("--workdir", default="/tmp/fullsize")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--keep", action="store_true", help="keep each case's folder")
    args = parser.parse_args()

    diffusers.utils.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(2)
    os.makedirs(args.workdir, exist_ok=True)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")

    rows = []
    for name in args.cases.split(","):
        case = CASES[name]
        print(f"== {name}", flush=True)
        case_dir = os.path.join(args.workdir, name)
        folder = os.path.join(case_dir, "model")
        shutil.rmtree(case_dir, ignore_errors=True)
        os.makedirs(case_dir)
        build_folder(case, folder, args.tokenizer)
        for steps, guidance, negative in case["runs"]:
            noise = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(case["seed"] + 10 + steps),
                                dtype=torch.float32)
            noise_file = os.path.join(case_dir, f"noise-{steps}.safetensors")
            save_file({"noise": noise}, noise_file)
            ref, py_s, info = run_diffusers(folder, noise, steps, guidance, negative)
            print(f"  scheduler {info}")
            save_file({"latents": ref.contiguous()}, os.path.join(case_dir, f"ref-{steps}.safetensors"))
            got, rust_s, rust_rss, err = run_rust(args.trainer, folder, noise_file, case_dir, steps, guidance, negative)
            row = dict(case=name, steps=steps, guidance=guidance, ref_max=ref.abs().max().item(),
                       rust_s=rust_s, py_s=py_s, rust_rss=rust_rss, error=err)
            if got is not None:
                if got.shape != ref.shape:
                    row["error"] = f"shape {tuple(got.shape)} vs {tuple(ref.shape)}"
                else:
                    diff = (got.float() - ref).abs()
                    row["max_err"] = diff.max().item()
                    row["mean_err"] = diff.mean().item()
            print(f"  result: {row}", flush=True)
            rows.append(row)
        if not args.keep:
            shutil.rmtree(case_dir)

    print("\n| case | steps | guidance | max abs ref latents | max abs error | mean abs error | Rust wall s |"
          " diffusers sample s | Rust peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        err = f"{r['max_err']:.3e}" if "max_err" in r else f"FAILED: {r['error'].splitlines()[-1] if r['error'] else '?'}"
        mean = f"{r['mean_err']:.3e}" if "mean_err" in r else "-"
        rss = f"{r['rust_rss']:.1f}" if r["rust_rss"] is not None else "?"
        print(f"| {r['case']} | {r['steps']} | {r['guidance']} | {r['ref_max']:.4g} | {err} | {mean} |"
              f" {r['rust_s']:.1f} | {r['py_s']:.1f} | {rss} |")
    print(f"python peak RSS {rss_gib(resource.RUSAGE_SELF):.1f} GiB")


if __name__ == "__main__":
    main()
