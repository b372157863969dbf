"""Loss guidance: steer a run with the gradient of a loss on the decoded predicted x0.

The Deep Dive's last trick ("blue loss"), as a per-step hook on the one sampling loop. Every `every`
steps from step `start` (the notebook: every 5 from the first) the hook decodes x0 = latents - sigma *
noise_pred, scores the image with a loss, and moves the latents down its gradient: latents -= grad * sigma^2.
Starting later leaves the first steps, where the layout is set, unguided; at moderate scales that mostly keeps it.
A loss is a small pure function of images in [0, 1]; adding one is a function and a line in LOSSES.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from core.vae import decode
from core.sampler import HookResult, StepState

if TYPE_CHECKING:  # annotations only: core.models imports core.defaults, which imports the sampler
    from core.models import ModelBundle

MODES = {  # how the gradient reaches the latents, and what that costs per guided step
    "cheap": "the notebook's: through the VAE decoder only, the UNet's noise prediction held fixed "
             "(one decode and its backward pass)",
    "accurate": "through the UNet as well: the noise prediction is recomputed with gradients "
                "(adds a UNet forward and backward pass, several times the cost of a step)",
}
MAX_SCALE = 5000.0
MAX_EVERY = 200


@dataclass(frozen=True)
class Target:
    """What the losses that need one aim at."""

    color: tuple[float, float, float] = (0.0, 0.0, 1.0)  # RGB in [0, 1], for "color"
    level: float = 0.5             # in [0, 1], for "brightness", "saturation" and "contrast"


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H, W), Rec. 601 weights."""
    r, g, b = images.unbind(1)
    return 0.299 * r + 0.587 * g + 0.114 * b


def blue(images: torch.Tensor, target: Target) -> torch.Tensor:
    """The notebook's blue loss: how far the blue channel is from 0.9, on average."""
    return (images[:, 2] - 0.9).abs().mean()


def color(images: torch.Tensor, target: Target) -> torch.Tensor:
    """How far every pixel is from the target color, on average."""
    return (images - images.new_tensor(target.color)[None, :, None, None]).abs().mean()


def brightness(images: torch.Tensor, target: Target) -> torch.Tensor:
    """How far the mean luminance is from the target level."""
    return (luminance(images).mean() - target.level).abs()


def saturation(images: torch.Tensor, target: Target) -> torch.Tensor:
    """How far the mean saturation (max - min of the channels) is from the target level."""
    return (images.amax(1) - images.amin(1)).mean().sub(target.level).abs()


def contrast(images: torch.Tensor, target: Target) -> torch.Tensor:
    """How far the luminance's standard deviation is from half the target level (0.5 is the most there is)."""
    return (luminance(images).std() - target.level / 2).abs()


Loss = Callable[[torch.Tensor, Target], torch.Tensor]
LOSSES: dict[str, Loss] = {"blue": blue, "color": color, "brightness": brightness, "saturation": saturation,
                           "contrast": contrast}
TARGET_OF = {"color": "color", "brightness": "level", "saturation": "level", "contrast": "level"}  # what a loss
# reads of its Target (the blue loss, the notebook's, has its own: B = 0.9)
GUIDED_SAMPLERS = ("lms", "euler")  # x_t = x0 + sigma * noise: the samplers the update above is written for


@dataclass(frozen=True)
class Guidance:
    loss: str = "blue"             # a key of LOSSES
    scale: float = 200.0           # the loss is multiplied by this before its gradient is taken
    every: int = 5                 # guide steps start, start + every, ... (the notebook: every 5)
    start: int = 0                 # the first `start` steps run unguided (the notebook: 0)
    mode: str = "cheap"            # a key of MODES
    target: Target = Target()


def check_guidance(guidance: Guidance, scheduler: str, steps: int) -> None:
    """ValueError naming the first value of `guidance` that a run of `steps` steps with `scheduler` cannot use."""
    if guidance.loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {guidance.loss!r}")
    if not 0.0 <= guidance.scale <= MAX_SCALE:  # also false for NaN
        raise ValueError(f"loss scale must be from 0 to {MAX_SCALE:g}, got {guidance.scale!r}")
    if not isinstance(guidance.every, int) or not 1 <= guidance.every <= MAX_EVERY:
        raise ValueError(f"every must be a whole number of steps from 1 to {MAX_EVERY}, got {guidance.every!r}")
    if not isinstance(guidance.start, int) or not 0 <= guidance.start < steps:  # a step is left to guide
        raise ValueError(f"start (the first steps left unguided) must be a whole number from 0 to {steps - 1}, "
                         f"got {guidance.start!r}")
    if guidance.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {guidance.mode!r}")
    if not all(0.0 <= c <= 1.0 for c in (*guidance.target.color, guidance.target.level)):
        raise ValueError(f"target color and level must be from 0 to 1, got {guidance.target}")
    if scheduler not in GUIDED_SAMPLERS:
        raise ValueError(f"loss guidance runs with the samplers {' and '.join(GUIDED_SAMPLERS)} "
                         f"(x0 = latents - sigma * noise), got {scheduler!r}")


def hook(bundle: ModelBundle, guidance: Guidance):
    """The per-step hook that applies `guidance`; it gives up for the rest of the run if the loss or its
    gradient stops being finite, and says so."""
    loss_of = LOSSES[guidance.loss]
    broken = False

    def guide(state: StepState) -> HookResult | None:
        nonlocal broken
        if broken or state.index < guidance.start or (state.index - guidance.start) % guidance.every:
            return None
        with torch.enable_grad():  # the loop runs without gradients; only this step builds a graph
            latents = state.latents.detach().requires_grad_()
            noise_pred = state.predict_noise(latents) if guidance.mode == "accurate" else state.noise_pred.detach()
            x0 = latents - state.sigma * noise_pred          # (1, 4, h, w)
            loss = loss_of(decode(bundle, x0).float(), guidance.target)
            (grad,) = torch.autograd.grad(loss * guidance.scale, latents)
        if not (torch.isfinite(loss) and torch.isfinite(grad).all()):
            broken = True
            note = (f"Guidance stopped at step {state.index + 1}: the loss or its gradient is not finite "
                    "(lower the loss scale); the run goes on unguided")
            return HookResult(state.latents, note=note)
        return HookResult(latents.detach() - grad * state.sigma**2, loss=loss.item())

    return guide
