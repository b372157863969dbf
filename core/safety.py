"""The safety checker for public demos of real weights: diffusers' `StableDiffusionSafetyChecker` looks at each
picture a run shows, and the pictures it flags are shown blurred, with a note saying why.

The checker is the model's own (`safety_checker/` and `feature_extractor/` in its folder or Hub repo, as SD
v1.4 and v1.5 ship them) or else CompVis/stable-diffusion-safety-checker. It only flags: a step with a flagged
picture is shown blurred whole here, not blacked out as the stock pipeline does, so that a class still sees
that the run went on.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image, ImageFilter

from core.sampler import Frame

CHECKER_REPO = "CompVis/stable-diffusion-safety-checker"
BLUR_FRACTION = 0.08  # the blur's radius, as a share of the picture's longer side: shapes stay, details go
NOTE = ("blurred: the safety checker flagged this picture (it is on for public links of real weights; "
        "--no-safety-checker turns it off for private use)")

Flagger = Callable[[Sequence[Image.Image]], list[bool]]  # pictures -> whether each is flagged


def load_checker(source: str, device: torch.device, dtype: torch.dtype) -> Flagger:
    """diffusers' safety checker: the model's own (its folder's or Hub repo's subfolders), else the Hub's."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    for place, parts in ((source, ("safety_checker", "feature_extractor")), (CHECKER_REPO, ("", ""))):
        try:
            checker = StableDiffusionSafetyChecker.from_pretrained(place, subfolder=parts[0], torch_dtype=dtype)
            extractor = CLIPImageProcessor.from_pretrained(place, subfolder=parts[1])
            break
        except (OSError, ValueError) as err:
            error = err
    else:
        raise ValueError(f"the safety checker could not be loaded from {source} or {CHECKER_REPO} ({error}); "
                         "connect to the Hugging Face Hub, or pass --no-safety-checker for private use")
    checker = checker.to(device).eval()

    @torch.no_grad()
    def flagged(pictures: Sequence[Image.Image]) -> list[bool]:
        pixels = extractor([p.convert("RGB") for p in pictures], return_tensors="pt").pixel_values
        # the checker blacks out the `images` it flags: stand-ins, as the pictures may differ in size
        _, concepts = checker(images=[np.zeros(1) for _ in pictures], clip_input=pixels.to(device, dtype))
        return [bool(c) for c in concepts]

    return flagged


def blurred(picture: Image.Image) -> Image.Image:
    return picture.filter(ImageFilter.GaussianBlur(radius=max(picture.size) * BLUR_FRACTION))


def screened(frames: Iterator[Frame], flagger: Flagger) -> Iterator[Frame]:
    """The frames, each step with a picture the checker flags blurred whole (its x_t, x0 and result); the
    first flagged step's note says why."""
    told = False
    for frame in frames:
        shown = {name: picture for name in ("x0_image", "image")
                 if (picture := getattr(frame, name)) is not None}
        if shown and any(flagger(list(shown.values()))):
            pictures = {name: blurred(p) for name, p in (("x_t_image", frame.x_t_image), *shown.items())
                        if p is not None}
            note = frame.note if told else NOTE if frame.note is None else f"{frame.note}; {NOTE}"
            frame, told = replace(frame, **pictures, note=note), True
        yield frame


def screened_pictures(pictures: Sequence[Image.Image], flagger: Flagger | None) -> list[Image.Image]:
    """Pictures made outside the loop (a step taken apart): those the checker flags, blurred."""
    if flagger is None or not pictures:
        return list(pictures)
    return [blurred(p) if flag else p for p, flag in zip(pictures, flagger(pictures))]
