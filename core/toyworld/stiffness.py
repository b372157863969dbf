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

Denoiser = Callable[[torch.Tensor], torch.Tensor]


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(1e-12)


def jvp(denoise: Denoiser, x: torch.Tensor, v: torch.Tensor, at_x: torch.Tensor, h: float = 1e-2) -> torch.Tensor:
    """D'(x) v by a forward difference from `at_x` = D(x)."""
    return (denoise(x + h * v) - at_x) / h


def dominant_eigen(cond: Denoiser, uncond: Denoiser, x: torch.Tensor, scale: float, iterations: int = 15,
                   seed: int = 0) -> tuple[float, torch.Tensor]:
    """The eigenvalue of largest magnitude of D'_g = scale D'_c - (scale - 1) D'_u at x, and its unit vector."""
    cond_x, uncond_x = cond(x), uncond(x)

    def guided(v: torch.Tensor) -> torch.Tensor:
        return scale * jvp(cond, x, v, cond_x) - (scale - 1) * jvp(uncond, x, v, uncond_x)

    v = _unit(torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype))
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
    conditioning, _ = engine.conditioning(prompt, "")
    frames = list(engine.txt2img(prompt, "", replace(settings, scheduler="euler", preview_every=0)).frames)
    rows = []
    for frame, following in zip(frames, frames[1:] + [None]):
        sigma, t = frame.sigma, torch.tensor(frame.timestep)
        c = (1 + sigma**2) ** 0.5
        x = frame.x_t * c  # back from the UNet's input scale

        def denoiser(context: torch.Tensor) -> Denoiser:
            return lambda z: z - sigma * bundle.unet(z / c, t, encoder_hidden_states=context).sample

        cond, uncond = denoiser(conditioning.cond), denoiser(conditioning.uncond)
        with torch.inference_mode():
            eigenvalue, v = dominant_eigen(cond, uncond, x, settings.guidance_scale)
            along = [float((v * jvp(d, x, v, d(x))).sum()) for d in (uncond, cond)]
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
