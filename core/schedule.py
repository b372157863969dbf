"""Schedulers: one fresh instance per run, built from the model's scheduler config.

Schedulers keep per-run state (LMS stores its last derivatives and a step index), so a scheduler object
is never shared between two runs or two users. `step` hides the one difference between them that the
sampling loop must know about: how many steps of history LMS may use.
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LMSDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "lms": LMSDiscreteScheduler,              # the Deep Dive's sampler; SD v1's default
    "euler": EulerDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,     # DPM-Solver++ (2M)
}
# Latents are not images in [-1, 1]: DDIM must not clip its x0 prediction (SD v1's own DDIM config).
OVERRIDES: dict[str, dict] = {"ddim": {"clip_sample": False, "set_alpha_to_one": False}}
LMS_MAX_ORDER = 4  # LMSDiscreteScheduler's default order


def make_scheduler(config: dict, name: str, steps: int, device: torch.device, first: int = 0) -> SchedulerMixin:
    """A new scheduler of kind `name`, set for `steps` denoising steps of which the run starts at `first`."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    scheduler = SCHEDULERS[name].from_config(config, **OVERRIDES.get(name, {}))
    scheduler.set_timesteps(steps, device=device)
    if not _indexed_by_timestep(scheduler):
        scheduler.set_begin_index(first)  # the others count their steps, and must know where they begin
    return scheduler


def _indexed_by_timestep(scheduler: SchedulerMixin) -> bool:
    """DDIM looks everything up by timestep; it keeps neither a step counter nor a sigma table."""
    return isinstance(scheduler, DDIMScheduler)


def step(scheduler: SchedulerMixin, noise_pred: torch.Tensor, t: torch.Tensor, latents: torch.Tensor,
         taken: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One scheduler step: returns (latents for the next step, predicted x0).

    `taken` counts the steps this run has already made. LMS extrapolates from its stored derivatives;
    stock diffusers counts its order from the start of the schedule, which is wrong for a run that starts
    mid-schedule (image to image), so the order here grows with the run's own history.
    """
    if isinstance(scheduler, LMSDiscreteScheduler):
        out = scheduler.step(noise_pred, t, latents, order=min(taken + 1, LMS_MAX_ORDER))
    elif isinstance(scheduler, DPMSolverMultistepScheduler):
        out = scheduler.step(noise_pred, t, latents)
        return out.prev_sample, scheduler.model_outputs[-1]  # DPM-Solver++ keeps its x0 prediction here
    else:
        out = scheduler.step(noise_pred, t, latents)
    return out.prev_sample, out.pred_original_sample


def sigmas(scheduler: SchedulerMixin) -> list[float]:
    """The noise level of each timestep in the schedule, sigma = sqrt((1 - alpha_bar) / alpha_bar)."""
    if _indexed_by_timestep(scheduler):
        alpha_bar = scheduler.alphas_cumprod[scheduler.timesteps.cpu()]
        return ((1 - alpha_bar) / alpha_bar).sqrt().tolist()
    return scheduler.sigmas[:-1].tolist()  # the table ends with sigma 0, the clean image
