"""The engine: the experiments the app offers, each a short recipe that feeds the one sampling loop.

It holds the loaded model bundle and nothing per user: every call builds its own run (scheduler,
generator, stop flag belong to the call), so many users can share one engine.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from pathlib import Path

import torch
from PIL import Image

from core import guidance as loss_guidance
from core import images, latents, schedule, text
from core.guidance import Guidance
from core.models import ModelBundle
from core.sampler import (MAX_SEED, Conditioning, Frame, RunFailed, Settings, Start, check_settings, initial_noise,
                          sample, start_latents)

RANDOM_SEED = -1  # asks the engine to pick a seed; the run reports the one it used
MAX_CHANNEL_SCALE = 5.0  # the VAE tab may multiply a latent channel by -5 .. 5
DIFFERENCE_GAIN = 4  # the VAE's error map is |input - reconstruction| times this
NOISE_ROW = 6  # noised images in the schedule tab's row

NOTEBOOK_EXAMPLES = {  # the Deep Dive notebook's prompts, for real SD weights
    "txt2img": [  # (prompt, negative prompt, guidance)
        ["A watercolor painting of an otter", "", 7.5],
        ["A picture of a puppy", "", 7.5],
        ["A colorful dancer, nat geo photo", "blue", 7.5],
    ],
    "guided": [  # (prompt, loss, loss scale)
        ["A campfire (oil on canvas)", "blue", 200],
        ["A watercolor painting of an otter", "color", 200],
    ],
    "img2img": [  # (prompt, strength), beside ui's example images in their order
        ["A colorful dancer, nat geo photo", 0.8],
        ["An oil painting of a man on a bench", 0.6],
        ["A watercolor painting of an otter", 0.5],
    ],
}


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def guarded(frames: Iterator[Frame], settings: Settings, device: torch.device) -> Iterator[Frame]:
    """The frames of a run; running out of memory frees the cache and says what to change."""
    try:
        yield from frames
    except torch.OutOfMemoryError as err:
        free_memory(device)
        raise RunFailed(f"Out of memory on {device.type} at {settings.width}x{settings.height}: "
                        "try a smaller width and height") from err


@dataclass(frozen=True)
class Plan:
    """What an image-to-image strength means for a run."""

    strength: float
    steps: int
    first: int                     # index of the first step run; == steps when strength 0 runs none
    timestep: float | None         # the timestep (and sigma) the image is noised to; None when none runs
    sigma: float | None

    def describe(self) -> str:
        head = f"strength {self.strength:g} with {self.steps} steps: "
        if self.first == self.steps:
            return head + "no step runs; the result is the image through the VAE and back"
        if self.first == 0:
            return head + f"all {self.steps} steps from pure noise; the image is ignored"
        return head + (f"skip the first {self.first} steps, start at timestep {self.timestep:.0f}, "
                       f"sigma {self.sigma:.2f} ({self.steps - self.first} steps run)")


@dataclass(frozen=True)
class Source:
    """The image a run starts from."""

    image: Image.Image             # the input as the model takes it (RGB, sides a multiple of the VAE factor)
    note: str                      # what was done to the upload to get there
    start: Image.Image             # the latents the run begins from, decoded (the noised image)
    plan: Plan


@dataclass(frozen=True)
class Run:
    """A run that has passed its checks: what to tell the user first, then its frames."""

    settings: Settings             # as run: a random seed is replaced by the seed it drew
    notes: tuple[str, ...]         # things the user should know before the first frame
    frames: Iterator[Frame]
    source: Source | None = None   # image to image: the image and where the run starts


@dataclass(frozen=True)
class VaeView:
    """An image through the VAE and back."""

    image: Image.Image             # the input as the VAE takes it
    note: str                      # what was done to the upload
    channels: list[tuple[Image.Image, float, float]]  # each latent channel in grayscale, with its min and max
    reconstruction: Image.Image
    difference: Image.Image        # |input - reconstruction| per pixel, times DIFFERENCE_GAIN
    psnr: float                    # dB
    compression: str               # "512x512x3 -> 64x64x4: 48x fewer numbers"
    edited: Image.Image | None     # decoded with one channel scaled, when asked


@dataclass(frozen=True)
class NoiseRow:
    """An image noised to chosen steps of a schedule: (index, timestep, sigma, noised latents decoded)."""

    image: Image.Image
    note: str
    chosen: tuple[int, float, float, Image.Image]
    row: list[tuple[int, float, float, Image.Image]]


class Engine:
    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle

    def default_settings(self) -> Settings:
        """Settings for this model: its native size, and any defaults its folder recommends."""
        size = self.bundle.native_size
        return replace(Settings(height=size, width=size), **self.bundle.defaults.get("settings", {}))

    def default_guidance(self) -> Guidance:
        """Loss guidance settings for this model: the notebook's, with any its folder recommends."""
        return replace(Guidance(), **self.bundle.defaults.get("guidance", {}))

    def examples(self, tab: str) -> list[list]:
        """Example inputs for a tab that fit this model: its folder's own, else the notebook's."""
        return self.bundle.defaults.get("examples", {}).get(tab, NOTEBOOK_EXAMPLES[tab])

    def check_txt2img(self, prompt: str, negative_prompt: str, settings: Settings) -> Settings:
        """Raise ValueError for bad inputs; return the settings with a random seed drawn."""
        text.check_prompt(prompt)
        text.check_prompt(negative_prompt, "negative_prompt")
        if settings.seed == RANDOM_SEED:
            settings = replace(settings, seed=random.randint(0, MAX_SEED))
        check_settings(self.bundle, settings)
        return settings

    def txt2img(self, prompt: str, negative_prompt: str, settings: Settings,
                should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Text to image: encode the prompt and the negative prompt, then denoise from pure noise."""
        # 1. check the inputs; draw a seed if asked to
        settings = self.check_txt2img(prompt, negative_prompt, settings)
        # 2. encode the prompts, noting what CLIP cuts off
        cond, notes = self.conditioning(prompt, negative_prompt)
        # 3. sample
        frames = sample(self.bundle, cond, settings, should_stop=should_stop)
        return Run(settings, notes, guarded(frames, settings, self.bundle.device))

    def guided(self, prompt: str, negative_prompt: str, settings: Settings, guidance: Guidance,
               should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Text to image steered by a loss on the decoded predicted x0, applied every `guidance.every` steps."""
        # 1. check the inputs; draw a seed if asked to
        settings = self.check_guided(prompt, negative_prompt, settings, guidance)
        # 2. encode the prompts
        cond, notes = self.conditioning(prompt, negative_prompt)
        # 3. sample with the guidance hook
        frames = sample(self.bundle, cond, settings, hooks=[loss_guidance.hook(self.bundle, guidance)],
                        should_stop=should_stop)
        return Run(settings, notes, guarded(frames, settings, self.bundle.device))

    def check_guided(self, prompt: str, negative_prompt: str, settings: Settings, guidance: Guidance) -> Settings:
        settings = self.check_txt2img(prompt, negative_prompt, settings)
        loss_guidance.check_guidance(guidance, settings.scheduler)
        return settings

    def conditioning(self, prompt: str, negative_prompt: str) -> tuple[Conditioning, tuple[str, ...]]:
        """Both prompts encoded, and a note for each one longer than CLIP reads."""
        tokens = text.tokenize(self.bundle, prompt)
        negative = text.tokenize(self.bundle, negative_prompt)
        notes = tuple(
            f"{what} is longer than CLIP's {self.bundle.max_length} tokens; ignored: “{t.truncated}”"
            for what, t in (("The prompt", tokens), ("The negative prompt", negative)) if t.truncated
        )
        return Conditioning(cond=text.encode(self.bundle, tokens), uncond=text.encode(self.bundle, negative)), notes

    # --- images in: image to image, the VAE, the noise schedule ---

    def fit_image(self, source: str | Path | Image.Image) -> images.Fitted:
        """An uploaded image opened and fitted to the model: native size on the shorter side, sides a
        multiple of the VAE factor."""
        bundle = self.bundle
        return images.fit(images.open_image(source), bundle.native_size, bundle.max_side, bundle.vae_scale_factor)

    @torch.no_grad()
    def image_latents(self, image: Image.Image) -> torch.Tensor:
        return latents.encode(self.bundle, latents.from_pil(image))

    def img2img_plan(self, strength: float, steps: int, scheduler: str) -> Plan:
        """Which steps a strength skips, as diffusers' img2img counts them."""
        if not 0.0 <= strength <= 1.0:  # also false for NaN
            raise ValueError(f"strength must be from 0 to 1, got {strength!r}")
        check_settings(self.bundle, replace(self.default_settings(), steps=steps, scheduler=scheduler, preview_every=0))
        first = steps - int(steps * strength)
        table = schedule.table(self.bundle.scheduler_config, scheduler, steps)
        if first == steps:
            return Plan(strength, steps, first, None, None)
        return Plan(strength, steps, first, table.timesteps[first], table.sigmas[first])

    def img2img(self, prompt: str, negative_prompt: str, image: str | Path | Image.Image, strength: float,
                settings: Settings, should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Image to image: the image's latents noised to the step `strength` asks for, denoised from there."""
        # 1. check the inputs; fit the image to the model; the run takes the image's size
        fitted = self.fit_image(image)
        width, height = fitted.image.size
        settings = self.check_txt2img(prompt, negative_prompt, replace(settings, width=width, height=height))
        plan = self.img2img_plan(strength, settings.steps, settings.scheduler)
        # 2. encode the prompts and the image
        cond, notes = self.conditioning(prompt, negative_prompt)
        clean = self.image_latents(fitted.image)
        # 3. the starting latents, decoded for the page; strength 1 starts from pure noise, as text to image does
        if plan.first == settings.steps:  # strength 0: the result is the VAE's round trip
            begin, frames = clean, iter(())
        else:
            start = Start(clean, plan.first) if plan.first else None
            scheduler = schedule.make_scheduler(self.bundle.scheduler_config, settings.scheduler, settings.steps,
                                                self.bundle.device, plan.first)
            begin = start_latents(self.bundle, settings, scheduler, start)
            # 4. sample the rest of the schedule
            frames = sample(self.bundle, cond, settings, start=start, should_stop=should_stop)
        with torch.no_grad():
            begin_image = latents.to_pil(latents.decode(self.bundle, begin))[0]
        source = Source(fitted.image, fitted.note, begin_image, plan)
        return Run(settings, notes, guarded(frames, settings, self.bundle.device), source)

    @torch.no_grad()
    def vae_view(self, image: str | Path | Image.Image, channel: int | None = None, scale: float = 0.0) -> VaeView:
        """An image through the VAE: its latent channels, the reconstruction, the error; optionally the latents
        decoded again with one channel multiplied by `scale` (0 removes it)."""
        channels = self.bundle.latent_channels
        if channel is not None and not 0 <= channel < channels:
            raise ValueError(f"channel must be from 0 to {channels - 1}, got {channel!r}")
        if not -MAX_CHANNEL_SCALE <= scale <= MAX_CHANNEL_SCALE:
            raise ValueError(f"scale must be from {-MAX_CHANNEL_SCALE:g} to {MAX_CHANNEL_SCALE:g}, got {scale!r}")
        # 1. fit and encode
        fitted = self.fit_image(image)
        pixels = latents.from_pil(fitted.image)                  # (1, 3, H, W)
        lat = self.image_latents(fitted.image)                   # (1, 4, H/8, W/8)
        # 2. decode, and decode again with one channel changed
        batch = [lat]
        if channel is not None:
            edited = lat.clone()
            edited[:, channel] *= scale
            batch.append(edited)
        decoded = latents.decode(self.bundle, torch.cat(batch)).float().cpu()  # (1 or 2, 3, H, W)
        recon, *edit = latents.to_pil(decoded)
        error = ((decoded[:1] - pixels).abs().mean(1, keepdim=True) * DIFFERENCE_GAIN).clamp(0, 1)  # (1, 1, H, W)
        difference = latents.to_pil(error.expand(-1, 3, -1, -1))[0]
        (_, _, height, width), (_, c, h, w) = pixels.shape, lat.shape
        ratio = (3 * height * width) / (c * h * w)
        about = f"{width}x{height}x3 -> {w}x{h}x{c}: {ratio:g}x fewer numbers"
        return VaeView(fitted.image, fitted.note, latents.channel_images(lat), recon, difference,
                       latents.psnr(decoded[:1], pixels), about, edit[0] if edit else None)

    def schedule_table(self, steps: int, scheduler: str) -> schedule.Table:
        check_settings(self.bundle, replace(self.default_settings(), steps=steps, scheduler=scheduler, preview_every=0))
        return schedule.table(self.bundle.scheduler_config, scheduler, steps)

    @torch.no_grad()
    def noise_row(self, image: str | Path | Image.Image, steps: int, scheduler: str, index: int, seed: int,
                  count: int = NOISE_ROW) -> NoiseRow:
        """The image noised with add_noise to step `index`, and to `count` steps spread over the schedule
        (the same noise each time, so only its level changes), each decoded."""
        # 1. check the inputs; fit the image
        if not isinstance(index, int) or not 0 <= index < steps:
            raise ValueError(f"step must be from 0 to {steps - 1} (steps - 1), got {index!r}")
        fitted = self.fit_image(image)
        width, height = fitted.image.size
        settings = replace(self.default_settings(), steps=steps, scheduler=scheduler, seed=seed,
                           width=width, height=height, preview_every=0)
        check_settings(self.bundle, settings)
        # 2. one draw of noise, added at each step's level
        clean = self.image_latents(fitted.image)
        noise = initial_noise(self.bundle, settings)
        row = sorted({round(i * (steps - 1) / max(count - 1, 1)) for i in range(count)})
        noised = []
        for i in [index, *row]:
            sched = schedule.make_scheduler(self.bundle.scheduler_config, scheduler, steps, self.bundle.device)
            noised.append(schedule.add_noise(sched, clean, noise, i))
        # 3. decode them all at once
        pictures = latents.to_pil(latents.decode(self.bundle, torch.cat(noised)))
        table = schedule.table(self.bundle.scheduler_config, scheduler, steps)
        shown = [(i, table.timesteps[i], table.sigmas[i], picture) for i, picture in zip([index, *row], pictures)]
        return NoiseRow(fitted.image, fitted.note, shown[0], shown[1:])
