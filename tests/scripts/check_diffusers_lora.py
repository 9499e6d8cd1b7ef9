"""Checks that a LoRA run's diffusers export loads in diffusers and behaves exactly like the run's
raw adapters merged by hand.

usage: python check_diffusers_lora.py --model MODEL_DIR --run RUN_DIR [--prompt "a photo of <new1> dog"]

MODEL_DIR  diffusers StableDiffusionPipeline folder the run fine-tuned (unet/, text_encoder/, ...).
RUN_DIR    a `trainer fit --method lora` run:
             lora.safetensors  "<layer>.<proj>.lora_A.weight" [r, in], ".lora_B.weight" [out, r];
                               metadata echodistill.lora_rank, echodistill.lora_alpha
             tokens.safetensors {token: 1-D vector}
             diffusers/pytorch_lora_weights.safetensors  the same with "unet." prefixes and
                               alpha/rank folded into lora_B
             diffusers/<token>.safetensors  one per token
Pipeline side: pipe.load_lora_weights(RUN/diffusers, weight_name=...) and
pipe.load_textual_inversion(...), as a user would.
Reference side: W + alpha/rank * B @ A written into a plain UNet, the token rows written into the
text encoder's embedding. Exits 0 if text embeddings and UNet outputs agree to --tol (1e-5).
"""

import argparse
import json
import os
import struct
import sys

import torch
from safetensors.torch import load_file
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from check_diffusers_export import encode  # the same prompt encoding as the Custom Diffusion check


def metadata(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__", {})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--prompt", default=None)
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    raw_path = os.path.join(args.run, "lora.safetensors")
    raw = load_file(raw_path)
    meta = metadata(raw_path)
    scale = float(meta["echodistill.lora_alpha"]) / float(meta["echodistill.lora_rank"])
    tokens = load_file(os.path.join(args.run, "tokens.safetensors"))
    names = list(tokens)
    prompt = args.prompt or "a photo of " + " ".join(names) + " dog"
    export = os.path.join(args.run, "diffusers")

    pipe = StableDiffusionPipeline.from_pretrained(
        args.model, safety_checker=None, requires_safety_checker=False, feature_extractor=None)
    try:
        pipe.load_lora_weights(export, weight_name="pytorch_lora_weights.safetensors")
        pipe.load_textual_inversion([os.path.join(export, f"{t}.safetensors") for t in names], token=names)
    except Exception as e:
        sys.exit(f"FAIL: diffusers could not load the export: {type(e).__name__}: {e}")
    with torch.no_grad():
        pipe_text, _ = pipe.encode_prompt(prompt, "cpu", 1, False)

    unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet")
    params = dict(unet.named_parameters())
    merged = 0
    with torch.no_grad():
        for k, a in raw.items():
            if not k.endswith(".lora_A.weight"):
                continue
            layer = k[: -len(".lora_A.weight")]
            b = raw[layer + ".lora_B.weight"]
            params[layer + ".weight"].add_(scale * b @ a)
            merged += 1
    tokenizer = CLIPTokenizer.from_pretrained(args.model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(args.model, subfolder="text_encoder")
    tokenizer.add_tokens(names)
    text_encoder.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        emb = text_encoder.get_input_embeddings().weight
        for t in names:
            emb[tokenizer.convert_tokens_to_ids(t)] = tokens[t]
        ref_text = encode(tokenizer, text_encoder, prompt)

    gen = torch.Generator().manual_seed(0)
    c = unet.config.in_channels
    s = unet.config.sample_size
    x = torch.randn(1, c, s, s, generator=gen)
    t = torch.tensor([500])
    with torch.no_grad():
        out_pipe = pipe.unet(x, t, encoder_hidden_states=pipe_text).sample
        out_ref = unet(x, t, encoder_hidden_states=ref_text).sample
        base = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet")
        out_base = base(x, t, encoder_hidden_states=ref_text).sample
    d_text = (pipe_text - ref_text).abs().max().item()
    d_unet = (out_pipe - out_ref).abs().max().item()
    moved = (out_ref - out_base).abs().max().item()
    print(f"{merged} adapters; scale {scale}; text max diff {d_text:.3g}; unet max diff {d_unet:.3g}; "
          f"LoRA moved the output by {moved:.3g}")
    if moved < 1e-4:
        sys.exit("FAIL: the adapters change nothing; train longer or with a higher rate")
    if d_text > args.tol or d_unet > args.tol:
        sys.exit("FAIL")
    print("OK")


if __name__ == "__main__":
    main()
