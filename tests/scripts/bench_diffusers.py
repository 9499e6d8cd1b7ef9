"""PyTorch diffusers side of `runtime bench`: load a diffusers text-to-image folder, then time the
first image and steady generation on the same prompt and noise, printing the same lines as
`runtime bench` so the two can be set side by side. Prints, asserts nothing.

usage: bench_diffusers.py MODEL_DIR NOISE.safetensors [--prompt P] [--steps N] [--runs N]
       [--threads N] [--out IMAGE.png]

NOISE holds `noise` (1, 4, h/8, w/8) float32, the file `runtime bench --noise` reads; the image
size follows from it. Runs in the goldens env (torch + diffusers): ./run.sh goldens sets it up.
"""

import argparse
import time

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from safetensors.numpy import load_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("noise")
    ap.add_argument("--prompt", default="a photo of a dog on the beach")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    noise = torch.from_numpy(load_file(args.noise)["noise"])
    height, width = noise.shape[2] * 8, noise.shape[3] * 8

    t = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        args.model, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - t

    def once():
        with torch.inference_mode():
            return pipe(
                args.prompt,
                num_inference_steps=args.steps,
                guidance_scale=0.0,
                latents=noise.clone(),
                height=height,
                width=width,
                output_type="np",
            ).images[0]

    t = time.perf_counter()
    image = once()
    first = time.perf_counter() - t
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        once()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()

    def quantile(q):  # nearest rank, as `runtime bench` reports
        return times[min(len(times), max(1, int(np.ceil(q * len(times))))) - 1]

    p95 = quantile(0.95)
    print(
        f"diffusers {args.model} (torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{width}x{height}, {args.steps} step(s), batch 1)"
    )
    print(f"pipeline load: {load * 1e3:.1f} ms")
    print(f"first request: {first * 1e3:.1f} ms")
    print(
        f"steady ms per image over {args.runs} run(s): median {quantile(0.5):.1f}, "
        f"p95 {p95:.1f}, min {times[0]:.1f}"
    )
    if args.out:
        from PIL import Image

        Image.fromarray((image * 255).round().astype(np.uint8)).save(args.out)


if __name__ == "__main__":
    main()
