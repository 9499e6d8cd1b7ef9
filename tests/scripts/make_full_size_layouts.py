"""Goldens for the full-size random-weight models that `trainer init-tiny` writes for benchmarks
(`--architecture sd-turbo | sd21`, `--towers full`): for every network, the tensor names and shapes
diffusers or transformers expect for the project's config file, summarised as a count, a
parameter total and a SHA-256 over the sorted "name shape" lines. tests/integration/init_tiny.rs
builds the same networks from the same config files in Rust and compares.

The models are built on the meta device (no memory, no weights): only the layout is read.

    $ECHODISTILL_GOLDENS_PYTHON tests/scripts/make_full_size_layouts.py \
        [--out tests/fixtures/full_size_layouts.json]
"""

import argparse
import hashlib
import json
import re
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import PrefixChange, revert_weight_conversion
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "trainer" / "configs"


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def diffusers_model(cls, folder: Path):
    return cls.from_config(cls.load_config(folder))


def checkpoint_keys(model: torch.nn.Module) -> dict:
    """The state dict under the names the Hub's checkpoints use. transformers 5 renames some
    modules (ViT's `encoder.layer.N.attention.attention.query` is `layers.N.attention.q_proj`,
    CLIPTextModel drops its `text_model.` prefix) and maps the Hub's names on loading; its own
    legacy mapping, reverted as save_pretrained reverts the current one, gives the names the
    real checkpoints have, which the trainer writes and reads. diffusers models are unchanged."""
    if not isinstance(model, transformers.PreTrainedModel):
        return model.state_dict()
    legacy = get_model_conversion_mapping(model, add_legacy=True)
    # A prefix change reverts blindly (CLIPVisionModelWithProjection would get
    # `vision_model.vision_model.`), so transformers' own save drops it for a model built from
    # scratch; here it is put back only where transformers 5 dropped the module level itself
    # (no name has the prefix: CLIPTextModel).
    model._weight_conversions = [c for c in legacy if not isinstance(c, PrefixChange)] or None
    state = revert_weight_conversion(model, model.state_dict())
    for change in (c for c in legacy if isinstance(c, PrefixChange)):
        (pattern,) = change.source_patterns
        prefix = pattern.removeprefix("^").removesuffix("(.+)$").replace("\\.", ".")
        if not any(re.match(pattern, k) for k in state):
            state = {prefix + k: v for k, v in state.items()}
    return state


def layout(model: torch.nn.Module) -> dict:
    state = checkpoint_keys(model)
    lines = sorted(f"{k} {list(v.shape)}" for k, v in state.items())
    total = sum(v.numel() for v in state.values())
    return {
        "tensors": len(lines),
        "parameters": total,
        "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    }


def hub_model(model: str, config: str, folder: Path, **kwargs):
    """transformers' `model` class built from `config` read from folder/config.json."""
    cfg = getattr(transformers, config)(**read(folder / "config.json"))
    return getattr(transformers, model)(cfg, **kwargs)


def networks():
    for arch in ("sd-turbo", "sd21"):
        yield f"{arch}/unet", lambda a=arch: diffusers_model(UNet2DConditionModel, CONFIGS / a / "unet")
        yield f"{arch}/vae", lambda a=arch: diffusers_model(AutoencoderKL, CONFIGS / a / "vae")
        yield f"{arch}/text_encoder", lambda a=arch: hub_model(
            "CLIPTextModel", "CLIPTextConfig", CONFIGS / a / "text_encoder"
        )
    towers = CONFIGS / "full-towers"
    yield "full-towers/dino-v1", lambda: hub_model(
        "ViTModel", "ViTConfig", towers / "dino-v1", add_pooling_layer=False
    )
    yield "full-towers/dino-v2", lambda: hub_model("Dinov2Model", "Dinov2Config", towers / "dino-v2")
    yield "full-towers/image_encoder", lambda: hub_model(
        "CLIPVisionModelWithProjection", "CLIPVisionConfig", towers / "image_encoder"
    )
    yield "full-towers/clip", lambda: hub_model("CLIPModel", "CLIPConfig", towers / "clip")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "full_size_layouts.json")
    args = ap.parse_args()
    out = {
        "made_by": "tests/scripts/make_full_size_layouts.py",
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "networks": {},
    }
    for name, build in networks():
        with torch.device("meta"):
            model = build()
        out["networks"][name] = layout(model)
        print(f"{name}: {out['networks'][name]}")
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
