"""Schedulers: one fresh instance per run, built from the model's scheduler config.

Schedulers keep per-run state (LMS stores its last derivatives and a step index), so a scheduler object
is never shared between two runs or two users. `step` hides the one difference between them that the
sampling loop must know about: how many steps of history LMS may use.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LMSDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from core.optim_sampler import OptimScheduler

class CachedLMSScheduler(LMSDiscreteScheduler):
    """diffusers' LMS, with its coefficients remembered. Stock LMS integrates them with scipy on every step
    (about 3 ms each on a CPU), yet they depend only on the sigmas around the step, which every run with the
    same schedule shares: each is integrated once, by the stock code, and then looked up."""

    _coefficients: dict[tuple, float] = {}    # shared by all runs; (order, current_order, sigmas read) -> value
    _lock = threading.Lock()
    MAX_CACHED = 100_000

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        key = (order, current_order, *self.sigmas[t - order + 1 : t + 2].tolist())  # every sigma the integral reads
        with self._lock:
            value = self._coefficients.get(key)
        if value is None:
            value = super().get_lms_coefficient(order, t, current_order)
            with self._lock:
                if len(self._coefficients) >= self.MAX_CACHED:
                    self._coefficients.clear()
                self._coefficients[key] = value
        return value


SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "lms": CachedLMSScheduler,                # the Deep Dive's sampler; SD v1's default
    "euler": EulerDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,     # DPM-Solver++ (2M)
    "optim": OptimScheduler,                  # sampling as optimisation: torch.optim on the noise prediction
}
SAMPLER_NOTES = {  # each sampler in a few plain words, as the page's menus offer them
    "lms": "the notebook's: each step uses up to the last 4 noise predictions",
    "euler": "one straight step along the noise prediction",
    "ddim": "DDIM, through x0, adding no new noise",
    "dpm++": "DPM-Solver++ 2M, good in fewer steps",
    "optim": "this app's own: SGD with momentum on the latents, may end early",
}
# Latents are not images in [-1, 1]: DDIM must not clip its x0 prediction (SD v1's own DDIM config).
OVERRIDES: dict[str, dict] = {"ddim": {"clip_sample": False, "set_alpha_to_one": False}}
VARIANCE_EXPLODING = (LMSDiscreteScheduler, EulerDiscreteScheduler)  # x_t = x0 + sigma * noise
LMS_MAX_ORDER = 4  # LMSDiscreteScheduler's default order
LMS_ORDERS = {  # how a run that starts mid-schedule (image to image) counts LMS's order
    "run": "from the run's own first step: 1, 2, 3, then 4 (this app)",
    "diffusers": "from the schedule's start, as diffusers' LMS does: order 4 at once, with one derivative stored",
}
# SD v1's noise schedule, the one its models were trained with. steps_offset is given because without it
# diffusers' pipelines rewrite the config, with a warning.
SD_V1_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      steps_offset=1)


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

    `taken` counts the steps LMS's order grows with. LMS extrapolates from its stored derivatives, so the
    sampling loop counts the run's own steps; stock diffusers counts from the start of the schedule, which for
    a run that starts mid-schedule (image to image) applies 4th-order coefficients to a single derivative
    (LMS_ORDERS' "diffusers", offered so that the difference can be seen).
    """
    if isinstance(scheduler, LMSDiscreteScheduler):
        out = scheduler.step(noise_pred, t, latents, order=min(taken + 1, LMS_MAX_ORDER))
    elif isinstance(scheduler, DPMSolverMultistepScheduler):
        out = scheduler.step(noise_pred, t, latents)
        return out.prev_sample, scheduler.model_outputs[-1]  # DPM-Solver++ keeps its x0 prediction here
    else:
        out = scheduler.step(noise_pred, t, latents)
    return out.prev_sample, out.pred_original_sample


def stopped_early(scheduler: SchedulerMixin) -> str | None:
    """Why the run ends at this step although the schedule has more, or None: the optimiser sampler stops once
    the image is clean for its noise level (its latents are then the predicted x0)."""
    return scheduler.note if isinstance(scheduler, OptimScheduler) and scheduler.converged else None


def add_noise(scheduler: SchedulerMixin, latents: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
    """Clean latents noised to the `index`-th timestep of the schedule; the scheduler is left set to begin
    its run there (the counting schedulers look the noise level up from where they begin)."""
    if not _indexed_by_timestep(scheduler):
        scheduler.set_begin_index(index)
    return scheduler.add_noise(latents, noise, scheduler.timesteps[index : index + 1])


def model_input_scale(scheduler: SchedulerMixin, sigma: float) -> float:
    """The factor `scale_model_input` applies at noise level sigma: 1/sqrt(sigma^2 + 1) for the samplers whose
    latents grow with sigma (LMS, Euler), 1 for those that keep them at unit variance (DDIM, DPM-Solver++)."""
    return 1 / (sigma**2 + 1) ** 0.5 if isinstance(scheduler, VARIANCE_EXPLODING) else 1.0


@dataclass(frozen=True)
class Table:
    """A schedule as numbers: what the schedule tab shows."""

    timesteps: list[float]
    sigmas: list[float]
    input_scales: list[float]      # scale_model_input's factor at each step
    init_noise_sigma: float        # the start noise is scaled by this, so x_T has the first step's noise level
    note: str | None               # see `low_start`


def table(config: dict, name: str, steps: int) -> Table:
    scheduler = make_scheduler(config, name, steps, torch.device("cpu"))
    levels = sigmas(scheduler)
    return Table(scheduler.timesteps.tolist(), levels, [model_input_scale(scheduler, s) for s in levels],
                 float(scheduler.init_noise_sigma), low_start(config, name, steps))


def _first_timestep(config: dict, name: str, steps: int) -> float:
    return float(make_scheduler(config, name, steps, torch.device("cpu")).timesteps[0])


def low_start(config: dict, name: str, steps: int) -> str | None:
    """What to know when a run from pure noise starts in the lower half of the timesteps (None otherwise):
    diffusers puts a single LMS, Euler or optim step at timestep 0, and a single DDIM step near it."""
    scheduler = make_scheduler(config, name, steps, torch.device("cpu"))
    first, top = float(scheduler.timesteps[0]), scheduler.config.num_train_timesteps - 1
    if first >= top / 2:
        return None
    if scheduler.init_noise_sigma < 1:  # LMS, Euler, optim: the start noise is scaled to the first step's sigma
        what = (f"its start noise is scaled down to that step's sigma ({float(scheduler.init_noise_sigma):.3g}), "
                f"so the UNet finds almost nothing to remove and the result is a nearly flat field")
    else:
        what = "the UNet takes the pure noise a run starts from for a picture nearly done, so the result stays noise"
    starts = ((n, _first_timestep(config, name, n)) for n in range(steps + 1, steps + top))
    enough = next(((n, start) for n, start in starts if start >= top / 2), None)
    more = f" From {enough[0]} steps it starts at {enough[1]:g}." if enough else ""
    return (f"{name} with {steps} step{'s' if steps > 1 else ''} starts at timestep {first:g}, not near {top}: "
            f"{what}.{more}")


def sigmas(scheduler: SchedulerMixin) -> list[float]:
    """The noise level of each timestep in the schedule, sigma = sqrt((1 - alpha_bar) / alpha_bar)."""
    if _indexed_by_timestep(scheduler):
        alpha_bar = scheduler.alphas_cumprod[scheduler.timesteps.cpu()]
        return ((1 - alpha_bar) / alpha_bar).sqrt().tolist()
    return scheduler.sigmas[:-1].tolist()  # the table ends with sigma 0, the clean image
