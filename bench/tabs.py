"""`python -m bench.tabs`: each tab's engine calls once on one model and device, each checked against a reference.

    python -m bench.tabs                          # the tiny random SD on this machine's CPU, in about 10 s
    python -m bench.tabs --device cuda            # an SD-v1-shaped model with random weights, float16, 512 px
    python -m bench.tabs --model toy --device cuda
    python -m bench.tabs --model tiny-4x          # a VAE that downsamples 4x (16x16 latents at 64 px)

What each row checks (a run whose latents turn to NaN or inf fails its row):
- text to image against diffusers' StableDiffusionPipeline on the very same parts, seed and steps;
- previews every step (on CUDA and on small CPUs decoded beside the next step): each x_t and x0 picture against
  its frame's latents decoded afterwards, and the final image against the run without previews;
- guidance: the blue loss makes the image bluer than the same run unguided; image to image at strength 1
  against text to image of the same size;
- the text lab: the token view against `text_encoder(ids)`; the swap's unedited half, a token mixed 100% with
  itself, a mix of prompts at factor 0 and the sweep's two ends against the plain runs they must equal;
- comparisons of scales, samplers and seeds: each run against the same run alone; a step taken apart: its guided
  x0 against the frame's x0 preview;
- the attention maps' run against the same run unwatched (recording must not change the image);
- the VAE tab's round trip against diffusers' AutoencoderKL, and the schedule tab's LMS sigmas against diffusers'
  LMSDiscreteScheduler.
Not covered: textual inversion (its embedding belongs to the toy model). The table is printed at the end whatever
fails; the exit code is 1 if any row failed.
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import LMSDiscreteScheduler

from bench import pipeline_of
from core import vae
from core.engine import Engine
from core.guidance import Guidance
from core.models import load_bundle, load_toy
from core.sampler import Frame, Settings
from core.sd_folder import SD_V1, TINY, build_random_sd
from core.toyworld.evaluate import blueness

PROMPT, OTHER = "a red circle on a white background", "a blue star on a yellow background"
EXAMPLE = Path(__file__).resolve().parents[1] / "ui" / "assets" / "examples" / "red-heart.png"
# tiny-4x: a VAE that downsamples 4x instead of SD's 8x, so 16x16 latents at 64 px (the shape of a finer toy world)
SHAPES = {"tiny": TINY, "tiny-4x": replace(TINY, vae_channels=TINY.vae_channels[:3]), "sd-v1": SD_V1}


@dataclass
class Context:
    """What every check shares: the engine, the settings, what counts as equal, and the plain run."""

    engine: Engine
    settings: Settings
    tolerance: float               # latents: largest difference allowed, as a share of the reference's std
    levels: int                    # images: levels apart allowed where two pictures are decoded in other batches

    @functools.cached_property
    def alone(self) -> Frame:
        """The plain text-to-image run's last frame, which the others must equal."""
        return final(self.engine.txt2img(PROMPT, "", self.settings))


def finite(frame: Frame) -> Frame:
    if not torch.isfinite(frame.latents).all():
        raise FloatingPointError(f"the latents of step {frame.index + 1} hold NaN or inf")
    return frame


def final(run) -> Frame:
    """The run's last frame, its latents checked finite."""
    return finite(list(run.frames)[-1])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of two latents, as a share of the reference's standard deviation."""
    a, b = a.float().cpu(), b.float().cpu()
    return ((a - b).abs().max() / b.std()).item()


def pixels(a, b) -> float:
    """Largest difference of two images in 0-255 levels."""
    return float(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


def txt2img(c: Context) -> tuple[str, bool]:
    s = c.settings
    ref = pipeline_of(c.engine.bundle)(PROMPT, num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
                                       height=s.height, width=s.width, output_type="latent",
                                       generator=torch.Generator("cpu").manual_seed(s.seed)).images
    diff = relative(c.alone.latents, ref)
    return f"latents vs diffusers' pipeline: max diff {diff:.1e} of their std", diff <= c.tolerance


def previews(c: Context) -> tuple[str, bool]:
    worst, final_apart = 0.0, []
    for kind in ("fast", "full"):
        frames = list(c.engine.txt2img(PROMPT, "", replace(c.settings, preview_every=1, previews=kind)).frames)
        decode = vae.fast_decode if kind == "fast" else vae.decode
        with torch.inference_mode():
            for f in frames:
                again = vae.to_pil(decode(c.engine.bundle, torch.cat([f.x_t, f.x0])))
                worst = max(worst, pixels(f.x_t_image, again[0]), pixels(f.x0_image, again[1]))
        final_apart.append(pixels(finite(frames[-1]).image, c.alone.image))
    said = (f"x_t and x0 vs their latents decoded afterwards: {worst:.0f}/255; final image vs no previews: "
            f"fast {final_apart[0]:.0f}/255, full {final_apart[1]:.0f}/255")
    return said, worst == 0 and max(final_apart) == 0  # the result is decoded alone, previewed or not


def guided(c: Context) -> tuple[str, bool]:
    s = replace(c.settings, scheduler="euler")
    plain = final(c.engine.txt2img(PROMPT, "", s)).image
    rise = blueness(final(c.engine.guided(PROMPT, "", s, Guidance(scale=80.0, every=5))).image) - blueness(plain)
    return f"blue loss x 80: blueness {rise:+.4f} against the run unguided", rise > 0


def img2img(c: Context) -> tuple[str, bool]:
    run = c.engine.img2img(PROMPT, "", EXAMPLE, 1.0, c.settings)
    size = dict(zip(("width", "height"), run.source.image.size))
    apart = pixels(final(run).image, final(c.engine.txt2img(PROMPT, "", replace(c.settings, **size))).image)
    return f"strength 1 vs text to image at {size['width']}x{size['height']}: {apart:.0f}/255", apart == 0


def tokens(c: Context) -> tuple[str, bool]:
    diff = c.engine.views.token_view(PROMPT).max_diff
    return f"encoder path vs text_encoder(ids): max diff {diff:.1e}", diff <= c.tolerance


def swap(c: Context) -> tuple[str, bool]:
    plain, edited = (final(run) for run in c.engine.edit_token(PROMPT, "", c.settings, 2, [("blue", 1.0)]))
    _, itself = (final(run) for run in c.engine.edit_token(PROMPT, "", c.settings, 2, [("red", 0.5), ("red", 0.5)]))
    same, moved = pixels(plain.image, c.alone.image), pixels(edited.image, plain.image)
    mixed = pixels(itself.image, c.alone.image)
    return (f"unedited half vs the run alone: {same:.0f}/255; red -> blue moved it {moved:.0f}/255; red mixed with "
            f"itself: {mixed:.0f}/255"), same == mixed == 0 < moved


def mix(c: Context) -> tuple[str, bool]:
    same = pixels(final(c.engine.mix_prompts(PROMPT, OTHER, 1.0, "", c.settings)).image, c.alone.image)
    ends = {factor: image for factor, image, _ in c.engine.prompt_sweep(PROMPT, OTHER, "", c.settings, 2)}
    other = final(c.engine.txt2img(OTHER, "", c.settings)).image
    apart = max(pixels(ends[1.0], c.alone.image), pixels(ends[0.0], other))
    return f"mix at factor 1 vs the first prompt: {same:.0f}/255; sweep's ends vs each prompt: {apart:.0f}/255", \
        same == apart == 0


def compare(c: Context) -> tuple[str, bool]:
    e, s = c.engine, c.settings
    changes = e.parse_scales("1,3") + e.parse_samplers(f"euler:{max(2, s.steps // 2)}") + e.parse_seeds("5")
    apart = max(pixels(final(run).image, final(e.txt2img(PROMPT, "", replace(s, **change))).image)
                for run, change in zip(e.compare_runs(PROMPT, "", s, changes), changes))
    return f"{len(changes)} runs (scales, a sampler, a seed) vs each run alone: {apart:.0f}/255", apart == 0


def taken_apart(c: Context) -> tuple[str, bool]:
    frame = list(c.engine.txt2img(PROMPT, "", replace(c.settings, preview_every=1, previews="full")).frames)[0]
    apart = pixels(c.engine.cfg_parts(frame).guided, frame.x0_image)
    return f"first step's guided x0 vs its x0 preview: {apart:.0f}/255", apart <= c.levels


def attention(c: Context) -> tuple[str, bool]:
    last = final(c.engine.attention(PROMPT, "", c.settings))
    maps = last.observed["attention"].images
    same = pixels(last.image, c.alone.image)
    return f"{len(maps)} maps; image vs the run unwatched: {same:.0f}/255", same == 0 and len(maps) > 0


def vae_round_trip(c: Context) -> tuple[str, bool]:
    view, model = c.engine.views.vae_view(EXAMPLE), c.engine.bundle.vae
    with torch.inference_mode():
        x = (vae.from_pil(view.image) * 2 - 1).to(model.device, model.dtype)
        theirs = vae.to_pil((model.decode(model.encode(x).latent_dist.mode()).sample / 2 + 0.5).clamp(0, 1))[0]
    apart = pixels(view.reconstruction, theirs)
    return f"round trip ({view.psnr:.2f} dB) vs diffusers' AutoencoderKL: {apart:.0f}/255", apart <= 1


def noise(c: Context) -> tuple[str, bool]:
    steps = c.settings.steps
    table = c.engine.views.schedule_table(steps, "lms")
    reference = LMSDiscreteScheduler.from_config(c.engine.bundle.scheduler_config)
    reference.set_timesteps(steps)
    diff = max(abs(a - b) for a, b in zip(table.sigmas, reference.sigmas[:-1].tolist(), strict=True))
    row = c.engine.views.noise_row(EXAMPLE, steps, "lms", steps // 2, 0)
    placed = all(sigma == table.sigmas[i] for i, _, sigma, _ in row.row)
    said = f"LMS sigmas vs diffusers' LMSDiscreteScheduler: max diff {diff:.1e}; {len(row.row)} noised pictures"
    return said + " at the table's sigmas", diff <= 1e-6 and placed


CHECKS: dict[str, Callable[[Context], tuple[str, bool]]] = {
    "text to image": txt2img, "previews": previews, "guidance": guided, "image to image": img2img,
    "text lab: tokens": tokens, "text lab: swap and mix tokens": swap, "text lab: mix prompts": mix,
    "compare": compare, "a step taken apart": taken_apart, "attention": attention, "VAE": vae_round_trip,
    "noise schedule": noise}


def run_checks(context: Context) -> list[tuple[str, str, str, bool]]:
    """(tab, seconds, what was measured, passed) for every check; a check that raises is a failed row."""
    rows = []
    for tab, check in CHECKS.items():
        started = time.perf_counter()
        try:
            said, passed = check(context)
        except Exception as err:  # one broken tab must not hide the others' rows
            traceback.print_exc()
            said, passed = f"{type(err).__name__}: {err}".splitlines()[0], False
        rows.append((tab, f"{time.perf_counter() - started:.2f}", said, passed))
    return rows


def engine_for(model: str, device: str, dtype: str, folder: Path) -> Engine:
    """The toy model, or a random model of the named shape built in `folder` (64 px tiny, 512 px SD v1)."""
    if model == "toy":
        return Engine(load_toy(device=device, dtype=dtype))
    side = 512 if model == "sd-v1" else 64
    path = build_random_sd(folder / model, SHAPES[model], latent_size=side // SHAPES[model].vae_scale_factor)
    return Engine(load_bundle(str(path), device=device, dtype=dtype))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=[*SHAPES, "toy"], help="default: sd-v1 on cuda, tiny elsewhere")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    model = args.model or ("sd-v1" if args.device.startswith("cuda") else "tiny")
    dtype = "float32" if args.device == "cpu" else "float16"
    # float16 rounds differently where a VAE call decodes 4 latents at once instead of 2 (a step taken apart
    # against its preview): one level apart
    tolerance, levels = (1e-5, 0) if dtype == "float32" else (2e-2, 1)
    with tempfile.TemporaryDirectory() as folder:
        engine = engine_for(model, args.device, dtype, Path(folder))
        settings = replace(engine.default_settings(), steps=args.steps, seed=1, preview_every=0)
        rows = run_checks(Context(engine, settings, tolerance, levels))
    print(f"# python -m bench.tabs · {model} · {args.device} · {dtype} · {args.steps} steps · "
          f"torch {torch.__version__}")
    width = max(len(tab) for tab, *_ in rows)
    for tab, seconds, said, passed in rows:
        print(f"{'ok  ' if passed else 'FAIL'} {tab.ljust(width)} {seconds:>7} s  {said}")
    return 0 if all(passed for *_, passed in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
