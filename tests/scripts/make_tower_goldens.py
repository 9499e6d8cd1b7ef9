"""Tiny random-weight image towers (and IP-Adapter's image projection) with golden outputs, for the
parity tests of the Rust ports of transformers' ViT (DINO), Dinov2, CLIP vision / text-with-projection
models, IP-Adapter's ImageProjModel and the image resizes used before them.

Builds, from configs with seeded random weights (nothing is downloaded), and writes under OUT:

  dino-v1/                 ViTModel(add_pooling_layer=False), DINO v1's layout (config.json + model.safetensors)
  dino-v2/                 Dinov2Model with random layer-scale lambda1 and random cls/mask/position tokens
  clip-vision/             CLIPVisionModelWithProjection, gelu
  clip-vision-quick-gelu/  the same weights (same seed) with quick_gelu, OpenAI CLIP's activation
  clip-text-proj/          CLIPTextModelWithProjection (bos 512 / eos 513 / pad 0)
  ip-adapter/ip-adapter.safetensors
                           the original tencent IP-Adapter file layout (as ip-adapter_sd15.safetensors):
                           image_proj.{proj,norm}.{weight,bias} plus two dummy ip_adapter.1.to_{k,v}_ip weights
  goldens.safetensors      inputs and outputs in float32 (token ids in int64), computed in eval mode under
                           torch.no_grad(); also reference resizes (area, bicubic, antialiased bilinear)
  goldens.json             a line per tensor, seeds, configs, interpolation facts and library versions

Everything runs in float32 on the CPU with one thread and deterministic algorithms; every model
folder is loaded back with from_pretrained and must reproduce its goldens exactly. Rerunning gives
byte-identical files.

Needs torch, transformers, diffusers and safetensors (the goldens environment):
    python tests/scripts/make_tower_goldens.py --out tests/fixtures/towers
"""

import argparse
import json
import os
import shutil

import diffusers
import safetensors
import torch
import torch.nn.functional as F
import transformers
from diffusers.models.embeddings import ImageProjection
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    ViTConfig,
    ViTModel,
)

# DINO v1 as transformers ships it: convert_dino_to_pytorch.py starts from a plain ViTConfig(), so
# facebook/dino-vit{s,b}{8,16} keep ViTConfig's default layer_norm_eps 1e-12 (the original DINO code
# used nn.LayerNorm(eps=1e-6); the converted checkpoints do not). We follow the shipped config.
DINO_V1 = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
    patch_size=8, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True,
)
DINO_V2 = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=32, patch_size=4,
    num_channels=3, hidden_act="gelu", layer_norm_eps=1e-6, layerscale_value=1.0, use_swiglu_ffn=False,
    qkv_bias=True,
)
CLIP_VISION = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
    patch_size=8, projection_dim=16, hidden_act="gelu", layer_norm_eps=1e-5,
)
CLIP_VISION_QUICK_GELU = dict(CLIP_VISION, hidden_act="quick_gelu")
CLIP_TEXT = dict(
    vocab_size=514, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=16,
    bos_token_id=512, eos_token_id=513, pad_token_id=0,
)
# IP-Adapter's ImageProjModel: image embedding dim (the CLIP vision projection_dim), extra context
# tokens and the UNet's cross-attention dim.
IP = dict(clip_embeddings_dim=16, clip_extra_context_tokens=4, cross_attention_dim=24, layer_norm_eps=1e-5)

# Seeds: one per model (torch.manual_seed right before building it) and one per random input.
SEEDS = {
    "dino_v1": 7000, "dino_v2": 7001, "dino_v2_overrides": 7101,
    "clip_vision": 7002, "clip_vision_quick_gelu": 7002,  # same weights, only the activation differs
    "clip_text": 7003, "ip_adapter": 7004,
    "dino_v1_inputs": 8000, "dino_v2_inputs": 8001, "clip_vision_inputs": 8002, "ip_inputs": 8004,
    "resize_inputs": 8005,
}

TEXT_ROWS = [[512, 5, 6, 7, 513], [512, 9, 10, 11, 12, 13, 513]]

MODEL_DIRS = ("dino-v1", "dino-v2", "clip-vision", "clip-vision-quick-gelu", "clip-text-proj", "ip-adapter")


class ImageProjModel(torch.nn.Module):
    """tencent-ailab/IP-Adapter's ImageProjModel (ip_adapter/ip_adapter.py), the image_proj of ip-adapter_sd15."""

    def __init__(self, cross_attention_dim, clip_embeddings_dim, clip_extra_context_tokens):
        super().__init__()
        self.cross_attention_dim = cross_attention_dim
        self.clip_extra_context_tokens = clip_extra_context_tokens
        self.proj = torch.nn.Linear(clip_embeddings_dim, clip_extra_context_tokens * cross_attention_dim)
        self.norm = torch.nn.LayerNorm(cross_attention_dim)  # default eps 1e-5

    def forward(self, image_embeds):
        tokens = self.proj(image_embeds).reshape(-1, self.clip_extra_context_tokens, self.cross_attention_dim)
        return self.norm(tokens)


def build(cls, seed, *args, **kwargs):
    torch.manual_seed(seed)
    model = cls(*args, **kwargs)
    return model.eval().to(torch.float32)


def randn(shape, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float32)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def main(out):
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # one thread keeps CPU reductions in the same order on every run
    os.makedirs(out, exist_ok=True)
    for sub in MODEL_DIRS:
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)

    g = {}  # golden tensors
    desc = {}  # one line per tensor

    def put(name, tensor, line):
        g[name] = tensor.detach().contiguous().clone()
        desc[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", ""), "about": line}

    # ---- models ----
    dino_v1 = build(ViTModel, SEEDS["dino_v1"], ViTConfig(**DINO_V1), add_pooling_layer=False)
    dino_v2 = build(Dinov2Model, SEEDS["dino_v2"], Dinov2Config(**DINO_V2))
    # Default init leaves lambda1 all ones (layerscale_value) and mask_token zero: give every one of
    # them (and the cls / position tokens) distinct random values so a port that skips or misnames
    # them fails the parity test.
    ov = gen(SEEDS["dino_v2_overrides"])
    with torch.no_grad():
        emb = dino_v2.embeddings
        for p in (emb.cls_token, emb.mask_token, emb.position_embeddings):
            p.copy_(0.02 * randn(p.shape, ov))
        for name, p in dino_v2.named_parameters():
            if name.endswith("lambda1"):
                p.copy_(0.5 + 0.1 * randn(p.shape, ov))
    clip_vision = build(CLIPVisionModelWithProjection, SEEDS["clip_vision"], CLIPVisionConfig(**CLIP_VISION))
    clip_vision_q = build(CLIPVisionModelWithProjection, SEEDS["clip_vision_quick_gelu"],
                          CLIPVisionConfig(**CLIP_VISION_QUICK_GELU))
    clip_text = build(CLIPTextModelWithProjection, SEEDS["clip_text"], CLIPTextConfig(**CLIP_TEXT))
    ip = build(ImageProjModel, SEEDS["ip_adapter"], IP["cross_attention_dim"], IP["clip_embeddings_dim"],
               IP["clip_extra_context_tokens"])
    ip_dummy = {}
    with torch.no_grad():
        # LayerNorm starts at ones / zeros; random affine so the port must apply both.
        ip.norm.weight.copy_(1.0 + 0.1 * torch.randn(ip.norm.weight.shape))
        ip.norm.bias.copy_(0.1 * torch.randn(ip.norm.bias.shape))
        d = IP["cross_attention_dim"]
        # Stand-ins for the real file's attention-processor weights (unused by the projection).
        ip_dummy["ip_adapter.1.to_k_ip.weight"] = 0.05 * torch.randn(d, d)
        ip_dummy["ip_adapter.1.to_v_ip.weight"] = 0.05 * torch.randn(d, d)
    assert ip.norm.eps == IP["layer_norm_eps"]

    towers = {"dino-v1": dino_v1, "dino-v2": dino_v2, "clip-vision": clip_vision,
              "clip-vision-quick-gelu": clip_vision_q, "clip-text-proj": clip_text}
    for sub, model in towers.items():
        model.save_pretrained(os.path.join(out, sub), safe_serialization=True)
    os.makedirs(os.path.join(out, "ip-adapter"))
    ip_file = {f"image_proj.{k}": v.detach().contiguous().clone() for k, v in ip.state_dict().items()}
    ip_file.update(ip_dummy)
    save_file(ip_file, os.path.join(out, "ip-adapter", "ip-adapter.safetensors"))

    with torch.no_grad():
        # ---- DINO v1 ----
        x = randn((2, 3, 32, 32), gen(SEEDS["dino_v1_inputs"]))
        put("dino_v1.pixel_values", x, "DINO v1 input ~ N(0,1)")
        put("dino_v1.last_hidden_state", dino_v1(pixel_values=x).last_hidden_state,
            "dino-v1 ViTModel: CLS + 4x4 patches, after the final layernorm (no pooler)")

        # ---- DINO v2 ----
        gi = gen(SEEDS["dino_v2_inputs"])
        x32 = randn((2, 3, 32, 32), gi)
        x40 = randn((2, 3, 40, 40), gi)
        o32 = dino_v2(pixel_values=x32)
        o40 = dino_v2(pixel_values=x40)
        put("dino_v2.pixel_values_32", x32, "Dinov2 input ~ N(0,1), 32x32 (8x8 patches, no interpolation)")
        put("dino_v2.last_hidden_state_32", o32.last_hidden_state, "dino-v2 on pixel_values_32, after layernorm")
        put("dino_v2.pooler_output_32", o32.pooler_output, "last_hidden_state_32[:, 0] (CLS after layernorm)")
        put("dino_v2.pixel_values_40", x40, "Dinov2 input ~ N(0,1), 40x40 (10x10 patches)")
        put("dino_v2.last_hidden_state_40", o40.last_hidden_state,
            "dino-v2 on pixel_values_40: 8x8 patch position embeddings resized to 10x10 by "
            "F.interpolate(size=(10,10), mode='bicubic', align_corners=False) in float32, no antialias, no +0.1")
        assert torch.equal(o32.pooler_output, o32.last_hidden_state[:, 0])

        # ---- CLIP vision (gelu and quick_gelu share the pixels) ----
        x = randn((2, 3, 32, 32), gen(SEEDS["clip_vision_inputs"]))
        put("clip_vision.pixel_values", x, "CLIP vision input ~ N(0,1), shared by both CLIP vision towers")
        for key, model in (("clip_vision", clip_vision), ("clip_vision_quick_gelu", clip_vision_q)):
            o = model(pixel_values=x)
            if key == "clip_vision_quick_gelu":
                put(f"{key}.pixel_values", x, "same as clip_vision.pixel_values")
            put(f"{key}.image_embeds", o.image_embeds,
                "visual_projection(post_layernorm(last_hidden_state[:, 0])), no bias, not normalized")
            put(f"{key}.last_hidden_state", o.last_hidden_state,
                "encoder output (after pre_layrnorm + layers), NOT post_layernorm'd")

        # ---- CLIP text with projection ----
        ids = torch.zeros((2, 77), dtype=torch.int64)
        for i, row in enumerate(TEXT_ROWS):
            ids[i, : len(row)] = torch.tensor(row)
        o = clip_text(input_ids=ids)
        put("clip_text.input_ids", ids, f"rows {TEXT_ROWS}, padded with 0 to 77; no attention mask passed")
        put("clip_text.text_embeds", o.text_embeds,
            "text_projection(last_hidden_state at the first position where id == eos 513), not normalized")
        put("clip_text.last_hidden_state", o.last_hidden_state, "after final_layer_norm, causal mask only")
        # eos_token_id != 2, so transformers pools at the first eos (positions 4 and 6), not argmax(ids).
        first_eos = (ids == CLIP_TEXT["eos_token_id"]).int().argmax(-1)
        assert first_eos.tolist() == [4, 6]
        ref = clip_text.text_projection(o.last_hidden_state[torch.arange(2), first_eos])
        assert torch.equal(ref, o.text_embeds)

        # ---- IP-Adapter image projection ----
        e = randn((2, IP["clip_embeddings_dim"]), gen(SEEDS["ip_inputs"]))
        tokens = ip(e)
        put("ip.image_embeds", e, "IP-Adapter input image embeddings ~ N(0,1) (stand-in for CLIP image_embeds)")
        put("ip.tokens", tokens, "LayerNorm(proj(image_embeds).reshape(batch, 4, 24)), eps 1e-5")
        # Cross-check against diffusers' own loader mapping (proj -> image_embeds) and ImageProjection.
        loaded = load_file(os.path.join(out, "ip-adapter", "ip-adapter.safetensors"))
        proj_sd = {k[len("image_proj."):].replace("proj", "image_embeds"): v
                   for k, v in loaded.items() if k.startswith("image_proj.")}
        dproj = ImageProjection(image_embed_dim=16, cross_attention_dim=24, num_image_text_embeds=4).eval()
        dproj.load_state_dict(proj_sd)
        assert torch.equal(dproj(e), tokens)

        # ---- resizes ----
        img = torch.rand((1, 3, 37, 53), generator=gen(SEEDS["resize_inputs"]))
        put("resize.image", img, "uniform in [0, 1), 37x53")
        put("resize.area_24x32", F.interpolate(img, size=(24, 32), mode="area"),
            "F.interpolate(size=(24,32), mode='area') == adaptive_avg_pool2d")
        put("resize.area_14x14", F.interpolate(img, size=(14, 14), mode="area"),
            "F.interpolate(size=(14,14), mode='area')")
        put("resize.bicubic_24x32", F.interpolate(img, size=(24, 32), mode="bicubic", align_corners=False),
            "F.interpolate(size=(24,32), mode='bicubic', align_corners=False), no antialias, no clamp")
        put("resize.bilinear_aa_24x32",
            F.interpolate(img, size=(24, 32), mode="bilinear", antialias=True, align_corners=False),
            "F.interpolate(size=(24,32), mode='bilinear', antialias=True, align_corners=False)")

        # ---- the folders as written must load back and reproduce the goldens exactly ----
        def reload(cls, sub, **kwargs):
            return cls.from_pretrained(os.path.join(out, sub), **kwargs).eval()

        # add_pooling_layer is a constructor argument, not a config field: a plain from_pretrained
        # would add a (randomly initialized, unused here) pooler, as with facebook/dino-vits16.
        m = reload(ViTModel, "dino-v1", add_pooling_layer=False)
        assert m.pooler is None
        assert torch.equal(m(pixel_values=g["dino_v1.pixel_values"]).last_hidden_state, g["dino_v1.last_hidden_state"])
        m = reload(Dinov2Model, "dino-v2")
        assert torch.equal(m(pixel_values=g["dino_v2.pixel_values_32"]).last_hidden_state,
                           g["dino_v2.last_hidden_state_32"])
        assert torch.equal(m(pixel_values=g["dino_v2.pixel_values_40"]).last_hidden_state,
                           g["dino_v2.last_hidden_state_40"])
        for key, sub in (("clip_vision", "clip-vision"), ("clip_vision_quick_gelu", "clip-vision-quick-gelu")):
            o = reload(CLIPVisionModelWithProjection, sub)(pixel_values=g[f"{key}.pixel_values"])
            assert torch.equal(o.image_embeds, g[f"{key}.image_embeds"]), key
            assert torch.equal(o.last_hidden_state, g[f"{key}.last_hidden_state"]), key
        o = reload(CLIPTextModelWithProjection, "clip-text-proj")(input_ids=g["clip_text.input_ids"])
        assert torch.equal(o.text_embeds, g["clip_text.text_embeds"])
        assert torch.equal(o.last_hidden_state, g["clip_text.last_hidden_state"])
        ip2 = ImageProjModel(IP["cross_attention_dim"], IP["clip_embeddings_dim"], IP["clip_extra_context_tokens"])
        ip2.load_state_dict({k[len("image_proj."):]: v for k, v in loaded.items() if k.startswith("image_proj.")})
        assert torch.equal(ip2.eval()(g["ip.image_embeds"]), g["ip.tokens"])

    for k, v in g.items():
        assert v.dtype == (torch.int64 if k == "clip_text.input_ids" else torch.float32), (k, v.dtype)
        assert torch.isfinite(v.float()).all(), k
    save_file(g, os.path.join(out, "goldens.safetensors"))

    meta = {
        "generator": "tests/scripts/make_tower_goldens.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "diffusers": diffusers.__version__, "safetensors": safetensors.__version__},
        "seeds": SEEDS,
        "configs": {"dino_v1": dict(DINO_V1, add_pooling_layer=False), "dino_v2": DINO_V2,
                    "clip_vision": CLIP_VISION, "clip_vision_quick_gelu": CLIP_VISION_QUICK_GELU,
                    "clip_text": CLIP_TEXT, "ip_adapter": IP},
        "attn_implementation": {sub: m.config._attn_implementation for sub, m in towers.items()},
        "notes": {
            "dino_v1_layer_norm_eps": "1e-12: transformers' convert_dino_to_pytorch.py builds ViTConfig() "
                                      "(default 1e-12) for facebook/dino-*; original DINO used 1e-6",
            "dino_v2_overrides": "after building, cls_token, mask_token, position_embeddings <- 0.02*randn and "
                                 "every layer_scale*.lambda1 <- 0.5 + 0.1*randn, drawn in that order from "
                                 "Generator(seeds.dino_v2_overrides) in named_parameters order",
            "dino_v2_interpolation": "Dinov2Embeddings.interpolate_pos_encoding: skipped when num_patches == "
                                     "num_positions and height == width; else the patch part (reshaped to "
                                     "[1, dim, sqrt(N), sqrt(N)], cast to float32) goes through F.interpolate("
                                     "size=(H // patch, W // patch), mode='bicubic', align_corners=False) "
                                     "(antialias False, no +0.1 offset, no scale_factor); CLS position kept",
            "clip_text_pooling": "eos_token_id != 2, so pooled = last_hidden_state[b, first index where "
                                 "input_ids == eos_token_id] (the argmax-of-ids rule applies only when eos == 2)",
            "ip_adapter": "ImageProjModel: LayerNorm(proj(image_embeds).reshape(-1, 4, 24)), eps 1e-5; norm affine "
                          "randomized; ip_adapter.1.to_{k,v}_ip.weight are unused stand-ins",
        },
        "tensors": desc,
    }
    with open(os.path.join(out, "goldens.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    for k, d in desc.items():
        print(f"{k:36s} {d['dtype']:8s} {d['shape']}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/towers")
    main(ap.parse_args().out)
