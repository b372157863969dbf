"""The safety checker for public demos of real weights: diffusers' `StableDiffusionSafetyChecker` looks at each
picture a run shows, and the pictures it flags are shown blurred, with a note saying why.

The checker is the model folder's own (`safety_checker/` and `feature_extractor/`, as SD v1.4 and v1.5 ship
them) or CompVis/stable-diffusion-safety-checker. It only flags: the pictures are blurred here, not blacked out
as the stock pipeline does, so that a class still sees that the run went on.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

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
    """diffusers' safety checker from the model folder's own subfolders, or from the Hub's checker."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    folder = Path(source)
    own = (folder / "safety_checker").is_dir() and (folder / "feature_extractor").is_dir()
    checker_source, extractor_source = ((folder / "safety_checker", folder / "feature_extractor") if own
                                        else (CHECKER_REPO, CHECKER_REPO))
    try:
        checker = StableDiffusionSafetyChecker.from_pretrained(checker_source, torch_dtype=dtype).to(device).eval()
        extractor = CLIPImageProcessor.from_pretrained(extractor_source)
    except (OSError, ValueError) as err:
        raise ValueError(f"the safety checker could not be loaded from {checker_source} ({err}); connect to the "
                         "Hugging Face Hub, or pass --no-safety-checker for private use") from err

    @torch.no_grad()
    def flagged(pictures: Sequence[Image.Image]) -> list[bool]:
        pixels = extractor([p.convert("RGB") for p in pictures], return_tensors="pt").pixel_values
        arrays = np.stack([np.asarray(p.convert("RGB"), dtype=np.float32) / 255 for p in pictures])
        _, concepts = checker(images=arrays, clip_input=pixels.to(device, dtype))
        return [bool(c) for c in concepts]

    return flagged


def blurred(picture: Image.Image) -> Image.Image:
    return picture.filter(ImageFilter.GaussianBlur(radius=max(picture.size) * BLUR_FRACTION))


def screened(frames: Iterator[Frame], flagger: Flagger) -> Iterator[Frame]:
    """The frames with every picture the checker flags blurred (x_t and x0 of a flagged step together); the
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
