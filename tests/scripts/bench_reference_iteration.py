"""The eager PyTorch peer of `trainer bench` (issue #11): one EchoDistill distillation iteration
(SPEC §4) written the plain way with diffusers and transformers, timed on the same models, photos,
batch and resolution, printing the same lines as `trainer bench` so the two can be set side by
side. A benchmark, not part of the product, and not a parity reference: its random draws are
torch's, not the trainer's.

usage: bench_reference_iteration.py --student DIR --teacher DIR --towers DIR --images DIR
       [--resolution 512] [--batch 2] [--warmup 1] [--iters 3] [--device cpu|cuda]
       [--dtype f32|bf16|f16] [--discriminators dinov1,dinov2,ip] [--dino-v2-size 518]
       [--swd-scales 5] [--teacher-guidance 7.5] [--profile] [--threads N]

What it does, as the authors' code and diffusers' Custom Diffusion script do it:
- trainable, in f32: the attn2 to_k/to_v weights of both UNets, the new token's embedding row
  (the gradient of the other rows is zeroed), the discriminator heads; everything else frozen and,
  with --dtype bf16/f16, stored in that precision and run under autocast;
- teacher step: VAE posterior sample, t ~ U{0..999}, ε or v loss (the teacher scheduler's
  prediction_type), AdamW with grad-norm clipping 1.0;
- student step: one Euler step from t = 999 with trailing spacing (the student scheduler's
  prediction_type), re-noise at t' with the same z, the teacher's x̂0 under CFG against the empty
  prompt (the pair batched), both decoded; c(t')·(L_id + 0.5·MSE + 0.1·MS-SWD) plus the
  discriminators' cross-entropy toward "real";
- discriminator step: heads only, real photos against the detached student images (each
  backbone runs again on them, as GAN code does).
Runs in the goldens env (torch + diffusers + transformers): ./run.sh goldens sets it up.
"""

import argparse
import json
import math
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
    Dinov2Model,
    ViTModel,
)

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load(cls, folder: Path, **kwargs):
    """from_pretrained, taking the fp16 weight variant when that is what the folder holds (the
    committed toy models); the weights are cast to the run's precision afterwards."""
    variant = None if any(folder.glob("*model.safetensors")) else "fp16"
    return cls.from_pretrained(folder, variant=variant, torch_dtype=torch.float32, **kwargs)


def alphas_cumprod(scheduler_dir: Path) -> torch.Tensor:
    cfg = json.loads((scheduler_dir / "scheduler_config.json").read_text())
    start, end = cfg.get("beta_start", 0.00085), cfg.get("beta_end", 0.012)
    n = cfg.get("num_train_timesteps", 1000)
    betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def prediction_type(scheduler_dir: Path) -> str:
    cfg = json.loads((scheduler_dir / "scheduler_config.json").read_text())
    return cfg.get("prediction_type", "epsilon")


def prepare(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """[-1, 1] images → area-resized, normalised tower input."""
    x = F.adaptive_avg_pool2d(images, (size, size))
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x + 1) / 2 - m) / s


class IpEncoder(torch.nn.Module):
    """IP-Adapter's image encoder and its projection to cross-attention tokens."""

    def __init__(self, towers: Path):
        super().__init__()
        self.encoder = load(CLIPVisionModelWithProjection, towers / "image_encoder")
        proj = {k: v.float() for k, v in load_file(towers / "ip-adapter.safetensors").items()}
        w = proj["image_proj.proj.weight"]
        self.width = proj["image_proj.norm.weight"].shape[0]
        self.tokens = w.shape[0] // self.width
        self.proj = torch.nn.Linear(w.shape[1], w.shape[0])
        self.proj.load_state_dict({"weight": w, "bias": proj["image_proj.proj.bias"]})
        self.norm = torch.nn.LayerNorm(self.width)
        self.norm.load_state_dict(
            {"weight": proj["image_proj.norm.weight"], "bias": proj["image_proj.norm.bias"]}
        )
        self.size = self.encoder.config.image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeds = self.encoder(prepare(images, self.size, CLIP_MEAN, CLIP_STD)).image_embeds
        return self.norm(self.proj(embeds).view(-1, self.tokens, self.width))


class Discriminator(torch.nn.Module):
    """A frozen backbone and its trainable head Linear(F, 512) → ReLU → Linear(512, 2)."""

    def __init__(self, name: str, towers: Path, ip: IpEncoder, dino_v2_size: int):
        super().__init__()
        self.name = name
        if name == "dinov1":
            self.backbone = load(ViTModel, towers / "dino-v1", add_pooling_layer=False)
            self.size, width = self.backbone.config.image_size, self.backbone.config.hidden_size
        elif name == "dinov2":
            self.backbone = load(Dinov2Model, towers / "dino-v2")
            patch = self.backbone.config.patch_size
            self.size = max(dino_v2_size // patch, 1) * patch
            width = self.backbone.config.hidden_size
        elif name == "ip":
            self.backbone, width = ip, ip.tokens * ip.width
        else:
            raise SystemExit(f"unknown discriminator {name!r}: choose from dinov1, dinov2, ip")
        self.head = torch.nn.Sequential(
            torch.nn.Linear(width, 512), torch.nn.ReLU(), torch.nn.Linear(512, 2)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.name == "ip":
            features = self.backbone(images).flatten(1)
        else:
            x = prepare(images, self.size, IMAGENET_MEAN, IMAGENET_STD)
            kwargs = {"interpolate_pos_encoding": True} if self.name == "dinov1" else {}
            features = self.backbone(pixel_values=x, **kwargs).last_hidden_state[:, 0]
        return self.head(features.float())


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] sRGB → CIELAB (D65)."""
    lin = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(1e-8) ** 2.4)
    m = torch.tensor(
        [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
         [0.0193339, 0.1191920, 0.9503041]], device=x.device)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)
    xyz = xyz / torch.tensor([0.95047, 1.0, 1.08883], device=x.device).view(1, 3, 1, 1)
    d = 6 / 29
    f = torch.where(xyz > d**3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * d * d) + 4 / 29)
    return torch.stack(
        [116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1
    )


def ms_swd(x: torch.Tensor, y: torch.Tensor, scales: int, directions=128, patch=11) -> torch.Tensor:
    """SPEC §6: per-image MS-SWD of [-1, 1] images, fresh random directions on every call."""
    x, y = rgb_to_lab(((x + 1) / 2).clamp(0, 1)), rgb_to_lab(((y + 1) / 2).clamp(0, 1))
    k1 = torch.tensor([1.0, 4, 6, 4, 1], device=x.device)
    kernel = (k1[:, None] * k1[None, :] / 256).expand(3, 1, 5, 5)
    total = 0
    for level in range(scales):
        if level:
            blur = lambda t: F.conv2d(F.pad(t, (2, 2, 2, 2), mode="reflect"), kernel, groups=3)
            x, y = blur(x)[..., ::2, ::2], blur(y)[..., ::2, ::2]
        w = F.normalize(torch.randn(directions, 3 * patch * patch, device=x.device), dim=1)
        w = w.view(directions, 3, patch, patch)
        pad = (patch // 2,) * 4
        px = F.conv2d(F.pad(x, pad, mode="reflect"), w).flatten(2).sort(-1).values
        py = F.conv2d(F.pad(y, pad, mode="reflect"), w).flatten(2).sort(-1).values
        total = total + (px - py).abs().mean((1, 2))
    return total / scales


def load_photos(folder: Path, resolution: int) -> list[torch.Tensor]:
    photos = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp"):
            continue
        img = Image.open(p).convert("RGB").resize((resolution, resolution), Image.BICUBIC)
        photos.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1)
    if not photos:
        raise SystemExit(f"{folder}: no photos")
    return photos


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("student", "teacher", "towers", "images"):
        ap.add_argument(f"--{name}", required=True, type=Path)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--discriminators", default="dinov1,dinov2,ip")
    ap.add_argument("--dino-v2-size", type=int, default=518)
    ap.add_argument("--swd-scales", type=int, default=5)
    ap.add_argument("--teacher-guidance", type=float, default=7.5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    low = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    autocast = lambda: torch.autocast(device.type, dtype=low, enabled=low != torch.float32)

    tokenizer = CLIPTokenizer.from_pretrained(args.teacher / "tokenizer")
    text = load(CLIPTextModel, args.teacher / "text_encoder")
    vae = load(AutoencoderKL, args.student / "vae")
    student = load(UNet2DConditionModel, args.student / "unet")
    teacher = load(UNet2DConditionModel, args.teacher / "unet")
    ip = IpEncoder(args.towers)
    discs = torch.nn.ModuleList(
        Discriminator(n, args.towers, ip, args.dino_v2_size)
        for n in args.discriminators.split(",") if n
    )
    tokenizer.add_tokens("<new1>")
    text.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_id = tokenizer.convert_tokens_to_ids("<new1>")
    init_id = tokenizer("dog", add_special_tokens=False).input_ids[0]
    emb = text.get_input_embeddings().weight
    with torch.no_grad():
        emb[new_id] = emb[init_id]

    for m in (text, vae, student, teacher, ip, *[d.backbone for d in discs]):
        m.requires_grad_(False)
        m.to(device, dtype=low)
    for d in discs:
        d.head.to(device, dtype=torch.float32)

    def kv(unet):
        ps = []
        for name, p in unet.named_parameters():
            if "attn2.to_k" in name or "attn2.to_v" in name:
                p.data = p.data.float()
                p.requires_grad_(True)
                ps.append(p)
        return ps

    kv_teacher, kv_student = kv(teacher), kv(student)
    emb = text.get_input_embeddings().weight
    emb.data = emb.data.float()
    emb.requires_grad_(True)
    frozen_rows = emb.detach().clone()
    adamw = lambda ps, lr: torch.optim.AdamW(ps, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2)
    opt_teacher = adamw(kv_teacher + [emb], 1e-5)
    opt_student = adamw(kv_student, 1e-5 * args.batch)
    heads = [p for d in discs for p in d.head.parameters()]
    opt_heads = adamw(heads, 1e-4) if heads else None

    ac_t = alphas_cumprod(args.teacher / "scheduler").to(device)
    ac_s = alphas_cumprod(args.student / "scheduler").to(device)
    pred_t = prediction_type(args.teacher / "scheduler")
    pred_s = prediction_type(args.student / "scheduler")
    sigma = float(((1 - ac_s[-1]) / ac_s[-1]).sqrt())
    t_student = len(ac_s) - 1
    scaling = vae.config.scaling_factor
    photos = load_photos(args.images, args.resolution)
    prompt = "a photo of a <new1> dog"

    def encode(prompts):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        return text(ids)[0]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def iteration(marks):
        b = args.batch
        idx = torch.randint(len(photos), (b,))
        images = torch.stack([photos[i] for i in idx]).to(device)
        flip = torch.rand(b, device=device) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        with autocast():
            # 1. Teacher step.
            with torch.no_grad():
                x0 = vae.encode(images.to(low)).latent_dist.sample().float() * scaling
            marks("encode")
            t = torch.randint(0, len(ac_t), (b,), device=device)
            a, s = ac_t[t].sqrt().view(-1, 1, 1, 1), (1 - ac_t[t]).sqrt().view(-1, 1, 1, 1)
            eps = torch.randn_like(x0)
            context = encode([prompt] * b)
            out = teacher(a * x0 + s * eps, t, context).sample.float()
            target = eps if pred_t == "epsilon" else a * eps - s * x0
            loss_t = F.mse_loss(out, target)
            opt_teacher.zero_grad(set_to_none=True)
            loss_t.backward()
            others = torch.arange(len(emb), device=device) != new_id
            emb.grad[others] = 0
            torch.nn.utils.clip_grad_norm_(kv_teacher, 1.0)
            opt_teacher.step()
            with torch.no_grad():  # weight decay moved the frozen rows: put them back
                emb[others] = frozen_rows[others]
            marks("teacher_step")

            # 2. Student step.
            with torch.no_grad():
                context = encode([prompt] * b)
                uncond = encode([""] * b)
            z = torch.randn_like(x0)
            latents = z * sigma
            x_in = latents / math.sqrt(sigma**2 + 1)
            ts = torch.full((b,), t_student, device=device)
            out = student(x_in, ts, context).sample.float()
            if pred_s == "epsilon":
                x_s = latents - sigma * out
            else:
                x_s = out * (-sigma / math.sqrt(sigma**2 + 1)) + latents / (sigma**2 + 1)
            marks("student_forward")
            tp = int(torch.randint(0, len(ac_t), ()))
            a2, s2 = ac_t[tp].sqrt(), (1 - ac_t[tp]).sqrt()
            with torch.no_grad():
                x_tp = a2 * x_s.detach() + s2 * z
                pair = teacher(torch.cat([x_tp, x_tp]), torch.full((2 * b,), tp, device=device),
                               torch.cat([uncond, context])).sample.float()
                u, c = pair.chunk(2)
                pred = u + args.teacher_guidance * (c - u)
                x_tc = (x_tp - s2 * pred) / a2 if pred_t == "epsilon" else a2 * x_tp - s2 * pred
            marks("teacher_target")
            fake = vae.decode(x_s / scaling).sample.float()
            with torch.no_grad():
                real_target = vae.decode(x_tc / scaling).sample.float()
            marks("decode")
            with torch.no_grad():
                target_tokens = ip(real_target)
            identity = (1 - F.cosine_similarity(ip(fake), target_tokens, dim=-1)).mean()
            mse = 0.5 * F.mse_loss(x_s, x_tc)
            swd = ms_swd(fake, real_target, args.swd_scales).mean()
            c_t = float(ac_t[tp])
            adv = sum(F.cross_entropy(d(fake), torch.ones(b, dtype=torch.long, device=device))
                      for d in discs)
            loss_s = c_t * (identity + mse + 0.1 * swd) + adv
            marks("student_losses")
            opt_student.zero_grad(set_to_none=True)
            loss_s.backward()
            marks("student_backward")
            torch.nn.utils.clip_grad_norm_(kv_student, 1.0)
            opt_student.step()
            marks("student_optimizer")

            # 3. Discriminator step.
            if opt_heads is not None:
                ones = torch.ones(b, dtype=torch.long, device=device)
                loss_d = sum(
                    0.5 * (F.cross_entropy(d(images.to(low)), ones)
                           + F.cross_entropy(d(fake.detach()), 1 - ones))
                    for d in discs
                )
                opt_heads.zero_grad(set_to_none=True)
                loss_d.backward()
                torch.nn.utils.clip_grad_norm_(heads, 1.0)
                opt_heads.step()
                marks("discriminator_step")

    print(
        f"reference: eager PyTorch {torch.__version__} iteration, batch {args.batch}, "
        f"{args.resolution} px, {args.device} {args.dtype}, {args.warmup} warm-up + "
        f"{args.iters} timed, {torch.get_num_threads()} threads"
    )
    for _ in range(args.warmup):
        iteration(lambda _: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    for _ in range(args.iters):
        iteration(lambda _: None)
    sync()
    print(f"seconds per iteration: {(time.perf_counter() - start) / args.iters:.3f}")
    if args.profile:
        phases: dict[str, float] = {}
        last = [0.0]

        def marks(name):
            sync()
            now = time.perf_counter()
            phases[name] = phases.get(name, 0.0) + now - last[0]
            last[0] = now

        total = 0.0
        for _ in range(args.iters):
            sync()
            last[0] = begin = time.perf_counter()
            iteration(marks)
            total += time.perf_counter() - begin
        n = args.iters
        print(f"profile ({n} more iterations, {total / n:.3f} s each, synchronised at every phase):")
        for name, s in phases.items():
            print(f"  {name:<20} {s / n:>8.3f} s  {100 * s / total:>5.1f}%")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024)
    print(f"peak resident memory: {rss:.2f} GiB")
    if cuda:
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
