"""The inspection views: what the model makes of a prompt, an image or a schedule, computed directly, without
sampling. The text lab's token table, the VAE tab and the noise-schedule tab show them."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from core import images, schedule, text, vae
from core.models import ModelBundle
from core.sampler import Settings, check_settings, drawn, initial_noise

MAX_CHANNEL_SCALE = 5.0  # the VAE tab may multiply a latent channel by -5 .. 5
DIFFERENCE_GAIN = 4  # the VAE's error map is |input - reconstruction| times this
NOISE_ROW = 6  # noised images in the schedule tab's row


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
class TokenView:
    """A prompt's tokens as the text encoder reads them."""

    rows: list[tuple[int, int | None, str, float, float]]  # position, id (None: learned), token, |token emb|, |pos emb|
    padding: int                   # end-of-text tokens that pad the rest of the 77
    truncated: str                 # what CLIP cuts off
    token_heat: Image.Image        # the token embeddings, a row per token (blue negative, red positive)
    position_heat: Image.Image     # the position embeddings of the same positions
    token_range: float             # the largest |value| of the token embeddings shown: full blue or red
    position_range: float          # the same for the position embeddings
    max_diff: float                # |our encoder path - text_encoder(ids)|, max: 0 when they agree
    max_diff_without_mask: float   # the same without the causal mask: what the mask changes


@dataclass(frozen=True)
class NoiseRow:
    """An image noised to chosen steps of a schedule: (index, timestep, sigma, noised latents decoded)."""

    image: Image.Image
    note: str
    chosen: tuple[int, float, float, Image.Image]
    row: list[tuple[int, float, float, Image.Image]]
    seed: int                      # the noise's seed (one drawn for RANDOM_SEED)


def heat_image(matrix: torch.Tensor, labels: list[str], width: int = 512, row: int = 16) -> Image.Image:
    """A (rows, columns) matrix as a picture: blue below zero, white at zero, red above; each value `row` px tall
    and up to 4 px wide (SD's 768 columns 1 px each: the picture stays about `width` wide, so the names on the
    left of each row stay legible beside it)."""
    cell = max(1, min(4, width // matrix.shape[1]))
    values = matrix.detach().float().cpu()
    values = (values / values.abs().max().clamp_min(1e-8)).numpy()       # in [-1, 1]
    red = np.where(values > 0, 1.0, 1 + values)
    blue = np.where(values < 0, 1.0, 1 - values)
    green = 1 - np.abs(values)
    rgb = (np.stack([red, green, blue], -1) * 255).round().astype(np.uint8)  # (rows, columns, 3)
    cells = Image.fromarray(rgb)
    cells = cells.resize((cells.width * cell, cells.height * row), Image.Resampling.NEAREST)
    font = ImageFont.load_default(size=row - 4)
    margin = max((round(font.getlength(label)) for label in labels), default=0) + 8
    image = Image.new("RGB", (margin + cells.width, cells.height), "white")
    image.paste(cells, (margin, 0))
    draw = ImageDraw.Draw(image)
    for index, label in enumerate(labels):
        draw.text((4, index * row + row // 2), label, fill="black", font=font, anchor="lm")
    return image


class Views:
    """The views of one model; `base` holds the settings a view's numbers are checked with (the page's)."""

    def __init__(self, bundle: ModelBundle, base: Settings):
        self.bundle = bundle
        self.base = base

    @torch.no_grad()
    def token_view(self, prompt: str, *, learned: text.Learned | None = None) -> TokenView:
        """A prompt's tokens with their embeddings, and the proof that token + position embeddings through the
        encoder (with its causal mask) and the final layer norm give the text encoder's output."""
        bundle = self.bundle
        tokens = text.tokenize(bundle, prompt, learned)
        ids = tokens.input_ids[0].tolist()
        embeds = text.with_learned(bundle, tokens, learned or {})          # (1, 77, hidden)
        positions = text.position_embeddings(bundle)                      # (1, 77, hidden)
        learned_at = {position for position, _, _ in tokens.learned}
        rows = [(i, None if i in learned_at else ids[i], tokens.names[i], embeds[0, i].norm().item(),
                 positions[0, i].norm().item()) for i in range(tokens.length)]
        plain = text.tokenize(bundle, prompt) if learned_at else tokens  # the encoder's own path takes ids only
        reference = bundle.text_encoder(plain.input_ids.to(bundle.device))[0]
        ours = text.encode_embeddings(bundle, text.token_embeddings(bundle, plain.input_ids))
        open_ = text.encode_embeddings(bundle, text.token_embeddings(bundle, plain.input_ids), causal=False)
        token_rows, position_rows = embeds[0, :tokens.length], positions[0, :tokens.length]
        labels = [f"{position} {name}" for position, _, name, *_ in rows]
        return TokenView(rows, bundle.max_length - tokens.length, tokens.truncated,
                         token_heat=heat_image(token_rows, labels), position_heat=heat_image(position_rows, labels),
                         token_range=token_rows.abs().max().item(), position_range=position_rows.abs().max().item(),
                         max_diff=(ours - reference).abs().max().item(),
                         max_diff_without_mask=(open_ - reference).abs().max().item())

    @torch.no_grad()
    def check_channel_edit(self, channel: int | None, scale: float) -> None:
        """ValueError unless `channel` is one of the latents' channels (or None) and `scale` is allowed."""
        channels = self.bundle.latent_channels
        if channel is not None and not 0 <= channel < channels:
            raise ValueError(f"channel must be from 0 to {channels - 1}, got {channel!r}")
        if not -MAX_CHANNEL_SCALE <= scale <= MAX_CHANNEL_SCALE:
            raise ValueError(f"scale must be from {-MAX_CHANNEL_SCALE:g} to {MAX_CHANNEL_SCALE:g}, got {scale!r}")

    def vae_view(self, image: str | Path | Image.Image, channel: int | None = None, scale: float = 0.0) -> VaeView:
        """An image through the VAE: its latent channels, the reconstruction, the error; optionally the latents
        decoded again with one channel multiplied by `scale` (0 removes it)."""
        self.check_channel_edit(channel, scale)
        # 1. fit and encode
        fitted = images.fit_to(self.bundle, image)
        pixels = vae.from_pil(fitted.image)                  # (1, 3, H, W)
        lat = vae.image_latents(self.bundle, fitted.image)                   # (1, 4, H/8, W/8)
        # 2. decode, and decode again with one channel changed
        batch = [lat]
        if channel is not None:
            edited = lat.clone()
            edited[:, channel] *= scale
            batch.append(edited)
        decoded = vae.decode(self.bundle, torch.cat(batch)).float().cpu()  # (1 or 2, 3, H, W)
        recon, *edit = vae.to_pil(decoded)
        error = ((decoded[:1] - pixels).abs().mean(1, keepdim=True) * DIFFERENCE_GAIN).clamp(0, 1)  # (1, 1, H, W)
        difference = vae.to_pil(error.expand(-1, 3, -1, -1))[0]
        (_, _, height, width), (_, c, h, w) = pixels.shape, lat.shape
        ratio = (3 * height * width) / (c * h * w)
        about = f"{width}x{height}x3 -> {w}x{h}x{c}: {ratio:g}x fewer numbers"
        return VaeView(fitted.image, fitted.note, vae.channel_images(lat), recon, difference,
                       vae.psnr(decoded[:1], pixels), about, edit[0] if edit else None)

    def schedule_table(self, steps: int, scheduler: str) -> schedule.Table:
        check_settings(self.bundle, replace(self.base, steps=steps, scheduler=scheduler, preview_every=0))
        return schedule.table(self.bundle.scheduler_config, scheduler, steps)

    @torch.no_grad()
    def check_noise_row(self, image: str | Path | Image.Image, steps: int, scheduler: str, index: int,
                        seed: int) -> tuple[images.Fitted, Settings]:
        """The image fitted to the model and the schedule's settings; ValueError for a bad input."""
        fitted = images.fit_to(self.bundle, image)
        width, height = fitted.image.size
        settings = drawn(replace(self.base, steps=steps, scheduler=scheduler, seed=seed,
                                 width=width, height=height, preview_every=0))
        check_settings(self.bundle, settings)
        if not isinstance(index, int) or not 0 <= index < steps:
            raise ValueError(f"step must be from 0 to {steps - 1} (steps - 1), got {index!r}")
        return fitted, settings

    def noise_row(self, image: str | Path | Image.Image, steps: int, scheduler: str, index: int, seed: int,
                  count: int = NOISE_ROW) -> NoiseRow:
        """The image noised with add_noise to step `index`, and to `count` steps spread over the schedule
        (the same noise each time, so only its level changes), each decoded."""
        # 1. check the inputs; fit the image
        fitted, settings = self.check_noise_row(image, steps, scheduler, index, seed)
        # 2. one draw of noise, added at each step's level
        clean = vae.image_latents(self.bundle, fitted.image)
        noise = initial_noise(self.bundle, settings)
        row = sorted({round(i * (steps - 1) / max(count - 1, 1)) for i in range(count)})
        noised = []
        for i in [index, *row]:
            sched = schedule.make_scheduler(self.bundle.scheduler_config, scheduler, steps, self.bundle.device)
            noised.append(schedule.add_noise(sched, clean, noise, i))
        # 3. decode them all at once
        pictures = vae.to_pil(vae.decode(self.bundle, torch.cat(noised)))
        table = schedule.table(self.bundle.scheduler_config, scheduler, steps)
        shown = [(i, table.timesteps[i], table.sigmas[i], picture) for i, picture in zip([index, *row], pictures)]
        return NoiseRow(fitted.image, fitted.note, shown[0], shown[1:], settings.seed)
