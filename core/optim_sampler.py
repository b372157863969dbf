"""Sampling as optimisation: the sampler `optim`.

The noise prediction points from x_t towards the noise in it, so it serves as a gradient: the latents are the
parameters of an off-the-shelf torch.optim optimiser, the UNet's noise prediction is their gradient, and the
learning rate at each step is the drop in sigma to the next step. With plain SGD that is exactly the Euler
sampler; momentum carries the direction of the earlier steps on, so the latents run ahead of the schedule.

The optimiser stops early once the noise the UNet still finds in the latents, sigma * rms(noise prediction), is
below `tolerance`. The latents are then the predicted x0, and the loop ends the run there.
"""
from __future__ import annotations

import torch
from diffusers import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput

# SGD with momentum 0.5: each step goes on by half the step before, so the latents run clean before the schedule
# ends (on the toy at 30 steps: after 15 to 25)
OPTIMISER, OPTIONS = torch.optim.SGD, {"momentum": 0.5}
TOLERANCE = 0.15  # latent units; SD's latents are scaled to unit spread


class OptimScheduler(EulerDiscreteScheduler):
    """Euler's timesteps, sigmas and input scaling, with the step taken by a torch.optim optimiser.

    `converged` turns True on the step after which the run should end (its latents are then the predicted x0);
    `note` says why."""

    tolerance = TOLERANCE

    def set_timesteps(self, *args, **kwargs) -> None:
        super().set_timesteps(*args, **kwargs)
        self.converged, self.note = False, None
        self._latents, self._optimiser = None, None

    def _optimiser_for(self, sample: torch.Tensor) -> tuple[torch.Tensor, torch.optim.Optimizer]:
        """The parameter and its optimiser, made on the first step; later steps start from the latents they are
        given (a hook may have moved them) and keep the optimiser's state (its momentum)."""
        if self._optimiser is None:
            self._latents = torch.nn.Parameter(sample.detach().clone())
            self._optimiser = OPTIMISER([self._latents], lr=1.0, **OPTIONS)
        with torch.no_grad():
            self._latents.copy_(sample)
        return self._latents, self._optimiser

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args,
             return_dict: bool = True, **kwargs) -> EulerDiscreteSchedulerOutput:
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index].item(), self.sigmas[self.step_index + 1].item()
        x0 = sample - sigma * model_output
        left = sigma * model_output.float().pow(2).mean().sqrt().item()  # the noise the UNet still finds
        if sigma_next > 0 and left < self.tolerance:
            self.converged = True
            self.note = (f"the optimiser stopped early at step {self.step_index + 1} of {len(self.timesteps)}: the "
                         f"noise the UNet still finds (sigma x RMS of its prediction, {left:.3g}) is below the "
                         f"sampler's tolerance {self.tolerance:g}, so the result is this step's predicted x0")
            prev_sample = x0
        else:
            latents, optimiser = self._optimiser_for(sample)
            latents.grad = model_output.detach().to(latents.dtype)
            optimiser.param_groups[0]["lr"] = sigma - sigma_next
            optimiser.step()
            prev_sample = latents.detach().clone()
        self._step_index += 1
        return EulerDiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
