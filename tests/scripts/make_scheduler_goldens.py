"""Golden scheduler outputs from diffusers, for the runtime core's scheduler parity test.

For each config (SD-Turbo's Euler with trailing spacing, the same as Euler ancestral, SD 2.1's
DDIM with v-prediction, SD 2.1-base's DDIM with epsilon, and variants that reach the other code
paths) and step count: the timesteps, sigmas, init_noise_sigma, the model-input scale and one
step on seeded inputs at every step, plus a whole sampling loop with a stand-in model
(tanh(x_in) * t / 1000) from given noise. Also the training schedule's alphas_cumprod and DDPM
add_noise / get_velocity.

Needs torch and diffusers (the goldens environment, see README):
    python tests/scripts/make_scheduler_goldens.py --out tests/fixtures/scheduler_goldens.json
"""

import argparse
import json

import diffusers
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

SHAPE = (1, 4, 3, 3)

SD_TURBO = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "trailing", "trained_betas": None, "use_karras_sigmas": False,
}
SD21 = {
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}
SD21_BASE = dict(SD21, prediction_type="epsilon")

CASES = [
    # (name, config, class to run, steps list)
    ("sd-turbo euler", SD_TURBO, "EulerDiscreteScheduler", [1, 2, 4]),
    ("sd-turbo euler ancestral", SD_TURBO, "EulerAncestralDiscreteScheduler", [1, 2, 4]),
    ("sd2.1 ddim v", SD21, "DDIMScheduler", [25, 3]),
    ("sd2.1-base ddim eps", SD21_BASE, "DDIMScheduler", [25]),
    ("euler linspace default", {"_class_name": "EulerDiscreteScheduler"}, "EulerDiscreteScheduler", [7]),
    ("euler leading v", dict(SD_TURBO, timestep_spacing="leading", prediction_type="v_prediction"),
     "EulerDiscreteScheduler", [5]),
    ("euler ancestral v trailing", dict(SD_TURBO, prediction_type="v_prediction"),
     "EulerAncestralDiscreteScheduler", [3]),
    ("euler sigma_min", dict(SD_TURBO, final_sigmas_type="sigma_min"), "EulerDiscreteScheduler", [2]),
    ("ddim clip sample one", {"_class_name": "DDIMScheduler", "prediction_type": "sample",
                              "timestep_spacing": "trailing", "beta_schedule": "linear"},
     "DDIMScheduler", [3]),
    ("ddim linspace eps", dict(SD21_BASE, timestep_spacing="linspace"), "DDIMScheduler", [6]),
]

CLASSES = {
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "DDIMScheduler": DDIMScheduler,
}


def flat(t):
    # Nine significant digits round-trip f32 exactly and keep the fixture small.
    return [float(f"{v:.9g}") for v in t.flatten().tolist()]


def randn(seed, scale=1.0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * scale


def make(config, cls):
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    return CLASSES[cls].from_config(params)


def scheduler_case(name, config, cls, steps):
    sched = make(config, cls)
    sched.set_timesteps(steps)
    out = {
        "name": name, "config": config, "class": cls, "steps": steps,
        "timesteps": flat(sched.timesteps),
        "sigmas": flat(sched.sigmas) if hasattr(sched, "sigmas") else [],
        "init_noise_sigma": float(sched.init_noise_sigma),
        "model_input_scale": [], "step": [],
    }
    ones = torch.ones(1)
    for i, t in enumerate(sched.timesteps):
        sched._step_index = i if hasattr(sched, "_step_index") else None
        out["model_input_scale"].append(float(sched.scale_model_input(ones, t)[0]))
        sample = randn(100 + i, 3.0)
        model_output = randn(200 + i)
        noise = randn(300 + i)
        kwargs = {}
        if cls == "EulerAncestralDiscreteScheduler":
            # diffusers draws the noise itself: the same generator state yields `noise`.
            kwargs["generator"] = torch.Generator().manual_seed(300 + i)
        sched._step_index = i if hasattr(sched, "_step_index") else None
        res = sched.step(model_output, t, sample, **kwargs)
        out["step"].append({
            "sample": flat(sample), "model_output": flat(model_output),
            "noise": flat(noise) if cls == "EulerAncestralDiscreteScheduler" else [],
            "prev_sample": flat(res.prev_sample), "pred_original_sample": flat(res.pred_original_sample),
        })
    # A whole loop with a stand-in model, from given initial noise and step noises.
    sched = make(config, cls)
    sched.set_timesteps(steps)
    init = randn(400)
    latents = init * sched.init_noise_sigma
    step_noises = []
    for i, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(latents, t)
        model_output = torch.tanh(x_in) * (float(t) / 1000.0)
        kwargs = {}
        if cls == "EulerAncestralDiscreteScheduler":
            step_noises.append(flat(randn(500 + i)))
            kwargs["generator"] = torch.Generator().manual_seed(500 + i)
        latents = sched.step(model_output, t, latents, **kwargs).prev_sample
    out["loop"] = {"init_noise": flat(init), "step_noises": step_noises, "final": flat(latents)}
    return out


def ddpm_case():
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    x0 = randn(600)
    noise = randn(601)
    checks = []
    for t in [0, 1, 250, 500, 999]:
        tt = torch.tensor([t] * SHAPE[0])
        checks.append({
            "t": t,
            "noisy": flat(sched.add_noise(x0, noise, tt)),
            "velocity": flat(sched.get_velocity(x0, noise, tt)),
        })
    linear = DDPMScheduler()  # linear 1e-4 .. 0.02
    return {
        "x0": flat(x0), "noise": flat(noise), "checks": checks,
        "alphas_cumprod_scaled_linear": flat(sched.alphas_cumprod),
        "alphas_cumprod_linear": flat(linear.alphas_cumprod),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cases = [scheduler_case(n, c, k, s) for n, c, k, steps in CASES for s in steps]
    golden = {
        "generator": "tests/scripts/make_scheduler_goldens.py",
        "reference": f"diffusers {diffusers.__version__}, torch {torch.__version__}",
        "shape": list(SHAPE),
        "cases": cases,
        "ddpm": ddpm_case(),
    }
    with open(args.out, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}: {len(cases)} scheduler cases ({golden['reference']})")


if __name__ == "__main__":
    main()
