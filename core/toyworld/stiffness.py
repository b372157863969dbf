"""How stiff classifier-free guidance makes the sampling ODE, step by step along a run.

    python -m core.toyworld.stiffness --model core/toyworld/model --prompt "a blue triangle on a brown background"

The sampler integrates dx/dsigma = (x - D(x)) / sigma, with the guided denoiser
D_g = D_u + w (D_c - D_u). Its Jacobian D'_g = w D'_c - (w - 1) D'_u; a direction where the
unconditional denoiser follows its input (D'_u near 1) and the conditional one ignores it (D'_c near 0,
the prompt already says what is there) gives D'_g near -(w - 1). A step of relative size |dsigma| / sigma
then has h*lambda = (1 - D'_g) |dsigma| / sigma along that direction. Euler stays stable while that is
below 2; LMS's 4th-order steps (Adams-Bashforth) only while it is below about 0.3.

For every step of an Euler run (which stays on track) this prints the dominant eigenvalue of D'_g, found
by power iteration on finite-difference Jacobian-vector products, D'_u and D'_c along its eigenvector,
and h*lambda for the step.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from core import schedule

Denoiser = Callable[[torch.Tensor], torch.Tensor]   # noisy latents -> predicted clean latents
Jacobian = Callable[[torch.Tensor], torch.Tensor]   # v -> D'(x) v at a fixed x


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


def linearise(denoise: Denoiser, x: torch.Tensor, h: float = 1e-2) -> Jacobian:
    """v -> D'(x) v by forward differences; D(x) is evaluated once, here."""
    at_x = denoise(x)
    return lambda v: (denoise(x + h * v) - at_x) / h


def dominant_eigen(cond: Jacobian, uncond: Jacobian, like: torch.Tensor, scale: float, iterations: int = 15,
                   seed: int = 0) -> tuple[float, torch.Tensor]:
    """The eigenvalue of largest magnitude of D'_g = scale D'_c - (scale - 1) D'_u, given D'_c and D'_u as
    Jacobian-vector products on tensors shaped `like`, and its unit eigenvector."""

    def guided(v: torch.Tensor) -> torch.Tensor:
        return scale * cond(v) - (scale - 1) * uncond(v)

    v = _unit(torch.randn(like.shape, generator=torch.Generator().manual_seed(seed), dtype=like.dtype))
    for _ in range(iterations):
        v = _unit(guided(v))
    return float((v * guided(v)).sum()), v


@dataclass(frozen=True)
class StepStiffness:
    sigma: float
    next_sigma: float
    eigenvalue: float     # dominant eigenvalue of D'_g
    uncond: float         # v . D'_u v along its eigenvector v
    cond: float           # v . D'_c v

    @property
    def h_lambda(self) -> float:
        return (1 - self.eigenvalue) * (self.sigma - self.next_sigma) / self.sigma


def along_run(engine, prompt: str, settings) -> list[StepStiffness]:
    """Stiffness at every step of an Euler run of `prompt` (the run's own sigmas, guidance and seed)."""
    bundle = engine.bundle
    settings = replace(settings, scheduler="euler", preview_every=0)
    scheduler = schedule.make_scheduler(bundle.scheduler_config, settings.scheduler, settings.steps, bundle.device)
    conditioning, _ = engine.conditioning(prompt, "")
    frames = list(engine.txt2img(prompt, "", settings).frames)
    rows = []
    for frame, following in zip(frames, frames[1:] + [None]):
        sigma, t = frame.sigma, torch.tensor(frame.timestep)
        scale = schedule.model_input_scale(scheduler, sigma)
        x = frame.x_t / scale  # back from the UNet's input scale

        def denoiser(context: torch.Tensor) -> Denoiser:
            return lambda z: z - sigma * bundle.unet(z * scale, t, encoder_hidden_states=context).sample

        with torch.inference_mode():
            cond, uncond = (linearise(denoiser(context), x) for context in (conditioning.cond, conditioning.uncond))
            eigenvalue, v = dominant_eigen(cond, uncond, x, settings.guidance_scale)
            along = [float((v * jacobian(v)).sum()) for jacobian in (uncond, cond)]
            rows.append(StepStiffness(sigma, following.sigma if following else 0.0, eigenvalue, *along))
    return rows


def main() -> None:
    from core.engine import Engine
    from core.models import load_bundle

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt", default="a blue triangle on a brown background")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    engine = Engine(load_bundle(args.model, device="cpu", dtype="float32"))
    settings = replace(engine.default_settings(), steps=args.steps, guidance_scale=args.guidance, seed=args.seed)
    print("| sigma | dominant eigenvalue of D'_g | D'_u along it | D'_c along it | h*lambda |")
    print("| --- | --- | --- | --- | --- |")
    for row in along_run(engine, args.prompt, settings):
        print(f"| {row.sigma:.3f} | {row.eigenvalue:.2f} | {row.uncond:.2f} | {row.cond:.2f} | {row.h_lambda:.2f} |")


if __name__ == "__main__":
    main()
