"""Train the toy world's Stable Diffusion from scratch, and save it as a diffusers folder.

    python -m core.toyworld.train                      # the shipped model (16x16 latents): about 3 hours on 2 CPU cores
    python -m core.toyworld.train --device cuda        # the same recipe on a GPU, in minutes
    python -m core.toyworld.train --preset full --out /tmp/full  # SD's 8x8 latents at 64 px: about 4.5 hours
    python -m core.toyworld.train --preset tiny --out /tmp/toy   # seconds: checks that the recipe runs

Every stage runs a fixed number of steps, so the same command gives the same model on any machine. Each
stage writes a checkpoint every `checkpoint_every` steps, and its result when done, to a folder beside the
output (`--checkpoints`): the same command run again resumes from the last one and ends with the same weights.

The data paints every named colour in random shades of itself, and a tenth of shapes and of backgrounds in
arbitrary colours that their captions leave unnamed, so that colour is continuous in this world as in
photographs. Three stages:
1. an AutoencoderKL (4 latent channels as SD v1; 4x down, 8x in the full preset as in SD) trained on crops of
   the procedural images with L1 + a tiny KL term; its scaling_factor is then set from the latents' standard deviation;
2. a CLIP text encoder (the real 49,408-token vocabulary) and a cross-attention UNet, trained together
   on epsilon prediction with SD's noise schedule, 10% of captions dropped for classifier-free guidance,
   and every caption dropped below timestep 150 (by then the scene is decided and only its edges are left
   to sharpen): with colours painted in shades, this keeps LMS's 4th-order steps at CFG 7.5 from blowing up
   in text to image (see the model card). The conditional branch is never trained below 150 and still
   responds to the caption there: at timesteps 0-99 its distance from the unconditional branch is about
   twice what it is at 100-600 (model/EXPERIMENTS.md, attempt 22). With an exponential moving average
   of both, in cycles of warmup + cosine, each restarting from the last one's average;
3. the VAE decoder alone, on whole images, with the encoder (and so the UNet's latents) fixed, then once
   more in a warm restart at a higher rate: the crops of stage 1 are cheap but leave the decoder short of
   the whole-image context (+3 dB here), and a share of images in unnamed colours keeps it from snapping
   colours to the 11 named ones.
Everything is generated here; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, LMSDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from core.defaults import FILE
from core.models import TOKENIZER_DIR
from core.schedule import SD_V1_SCHEDULE
from core.sd_folder import Shape, make_text_encoder, make_unet, make_vae, sd_pipeline
from core.toyworld.data import SHADE_SPREAD, SIZE, caption, make_dataset, off_palette_images

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class TrainConfig:
    images: int = 50_000              # procedural training images
    held_out: int = 500               # images the VAE never trains on, for its PSNR
    seed: int = 0
    shade_spread: float = SHADE_SPREAD  # RGB spread of each named colour's shades (0: the exact named colours)
    free_colour: float = 0.1          # the chance that a shape, or a background, takes an arbitrary unnamed colour
    vae_channels: tuple = (32, 64, 64, 64)
    vae_steps: int = 5000
    vae_batch: int = 32
    vae_crop: int = 32                # train on crops: the VAE is convolutional, and crops are 4x cheaper
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    text_hidden: int = 64             # CLIP text encoder width (SD v1: 768)
    text_layers: int = 2
    unet_channels: tuple = (64, 128)
    unet_layers_per_block: int = 1
    unet_norm_groups: int = 32        # GroupNorm groups (at most one a channel): at one channel a group, the
                                      # output's norm removes each channel's mean, the scene's colour in latents
    unet_attention: tuple = ()        # per level, down the UNet: whether it has attention (empty: every level)
    unet_steps: int = 3000            # steps of each cycle
    unet_cycles: int = 2              # cycles of warmup + cosine, each from the last one's EMA weights
    unet_batch: int = 128
    unet_lr: float = 1e-3
    uncond_fraction: float = 0.1      # captions dropped so classifier-free guidance has an unconditional model
    text_from_timestep: int = 150     # below it every caption is dropped, so the text branch is untrained there
    ema_decay: float = 0.999
    warmup_steps: int = 100
    decoder_steps: int = 1000         # stage 3: the VAE decoder alone, on whole images
    decoder_batch: int = 16
    decoder_lr: float = 2e-4
    decoder_off_palette: float = 0.3  # the share of its images in random, unnamed colours (data.off_palette_images)
    decoder_restart_steps: int = 2000  # then a warm restart of the decoder at a higher rate, from other batches
    decoder_restart_lr: float = 5e-4
    checkpoint_every: int = 200       # steps between a stage's checkpoints
    device: str = "cpu"

    def shape(self) -> Shape:
        """The models' sizes: SD v1's structure, with cross-attention at every UNet level."""
        return Shape(text_hidden=self.text_hidden, text_intermediate=4 * self.text_hidden,
                     text_layers=self.text_layers, text_heads=4, vae_channels=self.vae_channels,
                     vae_layers_per_block=1, vae_norm_groups=8, unet_channels=self.unet_channels,
                     unet_attention=self.unet_attention or (True,) * len(self.unet_channels),
                     unet_layers_per_block=self.unet_layers_per_block,
                     unet_norm_groups=min(self.unet_norm_groups, self.unet_channels[0]))

    def recipe(self) -> dict:
        """What makes the weights: every field but the device, as JSON values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k != "device"}


# The recipe fields each stage's result depends on. A changed field retrains the stages that depend on it, and
# only those; `checkpoint_every` changes no weights, and `unet_cycles` only how many UNet cycles run.
VAE_FIELDS = ("images", "held_out", "seed", "shade_spread", "free_colour", "vae_channels", "vae_steps", "vae_batch",
              "vae_crop", "vae_lr", "kl_weight", "warmup_steps")
STAGE_FIELDS = {
    "vae": VAE_FIELDS,
    "latents": VAE_FIELDS,
    "unet": VAE_FIELDS + ("text_hidden", "text_layers", "unet_channels", "unet_layers_per_block", "unet_norm_groups",
                          "unet_attention", "unet_steps", "unet_batch", "unet_lr", "uncond_fraction",
                          "text_from_timestep", "ema_decay"),
    "vae decoder": VAE_FIELDS + ("decoder_steps", "decoder_batch", "decoder_lr", "decoder_off_palette"),
}
STAGE_FIELDS["vae decoder restart"] = STAGE_FIELDS["vae decoder"] + ("decoder_restart_steps", "decoder_restart_lr")

PRESETS = {
    "full": TrainConfig(),
    # the shipped model (attempt 42): 16x16 latents at 64 px, a VAE of three levels (4x down) and a UNet of three,
    # so that a shape spans more latent cells (image to image's layout is lost on the 8x8 cells, attempt 36); 4
    # channels a norm group at the first level, as the full preset has 2 (attempt 38: with 1 no colour is learned);
    # attention at 8x8, 4x4 and mid as in the full preset, none at 16x16, where it took 60% of a step (attempt 41)
    "fine": TrainConfig(vae_channels=(32, 64, 64), unet_channels=(32, 64, 128), unet_norm_groups=8,
                        unet_attention=(False, True, True)),
    "tiny": TrainConfig(images=256, held_out=32, vae_channels=(8, 16, 16, 16), vae_steps=6, vae_batch=8,
                        text_hidden=32, text_layers=1, unet_channels=(32, 32), unet_steps=6, unet_batch=8,
                        warmup_steps=2, decoder_steps=6, decoder_batch=2, decoder_restart_steps=6, checkpoint_every=2),
}


def log(message: str) -> None:
    print(message, flush=True)


def to_tensor(images) -> torch.Tensor:
    """PIL images -> (N, 3, 64, 64) in [-1, 1]."""
    array = np.stack([np.asarray(im) for im in images]).astype(np.float32) / 127.5 - 1  # (N, 64, 64, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class Stage:
    """One stage of the recipe: its name, its step count and how its optimiser runs."""
    name: str
    steps: int
    lr: float
    warmup: int = 0
    ema_decay: float = 0.0
    clip: float | None = 1.0          # gradient norm clipped to it; None: not clipped


class Progress:
    """Prints a stage's step, loss, time spent and time left, every 30 s and at its last step."""

    def __init__(self, stage: Stage, first_step: int, clock=time.monotonic):
        self.stage, self.first_step, self.clock = stage, first_step, clock
        self.start = self.last_report = clock()
        resumed = f", resumed at step {first_step}" if first_step else ""
        log(f"{stage.name}: {stage.steps} steps{resumed}")

    def report(self, step: int, loss: float) -> None:
        now = self.clock()
        if now - self.last_report > 30 or step == self.stage.steps:
            self.last_report, elapsed = now, now - self.start
            left = elapsed / (step - self.first_step) * (self.stage.steps - step)
            log(f"{self.stage.name}: step {step}/{self.stage.steps} loss {loss:.4f} · "
                f"{elapsed / 60:.1f} min, {left / 60:.1f} min left")

    def minutes(self) -> float:
        return (self.clock() - self.start) / 60


class Checkpoints:
    """A run's checkpoints: every stage's state each `every` steps, and its result once done.

    The same command run again resumes from them and ends with the same weights as one run through. When the
    recipe has changed, the checkpoints of the stages it changes are removed (those stages train anew) and the
    others are kept, so that no stage mixes two recipes.
    """

    def __init__(self, folder: Path, cfg: TrainConfig):
        folder.mkdir(parents=True, exist_ok=True)
        recipe, written = folder / "recipe.json", json.dumps(cfg.recipe(), indent=2) + "\n"
        self.folder, self.every = folder, cfg.checkpoint_every
        if recipe.exists() and recipe.read_text() != written:
            # a field newer than the checkpoints: they were trained as its default has it
            theirs, ours = {**TrainConfig().recipe(), **json.loads(recipe.read_text())}, cfg.recipe()
            self._drop_changed({k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)})
        recipe.write_text(written)

    def _drop_changed(self, changed: set) -> None:
        for path in sorted(self.folder.glob("*.pt")):
            stage = stage_of(path.stem.replace("-", " "))
            differ = sorted(changed & set(STAGE_FIELDS[stage]))
            if differ:
                log(f"{path.name}: the recipe changed ({', '.join(differ)}), so {stage} trains anew")
                path.unlink()

    def _path(self, name: str) -> Path:
        return self.folder / f"{name.replace(' ', '-')}.pt"

    def load(self, name: str) -> dict | None:
        path = self._path(name)
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    def save(self, name: str, state: dict) -> None:
        partial = self._path(name).with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(self._path(name))  # a run killed while saving leaves the last checkpoint whole

    def finish(self, name: str, result: dict) -> None:
        """Save a stage's result; its last step checkpoint is no longer needed."""
        self.save(name, result)
        self._path(f"{name} step").unlink(missing_ok=True)


def stage_of(checkpoint: str) -> str:
    """The stage a checkpoint belongs to: "unet cycle 2 step" -> "unet"."""
    return checkpoint.removesuffix(" step").split(" cycle ")[0]


def rng_state(rng: random.Random) -> torch.Tensor:
    version, internal, gauss = rng.getstate()
    assert version == 3 and gauss is None, "the captions' generator draws no Gaussians"
    return torch.tensor(internal, dtype=torch.int64)


def set_rng_state(rng: random.Random, state: torch.Tensor) -> None:
    rng.setstate((3, tuple(state.tolist()), None))


def learning_rate(base: float, step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train_vae(cfg: TrainConfig, images: torch.Tensor, held_out: torch.Tensor,
              checkpoints: Checkpoints) -> tuple[AutoencoderKL, float]:
    """Stage 1: the VAE, its scaling_factor set from its latents' spread; returns it and the stage's minutes."""
    shape = cfg.shape()
    vae = make_vae(shape, SIZE // shape.vae_scale_factor).to(cfg.device)
    done = checkpoints.load("vae")
    if done is None:
        gen = torch.Generator(cfg.device).manual_seed(cfg.seed)

        def crop_loss() -> torch.Tensor:
            idx = torch.randint(len(images), (cfg.vae_batch,), generator=gen, device=cfg.device)
            top, left = torch.randint(SIZE - cfg.vae_crop + 1, (2,), generator=gen, device=cfg.device).tolist()
            x = images[idx, :, top:top + cfg.vae_crop, left:left + cfg.vae_crop]  # (B, 3, crop, crop)
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample(generator=gen)).sample
            return F.l1_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()

        stage = Stage("vae", cfg.vae_steps, cfg.vae_lr, cfg.warmup_steps, clip=None)
        minutes = fit(torch.nn.ModuleList([vae]), crop_loss, stage, checkpoints, gen)[1]
        with torch.no_grad():
            latents = torch.cat([vae.encode(x).latent_dist.mode() for x in images[:2000].split(64)])
        done = {"weights": vae.state_dict(), "scaling_factor": float(1 / latents.std()), "minutes": minutes}
        checkpoints.finish("vae", done)
    vae.load_state_dict(done["weights"])
    vae.eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=done["scaling_factor"])
    log(f"vae: held-out PSNR {held_out_psnr(vae, held_out):.2f} dB, scaling_factor {vae.config.scaling_factor:.4f}")
    return vae, done["minutes"]


def held_out_psnr(vae: AutoencoderKL, held_out: torch.Tensor) -> float:
    """Mean PSNR (dB) of the VAE's round trip (posterior mean) over images it never trained on."""
    with torch.no_grad():
        recon = torch.cat([vae.decode(vae.encode(x).latent_dist.mode()).sample for x in held_out.split(64)])
    mse = ((recon.clamp(-1, 1) - held_out) / 2).pow(2).mean(dim=(1, 2, 3))  # in [0, 1] units
    return (10 * torch.log10(1 / mse)).mean().item()


def decoder_cycles(cfg: TrainConfig) -> list[Stage]:
    """Stage 3's cycles: the decoder on whole images, then a warm restart at a higher rate."""
    return [Stage("vae decoder", cfg.decoder_steps, cfg.decoder_lr, clip=None),
            Stage("vae decoder restart", cfg.decoder_restart_steps, cfg.decoder_restart_lr, cfg.warmup_steps,
                  clip=None)]


def refine_decoder(cfg: TrainConfig, vae: AutoencoderKL, images: torch.Tensor, checkpoints: Checkpoints) -> float:
    """Stage 3: the decoder alone on whole images, each cycle from its own batches; the encoder, so the latents
    the UNet learned, stay fixed. Returns the stage's minutes."""
    parts, minutes = torch.nn.ModuleList([vae.post_quant_conv, vae.decoder]), 0.0
    for cycle, stage in enumerate(decoder_cycles(cfg)):
        done = checkpoints.load(stage.name)
        if done is None:
            gen = torch.Generator(cfg.device).manual_seed(cfg.seed + 1 + cycle)
            loss_fn = reconstruction_loss(cfg, vae, images, gen)
            cycle_minutes = fit(parts.requires_grad_(True), loss_fn, stage, checkpoints, gen)[1]
            done = {"weights": vae.state_dict(), "minutes": cycle_minutes}
            checkpoints.finish(stage.name, done)
        vae.load_state_dict(done["weights"])
        minutes += done["minutes"]
    vae.requires_grad_(False)
    return minutes


def reconstruction_loss(cfg: TrainConfig, vae: AutoencoderKL, images: torch.Tensor, gen: torch.Generator):
    """The decoder's L1 loss on a random batch of whole images, encoded by the fixed encoder."""
    def loss() -> torch.Tensor:
        x = images[torch.randint(len(images), (cfg.decoder_batch,), generator=gen, device=cfg.device)]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=gen)
        return F.l1_loss(vae.decode(z).sample, x)

    return loss


def encoded(cfg: TrainConfig, vae: AutoencoderKL, images: torch.Tensor, checkpoints: Checkpoints) -> dict:
    """The frozen VAE's posterior (mean and std) of every training image, encoded once."""
    done = checkpoints.load("latents")
    if done is None:
        with torch.no_grad():
            dists = [vae.encode(x).latent_dist for x in images.split(256)]
        done = {"means": torch.cat([d.mean for d in dists]), "stds": torch.cat([d.std for d in dists])}  # (N, 4, 8, 8)
        checkpoints.finish("latents", done)
    return {name: tensor.to(cfg.device) for name, tensor in done.items()}


def train_unet(cfg: TrainConfig, vae: AutoencoderKL, images: torch.Tensor, scenes: list, tokenizer: CLIPTokenizer,
               checkpoints: Checkpoints) -> tuple[UNet2DConditionModel, CLIPTextModel, float]:
    """Stage 2: the text encoder and the UNet together, in `unet_cycles` warm restarts; the EMA weights of
    both, and the stage's minutes."""
    shape = cfg.shape()
    models = torch.nn.ModuleList([make_unet(shape, SIZE // shape.vae_scale_factor),
                                  make_text_encoder(shape, tokenizer)]).to(cfg.device)
    latents, minutes = None, 0.0
    for cycle in range(cfg.unet_cycles):
        name = "unet" if cycle == 0 else f"unet cycle {cycle + 1}"
        done = checkpoints.load(name)
        if done is None:
            latents = latents if latents is not None else encoded(cfg, vae, images, checkpoints)
            loss_fn, gen, rng = denoising_loss(cfg, models, latents, vae.config.scaling_factor, scenes, tokenizer,
                                               seed=cfg.seed + cycle)
            ema, cycle_minutes = fit(models, loss_fn, Stage(name, cfg.unet_steps, cfg.unet_lr, cfg.warmup_steps,
                                                            cfg.ema_decay), checkpoints, gen, rng)
            done = {"weights": ema.state_dict(), "minutes": cycle_minutes}
            checkpoints.finish(name, done)
        models.load_state_dict(done["weights"])
        minutes += done["minutes"]
    models.eval().requires_grad_(False)
    return models[0], models[1], minutes


def denoising_loss(cfg: TrainConfig, models: torch.nn.ModuleList, latents: dict, scale: float, scenes: list,
                   tokenizer: CLIPTokenizer, seed: int):
    """SD's epsilon-prediction loss on a random batch; returns it with the two generators (seeded by `seed`)
    it draws from."""
    unet, text_encoder = models
    alphas = DDPMScheduler(**SD_V1_SCHEDULE).alphas_cumprod.to(cfg.device)
    rng = random.Random(seed)
    gen = torch.Generator(cfg.device).manual_seed(seed)
    means, stds = latents["means"], latents["stds"]

    def encode(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids                      # (B, 77)
        return text_encoder(ids.to(cfg.device))[0]

    def loss() -> torch.Tensor:
        idx = torch.randint(len(means), (cfg.unet_batch,), generator=gen, device=cfg.device)
        x0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen, device=cfg.device)) * scale
        t = torch.randint(0, len(alphas), (cfg.unet_batch,), generator=gen, device=cfg.device)
        texts = ["" if rng.random() < cfg.uncond_fraction or step_t < cfg.text_from_timestep
                 else caption(scenes[i], rng) for i, step_t in zip(idx.tolist(), t.tolist())]
        noise = torch.randn(x0.shape, generator=gen, device=cfg.device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(unet(noisy, t, encoder_hidden_states=encode(texts)).sample, noise)

    return loss, gen, rng


def stage_state(step: int, minutes: float, models, ema, opt, gen: torch.Generator, rng: random.Random | None) -> dict:
    """Everything a stage needs to go on from `step` as if it had never stopped."""
    state = {"step": step, "minutes": minutes, "models": models.state_dict(), "ema": ema.state_dict(),
             "optimizer": opt.state_dict(), "generator": gen.get_state()}
    if rng is not None:
        state["rng"] = rng_state(rng)
    return state


def resume(state: dict | None, models, ema, opt, gen: torch.Generator, rng: random.Random | None) -> tuple[int, float]:
    """Load a stage_state; returns its step and minutes ((0, 0) without one)."""
    if state is None:
        return 0, 0.0
    models.load_state_dict(state["models"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    if rng is not None:
        set_rng_state(rng, state["rng"])
    return state["step"], state["minutes"]


def fit(models: torch.nn.ModuleList, loss_fn, stage: Stage, checkpoints: Checkpoints, gen: torch.Generator,
        rng: random.Random | None = None) -> tuple[torch.nn.ModuleList, float]:
    """AdamW on `loss_fn()` for the stage's steps, warmup + cosine; returns the EMA of `models` (with
    ema_decay 0, a copy of their final weights) and the stage's minutes. `gen` and `rng` are the generators
    `loss_fn` draws from: checkpointed with the weights, so that a resumed stage draws what one run would."""
    ema = copy.deepcopy(models).requires_grad_(False)
    on_gpu = next(models.parameters()).is_cuda  # these small models are launch-bound there: one fused kernel
    opt = torch.optim.AdamW(models.parameters(), lr=stage.lr, weight_decay=0.0, fused=on_gpu)
    step, minutes_before = resume(checkpoints.load(f"{stage.name} step"), models, ema, opt, gen, rng)
    progress = Progress(stage, step)
    while step < stage.steps:
        loss = loss_fn()
        for group in opt.param_groups:
            group["lr"] = learning_rate(stage.lr, step, stage.steps, stage.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if stage.clip is not None:
            torch.nn.utils.clip_grad_norm_(models.parameters(), stage.clip)
        opt.step()
        with torch.no_grad():
            decay = min(stage.ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), models.parameters()):
                e.lerp_(p, 1 - decay)
        step += 1
        progress.report(step, loss.item())
        if step % checkpoints.every == 0 and step < stage.steps:
            minutes = minutes_before + progress.minutes()
            checkpoints.save(f"{stage.name} step", stage_state(step, minutes, models, ema, opt, gen, rng))
    return ema, minutes_before + progress.minutes()


def save(out: Path, vae, text_encoder, unet, tokenizer, cfg: TrainConfig, minutes: dict, psnr: float) -> None:
    pipe = sd_pipeline(vae=vae.cpu().half(), text_encoder=text_encoder.cpu().half(), tokenizer=tokenizer,
                       unet=unet.cpu().half(), scheduler=LMSDiscreteScheduler(**SD_V1_SCHEDULE))
    pipe.save_pretrained(out, safe_serialization=True)
    write_lens_defaults(out)
    (out / "training.json").write_text(json.dumps(
        {"recipe": cfg.recipe(), "commit": source_commit(), "minutes": {k: round(v, 1) for k, v in minutes.items()},
         "vae_psnr_db": round(psnr, 2)}, indent=2) + "\n")


def write_lens_defaults(out: Path) -> None:
    """What the app starts from with this model: the shipped model's lens_defaults.json (its one source), less
    the learned embeddings this folder does not have yet (core.toyworld.textual_inversion makes them)."""
    shipped = json.loads((HERE / "model" / FILE).read_text())
    shipped["embeddings"] = [name for name in shipped.get("embeddings", []) if (out / name).is_file()]
    (out / FILE).write_text(json.dumps(shipped, indent=2) + "\n")


def source_commit() -> str:
    """The git commit of the recipe's source, or "" outside a git checkout."""
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def train(cfg: TrainConfig, out: Path, checkpoints: Path | None = None) -> dict:
    """Generate the data, train every stage (resuming from `checkpoints`, by default a folder beside `out`),
    save the diffusers folder `out`; return what was measured."""
    checkpoints = Checkpoints(checkpoints or default_checkpoints(out), cfg)
    start = time.time()
    torch.manual_seed(cfg.seed)
    if cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolutions once
    data = make_dataset(cfg.images + cfg.held_out, seed=cfg.seed, shade_spread=cfg.shade_spread,
                        free_colour=cfg.free_colour)
    images = to_tensor([im for im, _, _ in data]).to(cfg.device)
    scenes = [scene for _, _, scene in data]
    log(f"data: {len(data)} images in {time.time() - start:.0f} s")
    train_images, held_out = images[: cfg.images], images[cfg.images:]
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    vae, vae_minutes = train_vae(cfg, train_images, held_out, checkpoints)
    unet, text_encoder, unet_minutes = train_unet(cfg, vae, train_images, scenes[: cfg.images], tokenizer,
                                                  checkpoints)
    off_palette = round(cfg.images * cfg.decoder_off_palette / (1 - cfg.decoder_off_palette))
    extra = to_tensor(off_palette_images(off_palette, seed=cfg.seed + 1)).to(cfg.device)
    decoder_minutes = refine_decoder(cfg, vae, torch.cat([train_images, extra]), checkpoints)
    psnr = held_out_psnr(vae, held_out)
    log(f"vae decoder: held-out PSNR {psnr:.2f} dB")
    minutes = {"vae": vae_minutes, "unet": unet_minutes, "vae decoder": decoder_minutes}
    save(out, vae, text_encoder, unet, tokenizer, cfg, minutes, psnr)
    log(f"saved to {out}; the stages trained for {sum(minutes.values()):.1f} min")
    return {"minutes": minutes, "vae_psnr_db": psnr}


def default_checkpoints(out: Path) -> Path:
    return out.parent / f".{out.name}-checkpoints"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="fine")
    parser.add_argument("--out", type=Path, default=HERE / "model")
    parser.add_argument("--checkpoints", type=Path,
                        help="the folder of checkpoints a stopped run resumes from (default: .OUT-checkpoints beside OUT)")
    parser.add_argument("--steps", type=int, nargs=3, metavar=("VAE", "UNET", "DECODER"),
                        help="step counts of the three stages, in place of the preset's")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to train on a GPU")
    args = parser.parse_args()
    cfg = replace(PRESETS[args.preset], device=args.device)
    if args.steps:
        cfg = replace(cfg, **dict(zip(("vae_steps", "unet_steps", "decoder_steps"), args.steps)))
    train(cfg, args.out, args.checkpoints)


if __name__ == "__main__":
    main()
