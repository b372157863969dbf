"""The engine: the experiments the app offers, each a short recipe that feeds the one sampling loop.

It holds the loaded model bundle and nothing per user: every call builds its own run (scheduler,
generator, stop flag belong to the call), so many users can share one engine.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from core import text
from core.models import ModelBundle
from core.sampler import MAX_SEED, Conditioning, Frame, RunFailed, Settings, check_settings, sample

RANDOM_SEED = -1  # asks the engine to pick a seed; the run reports the one it used

NOTEBOOK_EXAMPLES = {  # the Deep Dive notebook's prompts, for real SD weights: (prompt, negative, guidance)
    "txt2img": [
        ["A watercolor painting of an otter", "", 7.5],
        ["A picture of a puppy", "", 7.5],
        ["A colorful dancer, nat geo photo", "blue", 7.5],
    ],
}


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def guarded(frames: Iterator[Frame], settings: Settings, device: torch.device) -> Iterator[Frame]:
    """The frames of a run; running out of memory frees the cache and says what to change."""
    try:
        yield from frames
    except torch.OutOfMemoryError as err:
        free_memory(device)
        raise RunFailed(f"Out of memory on {device.type} at {settings.width}x{settings.height}: "
                        "try a smaller width and height") from err


@dataclass(frozen=True)
class Run:
    """A run that has passed its checks: what to tell the user first, then its frames."""

    settings: Settings             # as run: a random seed is replaced by the seed it drew
    notes: tuple[str, ...]         # things the user should know before the first frame
    frames: Iterator[Frame]


class Engine:
    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle

    def default_settings(self) -> Settings:
        """Settings for this model: its native size, and any defaults its folder recommends."""
        size = self.bundle.native_size
        return replace(Settings(height=size, width=size), **self.bundle.defaults.get("settings", {}))

    def examples(self, tab: str) -> list[list]:
        """Example inputs for a tab that fit this model: its folder's own, else the notebook's."""
        return self.bundle.defaults.get("examples", {}).get(tab, NOTEBOOK_EXAMPLES[tab])

    def check_txt2img(self, prompt: str, negative_prompt: str, settings: Settings) -> Settings:
        """Raise ValueError for bad inputs; return the settings with a random seed drawn."""
        text.check_prompt(prompt)
        text.check_prompt(negative_prompt, "negative_prompt")
        if settings.seed == RANDOM_SEED:
            settings = replace(settings, seed=random.randint(0, MAX_SEED))
        check_settings(self.bundle, settings)
        return settings

    def txt2img(self, prompt: str, negative_prompt: str, settings: Settings,
                should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Text to image: encode the prompt and the negative prompt, then denoise from pure noise."""
        # 1. check the inputs; draw a seed if asked to
        settings = self.check_txt2img(prompt, negative_prompt, settings)
        # 2. tokenize, saying what CLIP cuts off
        tokens = text.tokenize(self.bundle, prompt)
        negative = text.tokenize(self.bundle, negative_prompt)
        notes = tuple(
            f"{what} is longer than CLIP's {self.bundle.max_length} tokens; ignored: “{t.truncated}”"
            for what, t in (("The prompt", tokens), ("The negative prompt", negative)) if t.truncated
        )
        # 3. encode and sample
        cond = Conditioning(cond=text.encode(self.bundle, tokens), uncond=text.encode(self.bundle, negative))
        frames = sample(self.bundle, cond, settings, should_stop=should_stop)
        return Run(settings, notes, guarded(frames, settings, self.bundle.device))
