"""Inside one step, and one run against its variations: classifier-free guidance taken apart into the UNet's two
predictions, and the same prompt compared across guidance scales, samplers and seeds. Everything here reads
frames of the one sampling loop; nothing runs the UNet again.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from core.vae import decode, to_pil
from core.models import ModelBundle
from core.sampler import Frame

MAX_ENTRIES = 12  # scales, samplers or seeds in one comparison
NO_BRANCHES = ("guidance scale 1 runs the UNet on the prompt alone: there are no two predictions to take apart; "
               "choose a scale other than 1")


def x0_of(x_t: torch.Tensor, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    """The clean latents a noise prediction implies, from the UNet's input x_t at noise level sigma:
    x0 = x_t * sqrt(sigma² + 1) - sigma * noise. The same for every sampler here: LMS and Euler keep
    latents = x0 + sigma * noise and scale the UNet's input by 1/sqrt(sigma² + 1); DDIM and DPM-Solver++ keep
    latents = (x0 + sigma * noise) / sqrt(sigma² + 1) and give the UNet the latents as they are."""
    return x_t * (sigma**2 + 1) ** 0.5 - sigma * noise


@dataclass(frozen=True)
class CfgParts:
    """One step of a guided run taken apart: what each of the UNet's two predictions would make of the image."""

    uncond: Image.Image            # x0 of the unconditional (empty or negative prompt) prediction, decoded
    text: Image.Image              # x0 of the text-conditioned prediction, decoded
    guided: Image.Image            # x0 of uncond + scale x (text - uncond): what the sampler steps toward
    noise: Image.Image             # the guided noise prediction itself, decoded as if it were latents
    noise_norms: tuple[float, ...] # RMS of the noise prediction per latent channel
    distance: float                # RMS distance between the text and unconditional x0 latents


def branch_x0s(frame: Frame) -> tuple[torch.Tensor, torch.Tensor]:
    """(uncond x0, text x0) latents of a guided frame, each (1, 4, h, w)."""
    if frame.branches is None:
        raise ValueError(NO_BRANCHES)
    uncond, text = frame.branches
    return x0_of(frame.x_t, frame.sigma, uncond), x0_of(frame.x_t, frame.sigma, text)


def cfg_parts(bundle: ModelBundle, frame: Frame) -> CfgParts:
    """The four pictures of a guided step, decoded by the VAE in one batch."""
    uncond, text = branch_x0s(frame)
    noise = frame.noise_pred                                                     # (1, 4, h, w)
    pictures = to_pil(decode(bundle, torch.cat([uncond, text, frame.x0, noise])))
    norms = noise[0].float().pow(2).mean((1, 2)).sqrt()                          # (4,)
    distance = (text - uncond).float().pow(2).mean().sqrt().item()
    return CfgParts(*pictures, tuple(norms.tolist()), distance)


def x0_movement(previous: Frame | None, frame: Frame) -> float:
    """How far x0 moved in this step: the RMS of the change in the predicted x0 latents (0 on the first step)."""
    return 0.0 if previous is None else (frame.x0 - previous.x0).float().pow(2).mean().sqrt().item()


def parse_list(text: str, name: str, convert: Callable[[str], object], what: str, example: str) -> list:
    """A comma-separated list ("1, 3, 7.5") of 1 to MAX_ENTRIES values, each converted; a clear error otherwise
    (`what` says what one entry must be)."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise ValueError(f"{name} is empty: give a comma-separated list such as {example}")
    if len(parts) > MAX_ENTRIES:
        raise ValueError(f"{name} takes at most {MAX_ENTRIES} entries, got {len(parts)}")
    values = []
    for part in parts:
        try:
            values.append(convert(part))
        except ValueError as err:
            raise ValueError(f"{name}: {part!r} is not {what}, as in {example}") from err
    return values
