"""Train the toy world's Stable Diffusion from scratch on a CPU, and save it as a diffusers folder.

    python -m core.toyworld.train                      # the shipped model: ~1 hour on 2 cores
    python -m core.toyworld.train --preset tiny --out /tmp/toy   # seconds: checks that the recipe runs
    python -m core.toyworld.train --preset shaded --device cuda --steps 2600 3088 740 --out /tmp/shaded
        # on a GPU, with the step counts that 2 CPU cores reach in the budgets: minutes instead of an hour

Three stages, each given a time budget (the step count follows from the measured speed, so the
learning-rate schedule always completes):
1. an AutoencoderKL (8x down, 4 latent channels, as SD v1) trained on crops of the procedural images
   with L1 + a tiny KL term; its scaling_factor is then set from the latents' standard deviation;
2. a CLIP text encoder (the real 49,408-token vocabulary) and a cross-attention UNet, trained together
   on epsilon prediction with SD's noise schedule, 10% of captions dropped for classifier-free guidance,
   with an exponential moving average of both. The "shaded" preset paints every named colour in random
   shades of itself and drops every caption below timestep 150 (by then the scene is decided and only
   its edges are left to sharpen), so that the conditional branch agrees with the unconditional one at low
   noise, where their disagreement multiplied by 7.5 makes LMS's 4th-order steps blow up (see the model
   card);
3. the VAE decoder alone, on whole images, with the encoder (and so the UNet's latents) fixed: the
   crops of stage 1 are cheap but leave the decoder short of the whole-image context (+2 dB here), and
   a share of images in unnamed colours keeps it from snapping every colour to one of the 11 named ones.
Everything is generated here; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, LMSDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from core.models import TOKENIZER_DIR
from core.schedule import SD_V1_SCHEDULE
from core.sd_folder import Shape, make_text_encoder, make_unet, make_vae, sd_pipeline
from core.toyworld.data import SHADE_SPREAD, SIZE, caption, make_dataset, off_palette_images

HERE = Path(__file__).resolve().parent


SIZE_NOTE = "this model was trained at 64 px: at 128 px it draws the shape two to four times, or as merged blobs"
# What the app starts from with this model (core.models reads lens_defaults.json beside model_index.json).
# CFG 3: with LMS's 4th-order steps, guidance 7.5 makes this model's latents blow up (see the model card).
LENS_DEFAULTS = {
    # previews: the toy's VAE decodes a preview in about 20 ms (a 30-step run with them stays under a second),
    # and its latents are too nonlinear for the fast linear preview map to show more than rough colours
    "settings": {"guidance_scale": 3.0, "previews": "full"},
    # shown beside the setting's control (evaluate.py, LMS 30 steps, 66 prompts x 2 seeds: colour 97.7% at 3,
    # 54.5% at 4, 18.9% at 5, 12.1% at 7.5; Euler at 7.5 99.2%)
    "notes": {"guidance_scale": "this model: 3. With LMS it breaks above 3 (half its images at 4, nearly all at "
                                "the notebook's 7.5); Euler holds at 7.5",
              "width": SIZE_NOTE, "height": SIZE_NOTE},
    "guidance": {"scale": 20.0},  # loss guidance: strong enough to see, gentle enough to keep most shapes
    "embeddings": ["embeddings/teal.safetensors"],  # made by core.toyworld.textual_inversion
    "examples": {
        "txt2img": [
            ["a red circle on a white background", "", 3.0],
            ["a picture of a small blue star on yellow", "", 3.0],
            ["a large green heart on a black background", "", 3.0],
            ["a purple cross, orange background", "purple", 3.0],
        ],
        "guided": [
            ["a red circle on a white background", "blue", 20.0, "#0000ff"],
            ["a green heart on a pink background", "blue", 20.0, "#0000ff"],
            ["a red circle on a white background", "color", 20.0, "#ffff00"],
        ],
        "swap_token": [  # (prompt, the token to replace, the word to put there)
            ["a red circle on a white background", "red", "blue"],
            ["a yellow star on a black background", "star", "heart"],
        ],
        "mix_tokens": [  # (prompt, the token to replace, word A, word B, weight of A)
            ["a red circle on a white background", "red", "red", "blue", 0.5],
            ["a green square on a white background", "square", "square", "circle", 0.5],
        ],
        "mix_prompts": [  # (prompt A, prompt B, factor)
            ["a red circle on a white background", "a blue star on a yellow background", 0.5],
        ],
        "textual_inversion": [  # (prompt, the token to replace with the learned one, or "")
            ["a <teal> circle on a white background", ""],
            ["a green star on a black background", "green"],
        ],
        "img2img": [
            ["a yellow star on a black background", 0.5],
            ["a red heart on a pink background", 0.6],
            ["a blue star on a yellow background", 0.7],
        ],
    },
}


@dataclass(frozen=True)
class TrainConfig:
    images: int = 50_000              # procedural training images
    held_out: int = 500               # images the VAE never trains on, for its PSNR
    seed: int = 0
    shade_spread: float = 0.0         # RGB spread of each named colour's shades (0: the exact named colours)
    vae_channels: tuple = (32, 64, 64, 64)
    vae_minutes: float = 15.0
    vae_batch: int = 32
    vae_crop: int = 32                # train on crops: the VAE is convolutional, and crops are 4x cheaper
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    text_hidden: int = 64             # CLIP text encoder width (SD v1: 768)
    text_layers: int = 2
    unet_channels: tuple = (64, 128)
    unet_layers_per_block: int = 1
    unet_minutes: float = 35.0
    unet_batch: int = 128
    unet_lr: float = 1e-3
    uncond_fraction: float = 0.1      # captions dropped so classifier-free guidance has an unconditional model
    text_from_timestep: int = 0       # below it every caption is dropped: the model reads it only above
    ema_decay: float = 0.999
    warmup_steps: int = 100
    decoder_minutes: float = 8.0      # stage 3: the VAE decoder alone, on whole images
    decoder_batch: int = 16
    decoder_lr: float = 2e-4
    decoder_off_palette: float = 0.3  # the share of its images in random, unnamed colours (data.off_palette_images)
    stage_steps: tuple | None = None  # (VAE, UNet, decoder) step counts, in place of the time budgets
    device: str = "cpu"

    def shape(self) -> Shape:
        """The models' sizes: SD v1's structure, with cross-attention at every UNet level."""
        return Shape(text_hidden=self.text_hidden, text_intermediate=4 * self.text_hidden,
                     text_layers=self.text_layers, text_heads=4, vae_channels=self.vae_channels,
                     vae_layers_per_block=1, vae_norm_groups=8, unet_channels=self.unet_channels,
                     unet_attention=(True,) * len(self.unet_channels),
                     unet_layers_per_block=self.unet_layers_per_block,
                     unet_norm_groups=min(32, self.unet_channels[0]))


PRESETS = {
    "full": TrainConfig(),
    "tiny": TrainConfig(images=256, held_out=32, vae_channels=(8, 16, 16, 16), vae_minutes=0.2, vae_batch=8,
                        text_hidden=32, text_layers=1, unet_channels=(32, 32), unet_minutes=0.2, unet_batch=8,
                        warmup_steps=2, decoder_batch=2, stage_steps=(6, 6, 6)),
}
PRESETS["shaded"] = replace(PRESETS["full"], shade_spread=SHADE_SPREAD, text_from_timestep=150)


def log(message: str) -> None:
    print(message, flush=True)


def to_tensor(images) -> torch.Tensor:
    """PIL images -> (N, 3, 64, 64) in [-1, 1]."""
    array = np.stack([np.asarray(im) for im in images]).astype(np.float32) / 127.5 - 1  # (N, 64, 64, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


class Budget:
    """Turns a time budget into a step count, or takes a fixed count (`steps`), and reports progress.

    A time budget's count is first estimated after `probe` steps, then again at every report from the speed
    measured since the probe: the first steps are slower (memory being allocated), and an estimate from them
    alone left a quarter of a stage's budget unused.
    """

    def __init__(self, name: str, minutes: float | None, steps: int | None = None, probe: int = 10,
                 clock=time.monotonic):
        self.name, self.probe, self.clock = name, probe, clock
        self.seconds = None if steps else minutes * 60
        self.start, self.total, self.probed_at, self.last_report = clock(), steps, None, clock()
        if steps:
            log(f"{name}: {steps} steps")

    def _estimate(self, step: int, now: float) -> float:
        """Re-estimate the step count at `step`; returns the seconds a step takes."""
        if self.probed_at is None or step <= self.probe:
            per_step = (now - self.start) / max(step, 1)
        else:
            per_step = (now - self.probed_at) / (step - self.probe)
        left = self.seconds - (now - self.start)
        self.total = max(step, step + int(left / max(per_step, 1e-9)))
        return per_step

    def steps_so_far(self, step: int) -> int:
        if self.total is None and step == self.probe:
            self.probed_at = self.clock()
            per_step = self._estimate(step, self.probed_at)
            log(f"{self.name}: {per_step * 1000:.0f} ms a step, {self.total} steps in {self.seconds / 60:.1f} min")
        return self.total or self.probe

    def report(self, step: int, loss: float) -> None:
        now, total = self.clock(), self.steps_so_far(step)
        if self.total is not None and (now - self.last_report > 30 or step == total):
            self.last_report = now
            if step < total and self.seconds is not None:
                self._estimate(step, now)
            elapsed = now - self.start
            eta = elapsed / step * (self.total - step)
            log(f"{self.name}: step {step}/{self.total} loss {loss:.4f} · {elapsed / 60:.1f} min, {eta / 60:.1f} min left")


STAGES = ("vae", "unet", "vae decoder")  # in training order, as `stage_steps` lists them


def budget(cfg: TrainConfig, stage: str) -> Budget:
    """The stage's budget: its minutes, or its count in `cfg.stage_steps` whatever the time it takes."""
    minutes = {"vae": cfg.vae_minutes, "unet": cfg.unet_minutes, "vae decoder": cfg.decoder_minutes}[stage]
    return Budget(stage, minutes, cfg.stage_steps[STAGES.index(stage)] if cfg.stage_steps else None)


def learning_rate(base: float, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train_vae(cfg: TrainConfig, images: torch.Tensor, held_out: torch.Tensor) -> AutoencoderKL:
    """Stage 1: the VAE, its scaling_factor set from its latents' spread."""
    shape = cfg.shape()
    vae = make_vae(shape, SIZE // shape.vae_scale_factor).to(cfg.device)
    gen = torch.Generator(cfg.device).manual_seed(cfg.seed)

    def crop_loss() -> torch.Tensor:
        idx = torch.randint(len(images), (cfg.vae_batch,), generator=gen, device=cfg.device)
        top, left = torch.randint(SIZE - cfg.vae_crop + 1, (2,), generator=gen, device=cfg.device).tolist()
        x = images[idx, :, top:top + cfg.vae_crop, left:left + cfg.vae_crop]  # (B, 3, crop, crop)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        return F.l1_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()

    fit(torch.nn.ModuleList([vae]), crop_loss, budget(cfg, "vae"), cfg.vae_lr, 0.0,
        cfg.warmup_steps, clip=None)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(x).latent_dist.sample() for x in images[:2000].split(64)])
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    log(f"vae: held-out PSNR {held_out_psnr(vae, held_out):.2f} dB, latent std {latents.std():.3f}, "
        f"scaling_factor {vae.config.scaling_factor:.4f}")
    return vae


def held_out_psnr(vae: AutoencoderKL, held_out: torch.Tensor) -> float:
    """Mean PSNR (dB) of the VAE's round trip (posterior mean) over images it never trained on."""
    with torch.no_grad():
        recon = torch.cat([vae.decode(vae.encode(x).latent_dist.mode()).sample for x in held_out.split(64)])
    mse = ((recon.clamp(-1, 1) - held_out) / 2).pow(2).mean(dim=(1, 2, 3))  # in [0, 1] units
    return (10 * torch.log10(1 / mse)).mean().item()


def refine_decoder(cfg: TrainConfig, vae: AutoencoderKL, images: torch.Tensor) -> None:
    """Stage 3: the decoder alone on whole images; the encoder, so the latents the UNet learned, stay fixed."""
    parts = torch.nn.ModuleList([vae.post_quant_conv, vae.decoder]).requires_grad_(True)
    gen = torch.Generator(cfg.device).manual_seed(cfg.seed + 1)

    def reconstruction_loss() -> torch.Tensor:
        x = images[torch.randint(len(images), (cfg.decoder_batch,), generator=gen, device=cfg.device)]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=gen)
        return F.l1_loss(vae.decode(z).sample, x)

    fit(parts, reconstruction_loss, budget(cfg, "vae decoder"), cfg.decoder_lr, 0.0, 0)
    vae.requires_grad_(False)


def train_unet(cfg: TrainConfig, vae: AutoencoderKL, images: torch.Tensor, scenes: list,
               tokenizer: CLIPTokenizer) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Stage 2: the text encoder and the UNet together; the EMA weights of both."""
    shape = cfg.shape()
    text_encoder = make_text_encoder(shape, tokenizer)
    unet = make_unet(shape, SIZE // shape.vae_scale_factor)
    text_encoder.to(cfg.device), unet.to(cfg.device)
    with torch.no_grad():  # the VAE is frozen: encode every image once; sample the posterior per step
        dists = [vae.encode(x).latent_dist for x in images.split(256)]
        means = torch.cat([d.mean for d in dists])          # (N, 4, 8, 8)
        stds = torch.cat([d.std for d in dists])
    scale = vae.config.scaling_factor
    alphas = DDPMScheduler(**SD_V1_SCHEDULE).alphas_cumprod.to(cfg.device)
    rng = random.Random(cfg.seed)
    gen = torch.Generator(cfg.device).manual_seed(cfg.seed)

    def encode(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids                      # (B, 77)
        return text_encoder(ids.to(cfg.device))[0]

    def denoising_loss() -> torch.Tensor:
        idx = torch.randint(len(means), (cfg.unet_batch,), generator=gen, device=cfg.device)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen, device=cfg.device)) * scale
        t = torch.randint(0, len(alphas), (cfg.unet_batch,), generator=gen, device=cfg.device)
        texts = ["" if rng.random() < cfg.uncond_fraction or step_t < cfg.text_from_timestep
                 else caption(scenes[i], rng) for i, step_t in zip(idx.tolist(), t.tolist())]
        noise = torch.randn(latents.shape, generator=gen, device=cfg.device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        return F.mse_loss(unet(noisy, t, encoder_hidden_states=encode(texts)).sample, noise)

    models = torch.nn.ModuleList([unet, text_encoder])
    ema = fit(models, denoising_loss, budget(cfg, "unet"), cfg.unet_lr,
              cfg.ema_decay, cfg.warmup_steps)
    return ema[0].eval(), ema[1].eval()


def fit(models: torch.nn.ModuleList, loss_fn, budget: Budget, lr: float, ema_decay: float, warmup: int,
        clip: float | None = 1.0) -> torch.nn.ModuleList:
    """AdamW on `loss_fn()` for the budget, warmup + cosine, gradient norm clipped to `clip` (None: not
    clipped); returns the EMA of `models` (with ema_decay 0, a copy of their final weights)."""
    ema = copy.deepcopy(models).requires_grad_(False)
    on_gpu = next(models.parameters()).is_cuda  # these small models are launch-bound there: one fused kernel
    opt = torch.optim.AdamW(models.parameters(), lr=lr, weight_decay=0.0, fused=on_gpu)
    step = 0
    while step < budget.steps_so_far(step):
        loss = loss_fn()
        for group in opt.param_groups:
            group["lr"] = learning_rate(lr, step, budget.steps_so_far(step), warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(models.parameters(), clip)
        opt.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), models.parameters()):
                e.lerp_(p, 1 - decay)
        step += 1
        budget.report(step, loss.item())
    return ema


def save(out: Path, vae, text_encoder, unet, tokenizer, cfg: TrainConfig, minutes: float, psnr: float) -> None:
    pipe = sd_pipeline(vae=vae.cpu().half(), text_encoder=text_encoder.cpu().half(), tokenizer=tokenizer,
                       unet=unet.cpu().half(), scheduler=LMSDiscreteScheduler(**SD_V1_SCHEDULE))
    pipe.save_pretrained(out, safe_serialization=True)
    write_lens_defaults(out)
    recipe = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    (out / "training.json").write_text(json.dumps(
        {"recipe": recipe, "minutes": round(minutes, 1), "vae_psnr_db": round(psnr, 2)}, indent=2) + "\n")


def write_lens_defaults(out: Path) -> None:
    (out / "lens_defaults.json").write_text(json.dumps(LENS_DEFAULTS, indent=2) + "\n")


def train(cfg: TrainConfig, out: Path) -> dict:
    """Generate the data, train every stage, save the diffusers folder `out`; return what was measured."""
    start = time.time()
    torch.manual_seed(cfg.seed)
    if cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolutions once
    data = make_dataset(cfg.images + cfg.held_out, seed=cfg.seed, shade_spread=cfg.shade_spread)
    images = to_tensor([im for im, _, _ in data]).to(cfg.device)
    scenes = [scene for _, _, scene in data]
    log(f"data: {len(data)} images in {time.time() - start:.0f} s")
    train_images, held_out = images[: cfg.images], images[cfg.images:]
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    vae = train_vae(cfg, train_images, held_out)
    unet, text_encoder = train_unet(cfg, vae, train_images, scenes[: cfg.images], tokenizer)
    off_palette = round(cfg.images * cfg.decoder_off_palette / (1 - cfg.decoder_off_palette))
    extra = to_tensor(off_palette_images(off_palette, seed=cfg.seed + 1)).to(cfg.device)
    refine_decoder(cfg, vae, torch.cat([train_images, extra]))
    psnr = held_out_psnr(vae, held_out)
    log(f"vae decoder: held-out PSNR {psnr:.2f} dB")
    minutes = (time.time() - start) / 60
    save(out, vae, text_encoder, unet, tokenizer, cfg, minutes, psnr)
    log(f"saved to {out} after {minutes:.1f} min")
    return {"minutes": minutes, "vae_psnr_db": psnr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="full")
    parser.add_argument("--out", type=Path, default=HERE / "model")
    parser.add_argument("--vae-minutes", type=float)
    parser.add_argument("--unet-minutes", type=float)
    parser.add_argument("--steps", type=int, nargs=3, metavar=("VAE", "UNET", "DECODER"),
                        help="step counts of the three stages, in place of their time budgets")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to train on a GPU")
    args = parser.parse_args()
    budgets = {"vae_minutes": args.vae_minutes, "unet_minutes": args.unet_minutes,
               "stage_steps": tuple(args.steps) if args.steps else None, "device": args.device}
    train(replace(PRESETS[args.preset], **{k: v for k, v in budgets.items() if v is not None}), args.out)


if __name__ == "__main__":
    main()
