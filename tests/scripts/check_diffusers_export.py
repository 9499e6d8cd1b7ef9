"""Checks that a Custom Diffusion export written by the Rust exporter loads in diffusers and behaves
exactly like the trained weights it came from.

usage: python check_diffusers_export.py --model MODEL_DIR --export EXPORT_DIR \
           --kv KV.safetensors --tokens TOKENS.safetensors [--prompt "a photo of <new1> dog"]

MODEL_DIR   diffusers StableDiffusionPipeline folder (unet/, text_encoder/, tokenizer/, ...).
EXPORT_DIR  the export, in the layout diffusers 0.42 can load:
              pytorch_custom_diffusion_weights.safetensors
                "<attn>.attn2.processor.to_k_custom_diffusion.weight"  [out, cross_dim]  (to_v likewise)
                "<attn>.attn1.processor"  zero-length tensor, one per self-attention layer (required:
                  load_attn_procs must receive a processor for every attention layer of the UNet)
              <token>.safetensors, one per token: {token: 1-D vector}
KV          trained matrices under plain UNet parameter names ("<attn>.attn2.to_k.weight", ...).
TOKENS      {token: 1-D vector}.

Pipeline side: the export is loaded the way a user would, with
  pipe.unet.load_attn_procs(EXPORT_DIR, weight_name=..., _pipeline=pipe)
  (`_pipeline` is needed in diffusers 0.42.1: without it the processors are built and silently
  dropped, huggingface/diffusers#9320)
  pipe.load_textual_inversion([EXPORT_DIR/<token>.safetensors, ...], token=[...])
Reference side: a UNet with the KV tensors copied into its parameters, and a tokenizer + text
encoder with the tokens added and their embedding rows written directly.
Both encode the prompt with their own tokenizer/text encoder and run their UNet on the same seeded
latents and timestep. Exits 0 if text embeddings and UNet outputs agree to --tol (1e-5), else 1.
"""

import argparse
import os
import sys

import torch
from safetensors.torch import load_file
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import CustomDiffusionAttnProcessor
from transformers import CLIPTextModel, CLIPTokenizer

WEIGHT_NAME = "pytorch_custom_diffusion_weights.safetensors"


def encode(tokenizer, text_encoder, prompt):
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--kv", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--prompt", default=None, help="default: 'a photo of <tok1> <tok2> ... dog'")
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    torch.manual_seed(0)
    kv = load_file(args.kv)
    tokens = load_file(args.tokens)
    names = list(tokens)
    prompt = args.prompt or "a photo of " + " ".join(names) + " dog"

    # (a) what a diffusers user gets from the export
    pipe = StableDiffusionPipeline.from_pretrained(
        args.model, safety_checker=None, requires_safety_checker=False, feature_extractor=None)
    try:
        pipe.unet.load_attn_procs(args.export, weight_name=WEIGHT_NAME, _pipeline=pipe)
        pipe.load_textual_inversion([os.path.join(args.export, f"{t}.safetensors") for t in names], token=names)
    except Exception as e:
        sys.exit(f"FAIL: diffusers could not load the export: {type(e).__name__}: {e}")
    procs = pipe.unet.attn_processors
    trained = sorted(k for k, p in procs.items() if isinstance(p, CustomDiffusionAttnProcessor) and p.train_kv)
    expected = sorted({k.rsplit(".", 2)[0] + ".processor" for k in kv})
    if trained != expected:
        sys.exit(f"FAIL: load_attn_procs installed K/V processors at {trained}, expected {expected}")
    with torch.no_grad():
        pipe_text, _ = pipe.encode_prompt(prompt, "cpu", 1, False)

    # (b) reference: trained tensors written straight into the model parameters
    unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet")
    params = dict(unet.named_parameters())
    for k, v in kv.items():
        if k not in params or params[k].shape != v.shape:
            sys.exit(f"FAIL: KV key {k} {tuple(v.shape)} is not a UNet parameter of that shape")
        params[k].data.copy_(v)
    tokenizer = CLIPTokenizer.from_pretrained(args.model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(args.model, subfolder="text_encoder")
    tokenizer.add_tokens(names)
    text_encoder.resize_token_embeddings(len(tokenizer))
    rows = text_encoder.get_input_embeddings().weight
    for t in names:
        rows.data[tokenizer.convert_tokens_to_ids(t)] = tokens[t].reshape(-1)
    with torch.no_grad():
        ref_text = encode(tokenizer, text_encoder, prompt)

    # (c) same latents and timestep through both UNets
    cfg = unet.config
    latents = torch.randn(1, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    with torch.no_grad():
        pipe_out = pipe.unet(latents, t, encoder_hidden_states=pipe_text).sample
        ref_out = unet(latents, t, encoder_hidden_states=ref_text).sample
    d_text = (pipe_text - ref_text).abs().max().item()
    d_unet = (pipe_out - ref_out).abs().max().item()
    print(f"prompt {prompt!r}: {len(kv)} K/V tensors, {len(names)} tokens")
    print(f"max |text embedding diff| = {d_text:.3e}")
    print(f"max |unet output diff|    = {d_unet:.3e}")
    if not (d_text <= args.tol and d_unet <= args.tol):
        sys.exit(f"FAIL: diffusers-loaded export differs from the trained weights by more than {args.tol}")
    print("OK: export loads in diffusers and matches the trained weights")


if __name__ == "__main__":
    main()
