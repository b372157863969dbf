"""`python -m bench.tabs`: every tab's engine call once on one model and device, each checked against a reference.

    python -m bench.tabs                          # the tiny random SD on this machine's CPU, in seconds
    python -m bench.tabs --device cuda            # an SD-v1-shaped model with random weights, float16, 512 px
    python -m bench.tabs --model toy --device cuda

What each row checks (a run whose latents turn to NaN or inf fails its row):
- text to image against diffusers' StableDiffusionPipeline on the very same parts, seed and steps, and with
  previews every step (decoded beside the next step on CUDA) against none;
- the text lab's token view against `text_encoder(ids)`, and its swap, mix and comparison runs against the
  plain text-to-image run they must equal (the swap's unedited half, a mix at factor 0, a scale in a comparison);
- the attention maps' run against the same run unwatched (recording must not change the image);
- guidance, image to image, the VAE and the noise schedule: finite results, and guidance changes the image.
The table is printed at the end whatever fails; the exit code is 1 if any row failed.
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import LMSDiscreteScheduler

from core.engine import Engine
from core.guidance import Guidance
from core.models import load_bundle, load_toy
from core.sd_folder import SD_V1, TINY, build_random_sd, sd_pipeline

PROMPT, OTHER = "a red circle on a white background", "a blue star on a yellow background"
EXAMPLE = Path(__file__).resolve().parents[1] / "ui" / "assets" / "examples" / "red-heart.png"
SHAPES = {"tiny": TINY, "sd-v1": SD_V1}
Check = Callable[[], tuple[str, bool]]  # a check returns what it measured, in words, and whether it passed


def final(run) -> "object":
    """The run's last frame, its latents checked finite."""
    last = list(run.frames)[-1]
    if not torch.isfinite(last.latents).all():
        raise FloatingPointError("the final latents hold NaN or inf")
    return last


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of two latents, as a share of the reference's standard deviation."""
    a, b = a.float().cpu(), b.float().cpu()
    return ((a - b).abs().max() / b.std()).item()


def pixels(a, b) -> float:
    """Largest difference of two images in 0-255 levels."""
    return float(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


def checks(engine: Engine, steps: int, tolerance: float, levels: int) -> dict[str, Check]:
    """Each tab's engine call, and what its result is held against: latents within `tolerance` of their std,
    images within `levels` where a preview changes how the VAE is batched."""
    s = replace(engine.default_settings(), steps=steps, seed=1, preview_every=0)
    alone = functools.cache(lambda: final(engine.txt2img(PROMPT, "", s)))  # the plain run the others must equal

    def txt2img() -> tuple[str, bool]:
        b = engine.bundle
        pipe = sd_pipeline(vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet,
                           scheduler=LMSDiscreteScheduler.from_config(b.scheduler_config))
        pipe.set_progress_bar_config(disable=True)
        ref = pipe(PROMPT, num_inference_steps=steps, guidance_scale=s.guidance_scale, height=s.height,
                   width=s.width, generator=torch.Generator("cpu").manual_seed(s.seed), output_type="latent").images
        diff = relative(alone().latents, ref)
        return f"latents vs diffusers' pipeline: max diff {diff:.1e} of their std", diff <= tolerance

    def previews() -> tuple[str, bool]:
        apart = [pixels(final(engine.txt2img(PROMPT, "", replace(s, preview_every=1, previews=kind))).image,
                        alone().image) for kind in ("fast", "full")]
        return (f"final image with previews every step vs none: fast {apart[0]:.0f}, full {apart[1]:.0f} levels "
                "apart", max(apart) <= levels)

    def guided() -> tuple[str, bool]:
        last = final(engine.guided(PROMPT, "", replace(s, scheduler="euler"), Guidance(scale=80.0, every=5)))
        moved = pixels(last.image, final(engine.txt2img(PROMPT, "", replace(s, scheduler="euler"))).image)
        return f"blue loss x 80 moved the image by up to {moved:.0f} levels", moved > 0

    def img2img() -> tuple[str, bool]:
        run = engine.img2img(OTHER, "", EXAMPLE, 0.5, s)
        return f"strength 0.5: {run.source.plan.steps - run.source.plan.first} steps, finite", final(run) is not None

    def tokens() -> tuple[str, bool]:
        diff = engine.views.token_view(PROMPT).max_diff
        return f"encoder path vs text_encoder(ids): max diff {diff:.1e}", diff <= tolerance

    def swap() -> tuple[str, bool]:
        plain, edited = (final(run) for run in engine.edit_token(PROMPT, "", s, 2, [("blue", 1.0)]))
        same, moved = pixels(plain.image, alone().image), pixels(edited.image, plain.image)
        return f"unedited half vs the run alone: {same:.0f} levels; swapped moved {moved:.0f}", same == 0 < moved

    def mix() -> tuple[str, bool]:
        same = pixels(final(engine.mix_prompts(PROMPT, OTHER, 0.0, "", s)).image, alone().image)
        return f"mix at factor 0 vs the first prompt alone: {same:.0f} levels", same == 0

    def compare() -> tuple[str, bool]:
        runs = engine.compare_runs(PROMPT, "", s, engine.parse_scales(f"1,{s.guidance_scale}"))
        same = pixels(final(runs[1]).image, alone().image)
        return f"scale {s.guidance_scale:g} of a comparison vs the run alone: {same:.0f} levels", same == 0

    def attention() -> tuple[str, bool]:
        last = final(engine.attention(PROMPT, "", s))
        maps = last.observed["attention"].images
        same = pixels(last.image, alone().image)
        return f"{len(maps)} maps; image vs the run unwatched: {same:.0f} levels", same == 0 and len(maps) > 0

    def vae_round_trip() -> tuple[str, bool]:
        view = engine.views.vae_view(EXAMPLE)
        return f"round trip {view.psnr:.2f} dB (random weights: any finite value)", bool(np.isfinite(view.psnr))

    def noise() -> tuple[str, bool]:
        row = engine.views.noise_row(EXAMPLE, steps, s.scheduler, steps // 2, 0)
        return f"{len(row.row)} noised pictures", len(row.row) > 0

    return {"text to image": txt2img, "previews": previews, "guidance": guided, "image to image": img2img, "text lab: tokens": tokens,
            "text lab: swap": swap, "text lab: mix": mix, "compare: scales": compare, "attention": attention,
            "VAE": vae_round_trip, "noise schedule": noise}


def run_checks(engine: Engine, steps: int, tolerance: float, levels: int) -> list[tuple[str, str, str, bool]]:
    """(tab, seconds, what was measured, passed) for every check; a check that raises is a failed row."""
    rows = []
    for tab, check in checks(engine, steps, tolerance, levels).items():
        started = time.perf_counter()
        try:
            said, passed = check()
        except Exception as err:  # one broken tab must not hide the others' rows
            traceback.print_exc()
            said, passed = f"{type(err).__name__}: {err}".splitlines()[0], False
        rows.append((tab, f"{time.perf_counter() - started:.2f}", said, passed))
    return rows


def engine_for(model: str, device: str, dtype: str, folder: Path) -> Engine:
    if model == "toy":
        return Engine(load_toy(device=device, dtype=dtype))
    side = 512 if model == "sd-v1" else 64
    path = build_random_sd(folder / model, SHAPES[model], latent_size=side // SHAPES[model].vae_scale_factor)
    return Engine(load_bundle(str(path), device=device, dtype=dtype))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=["tiny", "sd-v1", "toy"],
                        help="default: sd-v1 on cuda, tiny elsewhere")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    model = args.model or ("sd-v1" if args.device.startswith("cuda") else "tiny")
    dtype = "float32" if args.device == "cpu" else "float16"
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    levels = 0 if dtype == "float32" else 1  # in float16 a VAE call on 3 latents may round a pixel apart from 1
    with tempfile.TemporaryDirectory() as folder:
        engine = engine_for(model, args.device, dtype, Path(folder))
        rows = run_checks(engine, args.steps, tolerance, levels)
    print(f"# python -m bench.tabs · {model} · {args.device} · {dtype} · {args.steps} steps · torch {torch.__version__}")
    width = max(len(tab) for tab, *_ in rows)
    for tab, seconds, said, passed in rows:
        print(f"{'ok  ' if passed else 'FAIL'} {tab.ljust(width)} {seconds:>7} s  {said}")
    return 0 if all(passed for *_, passed in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
