"""Tiny random-weight models and golden outputs for the Rust network ports' parity tests.

Builds, from configs with seeded random weights (nothing is downloaded), and writes under OUT:

  tiny-student/             a diffusers StableDiffusionPipeline folder (save_pretrained, safetensors):
                            a small UNet with linear projections in its transformers, a small VAE,
                            a 2-layer CLIP text encoder, a byte-level CLIP tokenizer with no merges
                            and SD-Turbo's EulerDiscreteScheduler config.
  tiny-teacher/             the same layout and the same text encoder / VAE / tokenizer weights, with
                            a UNet using conv projections and upcast attention, and SD 2.1's DDIM
                            (v-prediction) config.
  text-encoder-quick-gelu/  a CLIPTextModel like the shared one (same seed, so the same weights) but
                            with quick_gelu, as SD 1.x's encoder has.
  goldens.safetensors       inputs and outputs in float32 (token ids in int64): the text encoders,
                            both UNets, the VAE's encode/decode, and whole sampling runs through the
                            pipelines (student Euler 1/2/4 steps, student Euler ancestral 2/4 steps
                            with the scheduler's per-step noise recorded, teacher DDIM 25 steps with
                            classifier-free guidance).
  goldens.json              prompts, guidance scales, step counts, seeds, shapes, a line per tensor
                            and the library versions.

Everything runs in float32 on the CPU in eval mode; rerunning gives the same files.

Needs torch, diffusers, transformers and safetensors (the goldens environment):
    python tests/scripts/make_model_goldens.py --out tests/fixtures/models
"""

import argparse
import json
import os
import shutil

import diffusers
import safetensors
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SD_TURBO_SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "trailing", "trained_betas": None, "use_karras_sigmas": False,
}
SD21_SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}

UNET_COMMON = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16, norm_num_groups=4,
)
# diffusers reads attention_head_dim as the number of heads (its legacy naming).
STUDENT_UNET = dict(UNET_COMMON, attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=False)
TEACHER_UNET = dict(UNET_COMMON, attention_head_dim=2, use_linear_projection=False, upcast_attention=True)
VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.18215,
)
TEXT = dict(
    vocab_size=514, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=16,
    bos_token_id=512, eos_token_id=513, pad_token_id=0,
)
# SD 1.x's encoder config (openai/clip-vit-large-patch14) carries bos 0 / pad 1 / eos 2; with eos 2
# transformers picks the pooled token by argmax(ids), which only matters for the pooled output.
TEXT_QUICK_GELU = dict(TEXT, hidden_act="quick_gelu", bos_token_id=0, pad_token_id=1, eos_token_id=2)

# Seeds: one per model (torch.manual_seed right before building it) and one per random input.
SEEDS = {
    "text_encoder": 1000, "text_encoder_quick_gelu": 1000,  # same weights, only the activation differs
    "vae": 1001, "unet_student": 1002, "unet_teacher": 1003,
    "unet_student_inputs": 2000, "unet_teacher_inputs": 2001, "vae_inputs": 2002,
    "student_euler_1": 3001, "student_euler_2": 3002, "student_euler_4": 3004,
    "student_ancestral_2": 4002, "student_ancestral_4": 4004,
    "student_ancestral_2_generator": 5002, "student_ancestral_4_generator": 5004,
    "teacher_ddim_25": 6025,
}

TEXT_PROMPTS = ["a photo of a dog", "A <new1> cat!"]
PROMPT = "a photo of a dog"
HEIGHT = WIDTH = 16  # the VAE has 2 blocks: vae_scale_factor 2, so 8x8 latents
LATENT_SHAPE = (1, 4, 8, 8)
UNET_TIMESTEPS = [999.0, 251.0]
STUDENT_EULER_STEPS = (1, 2, 4)
STUDENT_ANCESTRAL_STEPS = (2, 4)
TEACHER_STEPS = 25
TEACHER_GUIDANCE = 7.5


def bytes_to_unicode():
    # GPT-2/CLIP's reversible map from bytes to printable characters, in CLIP's vocab order.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(folder):
    """A CLIP tokenizer with only the byte symbols: every word falls apart into single bytes."""
    symbols = bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 514 and vocab.index("<|startoftext|>") == 512
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")

    def added(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    # SD 2.x's tokenizer files (pads with "!").
    special = {"bos_token": added("<|startoftext|>"), "eos_token": added("<|endoftext|>"),
               "pad_token": "!", "unk_token": added("<|endoftext|>")}
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
    config = dict(special, add_prefix_space=False, do_lower_case=True, errors="replace",
                  model_max_length=77, tokenizer_class="CLIPTokenizer")
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def build(cls_or_fn, seed, *args, **kwargs):
    torch.manual_seed(seed)
    model = cls_or_fn(*args, **kwargs)
    return model.eval().to(torch.float32)


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def ancestral_by_hand(scheduler, unet, prompt_embeds, noise, step_noise, n):
    """Euler ancestral from the recorded noises, written out from the scheduler's formula."""
    scheduler.set_timesteps(n)
    sigmas = scheduler.sigmas
    x = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        sigma, sigma_to = sigmas[i], sigmas[i + 1]
        eps = unet(x / (sigma**2 + 1) ** 0.5, t, encoder_hidden_states=prompt_embeds).sample
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        # Same operation order as EulerAncestralDiscreteScheduler.step (epsilon), so rounding matches.
        pred_original = x - sigma * eps
        derivative = (x - pred_original) / sigma
        x = x + derivative * (sigma_down - sigma)
        x = x + step_noise[i] * sigma_up
    return x


def main(out):
    diffusers.utils.logging.set_verbosity_error()  # keep the output to the tensor list
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # one thread keeps CPU reductions in the same order on every run
    os.makedirs(out, exist_ok=True)
    for sub in ("tiny-student", "tiny-teacher", "text-encoder-quick-gelu"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)

    g = {}  # golden tensors
    desc = {}  # one line per tensor

    def put(name, tensor, line):
        g[name] = tensor.detach().contiguous().clone()
        desc[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", ""), "about": line}

    # Tokenizer: written by hand, then loaded back through transformers to prove it works.
    tok_dir = os.path.join(out, "_tokenizer_tmp")
    write_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    shutil.rmtree(tok_dir)
    assert tokenizer.bos_token_id == 512 and tokenizer.eos_token_id == 513, (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert tokenizer.pad_token_id == 0, tokenizer.pad_token_id  # "!" is the first byte symbol

    text_encoder = build(CLIPTextModel, SEEDS["text_encoder"], CLIPTextConfig(**TEXT))
    text_quick = build(CLIPTextModel, SEEDS["text_encoder_quick_gelu"], CLIPTextConfig(**TEXT_QUICK_GELU))
    vae = build(AutoencoderKL, SEEDS["vae"], **VAE)
    unet_student = build(UNet2DConditionModel, SEEDS["unet_student"], **STUDENT_UNET)
    unet_teacher = build(UNet2DConditionModel, SEEDS["unet_teacher"], **TEACHER_UNET)
    student_sched = EulerDiscreteScheduler.from_config(SD_TURBO_SCHEDULER)
    teacher_sched = DDIMScheduler.from_config(SD21_SCHEDULER)

    def pipeline(unet, scheduler):
        return StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        ).to("cpu", torch.float32)

    student = pipeline(unet_student, student_sched)
    teacher = pipeline(unet_teacher, teacher_sched)
    for p in (student, teacher):
        p.set_progress_bar_config(disable=True)
    assert student.vae_scale_factor == 2
    student.save_pretrained(os.path.join(out, "tiny-student"), safe_serialization=True)
    teacher.save_pretrained(os.path.join(out, "tiny-teacher"), safe_serialization=True)
    text_quick.save_pretrained(os.path.join(out, "text-encoder-quick-gelu"), safe_serialization=True)
    # transformers 5 saves only tokenizer.json + a trimmed config; put back SD 2.x's four files.
    for sub in ("tiny-student", "tiny-teacher"):
        shutil.rmtree(os.path.join(out, sub, "tokenizer"))
        write_tokenizer(os.path.join(out, sub, "tokenizer"))

    with torch.no_grad():
        # Text encoders.
        ids = tokenizer(TEXT_PROMPTS, padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids.to(torch.int64)
        put("text.input_ids", ids, f"tiny tokenizer on {TEXT_PROMPTS}, padded with '!' (0) to 77")
        put("text.last_hidden_state", text_encoder(ids)[0],
            "shared gelu text encoder (tiny-student/text_encoder), no attention mask, after final_layer_norm")
        put("text_quick_gelu.last_hidden_state", text_quick(ids)[0],
            "text-encoder-quick-gelu on text.input_ids, no attention mask")

        # UNets on random inputs.
        for name, unet in (("student", unet_student), ("teacher", unet_teacher)):
            gen = torch.Generator().manual_seed(SEEDS[f"unet_{name}_inputs"])
            sample = torch.randn((2, 4, 8, 8), generator=gen)
            ehs = torch.randn((2, 77, 16), generator=gen)
            t = torch.tensor(UNET_TIMESTEPS, dtype=torch.float32)
            put(f"unet_{name}.sample", sample, "UNet input latents ~ N(0,1)")
            put(f"unet_{name}.timestep", t, "per-batch float timesteps")
            put(f"unet_{name}.encoder_hidden_states", ehs, "cross-attention context ~ N(0,1)")
            put(f"unet_{name}.out", unet(sample, t, encoder_hidden_states=ehs).sample, f"tiny-{name} UNet output")

        # VAE encode / decode.
        gen = torch.Generator().manual_seed(SEEDS["vae_inputs"])
        image = torch.rand((1, 3, 16, 16), generator=gen) * 2 - 1
        latents = torch.randn(LATENT_SHAPE, generator=gen)
        dist = vae.encode(image).latent_dist
        put("vae.image", image, "VAE input image, uniform in [-1, 1)")
        put("vae.posterior_mean", dist.mean, "encoder moments, first half of the channels (quant_conv applied)")
        put("vae.posterior_logvar", dist.logvar, "encoder moments, second half, clamped to [-30, 20]")
        put("vae.latents", latents, "VAE decoder input ~ N(0,1)")
        put("vae.decoded", vae.decode(latents).sample, "vae.decode(vae.latents), no scaling, no clamp")

        # Student, Euler: the pipeline scales the given latents by init_noise_sigma itself.
        for n in STUDENT_EULER_STEPS:
            noise = randn(LATENT_SHAPE, SEEDS[f"student_euler_{n}"])
            res = student(PROMPT, num_inference_steps=n, guidance_scale=0.0, height=HEIGHT, width=WIDTH,
                          latents=noise.clone(), output_type="latent").images
            put(f"student_euler_{n}.noise", noise, "unit-variance noise passed as latents= (before init_noise_sigma)")
            put(f"student_euler_{n}.latents", res, f"tiny-student pipeline, Euler {n} step(s), guidance 0, latents out")
            if n == 1:
                img = vae.decode(res / vae.config.scaling_factor).sample.clamp(-1, 1)
                put("student_euler_1.image", img, "vae.decode(student_euler_1.latents / 0.18215).clamp(-1, 1)")

        # Student, Euler ancestral: given latents, so the generator is only drawn by scheduler.step,
        # once per step (the last step too, where sigma_up is 0), randn of the model output's shape.
        ancestral = pipeline(unet_student, EulerAncestralDiscreteScheduler.from_config(student_sched.config))
        ancestral.set_progress_bar_config(disable=True)
        prompt_embeds, _ = ancestral.encode_prompt(PROMPT, "cpu", 1, False)
        for n in STUDENT_ANCESTRAL_STEPS:
            noise = randn(LATENT_SHAPE, SEEDS[f"student_ancestral_{n}"])
            gseed = SEEDS[f"student_ancestral_{n}_generator"]
            res = ancestral(PROMPT, num_inference_steps=n, guidance_scale=0.0, height=HEIGHT, width=WIDTH,
                            latents=noise.clone(), generator=torch.Generator().manual_seed(gseed),
                            output_type="latent").images
            twin = torch.Generator().manual_seed(gseed)
            step_noise = torch.stack([torch.randn(LATENT_SHAPE, generator=twin, dtype=torch.float32) for _ in range(n)])
            # Check the replay: the loop by hand with the recorded noises must give the pipeline's result.
            by_hand = ancestral_by_hand(ancestral.scheduler, unet_student, prompt_embeds, noise, step_noise, n)
            err = (by_hand - res).abs().max().item()
            assert err <= 1e-6, f"ancestral {n}: replay differs by {err}"
            print(f"ancestral {n}: replay max |diff| {err:.3g} (latents max |x| {res.abs().max().item():.3g})")
            # And the generator must be left exactly where n draws leave it (no other draws).
            probe = torch.Generator().manual_seed(gseed)
            res2 = ancestral(PROMPT, num_inference_steps=n, guidance_scale=0.0, height=HEIGHT, width=WIDTH,
                             latents=noise.clone(), generator=probe, output_type="latent").images
            assert torch.equal(res2, res)
            assert torch.equal(torch.randn(1, generator=probe), torch.randn(1, generator=twin))
            put(f"student_ancestral_{n}.noise", noise, "unit-variance noise passed as latents= (before init_noise_sigma)")
            put(f"student_ancestral_{n}.step_noise", step_noise,
                "scheduler.step's randn draws, one [1,4,8,8] per step in order (added times sigma_up)")
            put(f"student_ancestral_{n}.latents", res, f"tiny-student pipeline, Euler ancestral {n} steps, latents out")

        # Teacher, DDIM (eta 0, so no generator draws) with classifier-free guidance.
        noise = randn(LATENT_SHAPE, SEEDS["teacher_ddim_25"])
        res = teacher(PROMPT, negative_prompt=None, num_inference_steps=TEACHER_STEPS,
                      guidance_scale=TEACHER_GUIDANCE, height=HEIGHT, width=WIDTH,
                      latents=noise.clone(), output_type="latent").images
        put("teacher_ddim_25.noise", noise, "unit-variance noise passed as latents= (init_noise_sigma is 1 for DDIM)")
        put("teacher_ddim_25.latents", res, "tiny-teacher pipeline, DDIM 25 steps, guidance 7.5, negative prompt '' ")

        # The folders as written must load back and reproduce the goldens.
        reloaded = StableDiffusionPipeline.from_pretrained(os.path.join(out, "tiny-student")).to("cpu")
        reloaded.set_progress_bar_config(disable=True)
        assert torch.equal(reloaded.tokenizer(TEXT_PROMPTS, padding="max_length", max_length=77, truncation=True,
                                              return_tensors="pt").input_ids, g["text.input_ids"])
        res = reloaded(PROMPT, num_inference_steps=1, guidance_scale=0.0, height=HEIGHT, width=WIDTH,
                       latents=g["student_euler_1.noise"].clone(), output_type="latent").images
        assert torch.equal(res, g["student_euler_1.latents"])
        reloaded = StableDiffusionPipeline.from_pretrained(os.path.join(out, "tiny-teacher")).to("cpu")
        assert isinstance(reloaded.scheduler, DDIMScheduler)
        assert torch.equal(reloaded.unet(g["unet_teacher.sample"], g["unet_teacher.timestep"],
                                         encoder_hidden_states=g["unet_teacher.encoder_hidden_states"]).sample,
                           g["unet_teacher.out"])
        quick = CLIPTextModel.from_pretrained(os.path.join(out, "text-encoder-quick-gelu")).eval()
        assert torch.equal(quick(g["text.input_ids"])[0], g["text_quick_gelu.last_hidden_state"])

    for k, v in g.items():
        assert v.dtype == (torch.int64 if k == "text.input_ids" else torch.float32), (k, v.dtype)
        assert torch.isfinite(v.float()).all(), k
    save_file(g, os.path.join(out, "goldens.safetensors"))

    def timesteps(sched, n):
        sched.set_timesteps(n)
        out = {"timesteps": sched.timesteps.tolist(), "init_noise_sigma": float(sched.init_noise_sigma)}
        if hasattr(sched, "sigmas"):
            out["sigmas"] = sched.sigmas.tolist()
        return out

    meta = {
        "generator": "tests/scripts/make_model_goldens.py",
        "versions": {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__, "safetensors": safetensors.__version__},
        "seeds": SEEDS,
        "text": {"prompts": TEXT_PROMPTS, "padding": "max_length", "max_length": 77, "truncation": True},
        "unet_timesteps": UNET_TIMESTEPS,
        "sampling": {
            "prompt": PROMPT, "height": HEIGHT, "width": WIDTH, "latent_shape": list(LATENT_SHAPE),
            "output_type": "latent",
            "student_euler": {"pipeline": "tiny-student", "scheduler": "EulerDiscreteScheduler",
                              "guidance_scale": 0.0, "steps": list(STUDENT_EULER_STEPS),
                              "schedules": {n: timesteps(EulerDiscreteScheduler.from_config(SD_TURBO_SCHEDULER), n)
                                            for n in STUDENT_EULER_STEPS}},
            "student_ancestral": {"pipeline": "tiny-student with EulerAncestralDiscreteScheduler.from_config(its scheduler config)",
                                  "guidance_scale": 0.0, "steps": list(STUDENT_ANCESTRAL_STEPS),
                                  "generator": "torch.Generator('cpu').manual_seed(seeds.student_ancestral_{n}_generator)",
                                  "schedules": {n: timesteps(EulerAncestralDiscreteScheduler.from_config(SD_TURBO_SCHEDULER), n)
                                                for n in STUDENT_ANCESTRAL_STEPS}},
            "teacher_ddim": {"pipeline": "tiny-teacher", "scheduler": "DDIMScheduler", "eta": 0.0,
                             "guidance_scale": TEACHER_GUIDANCE, "negative_prompt": "", "steps": TEACHER_STEPS,
                             "schedule": timesteps(DDIMScheduler.from_config(SD21_SCHEDULER), TEACHER_STEPS)},
        },
        "configs": {"unet_student": STUDENT_UNET, "unet_teacher": TEACHER_UNET, "vae": VAE,
                    "text_encoder": TEXT, "text_encoder_quick_gelu": TEXT_QUICK_GELU,
                    "scheduler_student": SD_TURBO_SCHEDULER, "scheduler_teacher": SD21_SCHEDULER},
        "tensors": desc,
    }
    with open(os.path.join(out, "goldens.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    for k, d in desc.items():
        print(f"{k:40s} {d['dtype']:8s} {d['shape']}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/models")
    main(ap.parse_args().out)
