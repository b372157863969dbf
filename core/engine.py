"""The engine: the experiments the app offers, each a short recipe that feeds the one sampling loop.

It holds the loaded model bundle and nothing per user: every call builds its own run (scheduler,
generator, stop flag belong to the call), so many users can share one engine.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from pathlib import Path

import torch
from PIL import Image

from core import attention, compare
from core import guidance as loss_guidance
from core import images, schedule, text, vae
from core.safety import Flagger, screened, screened_pictures
from core.guidance import Guidance
from core.models import ModelBundle
from core.sampler import (MAX_GUIDANCE, MAX_STEPS, Conditioning, Frame, RunFailed, Settings, Start, check_settings,
                          drawn, sample)
from core.views import Views

MAX_SWEEP = 12  # images in a prompt-mix sweep

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
class Plan:
    """What an image-to-image strength means for a run."""

    strength: float
    steps: int
    first: int                     # index of the first step run; == steps when strength 0 runs none
    timestep: float | None         # the timestep (and sigma) the image is noised to; None when none runs
    sigma: float | None
    lms_order: str | None = None   # LMS from mid-schedule: how its order is counted (schedule.LMS_ORDERS)

    def describe(self) -> str:
        head = f"strength {self.strength:g} with {self.steps} steps: "
        if self.first == self.steps:
            return head + "no step runs; the result is the image through the VAE and back"
        if self.first == 0:
            return head + f"all {self.steps} steps from pure noise; the image is ignored"
        plan = head + (f"skip the first {self.first} steps, start at timestep {self.timestep:.0f}, "
                       f"sigma {self.sigma:.2f} ({self.steps - self.first} step"
                       f"{'s' if self.steps - self.first > 1 else ''} run)")
        if self.lms_order is None:
            return plan
        return plan + f"; LMS's order counted {schedule.LMS_ORDERS[self.lms_order]}"


@dataclass(frozen=True)
class Source:
    """The image a run starts from."""

    image: Image.Image             # the input as the model takes it (RGB, sides a multiple of the VAE factor)
    note: str                      # what was done to the upload to get there
    start: Image.Image             # the latents the run begins from, decoded (the noised image)
    plan: Plan


@dataclass(frozen=True)
class Run:
    """A run that has passed its checks: what to tell the user first, then its frames."""

    settings: Settings             # as run: a random seed is replaced by the seed it drew
    notes: tuple[str, ...]         # things the user should know before the first frame
    frames: Iterator[Frame]
    source: Source | None = None   # image to image: the image and where the run starts


class Engine:
    def __init__(self, bundle: ModelBundle, safety: Flagger | None = None):
        """`safety`: a checker whose flagged pictures every run shows blurred (core.safety); None: no check."""
        self.bundle, self.safety = bundle, safety
        vae.preview_map(bundle)  # fit the fast preview decoder now, not in the first user's run
        self.empty_encoding = text.encode(bundle, text.tokenize(bundle, ""))  # every prompt without a negative
        check_settings(bundle, self.default_settings())  # the folder's recommendations must be runnable here
        guided = self.default_settings("guided")  # the guidance defaults run with the Guidance tab's settings
        loss_guidance.check_guidance(self.default_guidance(), guided.scheduler, guided.steps)
        self.views = Views(bundle, self.default_settings())  # tokens, the VAE, the noise schedule

    def _run(self, settings: Settings, notes: tuple[str, ...], frames: Iterator[Frame],
             source: Source | None = None) -> Run:
        """A checked run: its frames freeing memory when it runs out, and screened when there is a checker. A run
        from pure noise (text to image, or image to image at strength 1) is told where its schedule starts too low."""
        frames = screened(frames, self.safety) if self.safety else frames
        from_noise = source is None or source.plan.first == 0
        low = from_noise and schedule.low_start(self.bundle.scheduler_config, settings.scheduler, settings.steps)
        return Run(settings, notes + (low,) if low else notes, guarded(frames, settings, self.bundle.device), source)

    def describe(self) -> str:
        """The model and where it runs, in one line."""
        return self.bundle.describe()

    def default_settings(self, tab: str | None = None) -> Settings:
        """Settings for this model: its native size, the settings of the notebook's demo of `tab` where it had its
        own (core.defaults.DEMO_SETTINGS), and any defaults its folder recommends."""
        size = self.bundle.native_size
        return replace(Settings(height=size, width=size), **self.bundle.defaults.settings_for(tab))

    def setting_note(self, name: str, tab: str | None = None) -> str | None:
        """What this model's folder says about one of its settings on a tab (e.g. where its guidance scale breaks)."""
        return self.bundle.defaults.note(name, tab)

    def default_guidance(self) -> Guidance:
        """Loss guidance settings for this model: the notebook's, with any its folder recommends."""
        return replace(Guidance(), **self.bundle.defaults.guidance)

    def examples(self, tab: str) -> list[list]:
        """Example inputs for a tab that fit this model: its folder's own, else the notebook's."""
        return self.bundle.defaults.examples_for(tab)

    def check_txt2img(self, prompt: str, negative_prompt: str, settings: Settings) -> Settings:
        """Raise ValueError for bad inputs; return the settings with a random seed drawn."""
        text.check_prompt(prompt)
        text.check_prompt(negative_prompt, "negative_prompt")
        settings = drawn(settings)
        check_settings(self.bundle, settings)
        return settings

    def txt2img(self, prompt: str, negative_prompt: str, settings: Settings, *,
                learned: text.Learned | None = None, should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Text to image: encode the prompt and the negative prompt (with any `learned` tokens they use), then
        denoise from pure noise."""
        # 1. check the inputs; draw a seed if asked to
        settings = self.check_txt2img(prompt, negative_prompt, settings)
        # 2. encode the prompts, noting what CLIP cuts off
        cond, notes = self.conditioning(prompt, negative_prompt, learned=learned)
        # 3. sample
        frames = sample(self.bundle, cond, settings, should_stop=should_stop)
        return self._run(settings, notes, frames)

    # --- inside a step, and runs compared ---

    def cfg_parts(self, frame: Frame) -> compare.CfgParts:
        """A guided step taken apart: the unconditional, text and guided x0 and the noise prediction, decoded."""
        with torch.no_grad():
            parts = compare.cfg_parts(self.bundle, frame)
        uncond, text_x0, guided = screened_pictures([parts.uncond, parts.text, parts.guided], self.safety)
        return replace(parts, uncond=uncond, text=text_x0, guided=guided)

    @staticmethod
    def x0_movement(previous: Frame | None, frame: Frame) -> float:
        return compare.x0_movement(previous, frame)

    def compare_runs(self, prompt: str, negative_prompt: str, settings: Settings, changes: list[dict], *,
                     should_stop: Callable[[], bool] = lambda: False) -> list[Run]:
        """The prompt run once per change of the settings (a guidance scale, a sampler and its steps, a seed):
        each run is exactly the text-to-image run with the settings so changed, from the same seed unless the
        change is the seed."""
        changed = self.check_comparison(prompt, negative_prompt, settings, changes)
        return [self.txt2img(prompt, negative_prompt, each, should_stop=should_stop) for each in changed]

    def check_comparison(self, prompt: str, negative_prompt: str, settings: Settings,
                         changes: list[dict]) -> list[Settings]:
        """Each run's settings: `settings` (a random seed drawn once, for every run) with the entry's change."""
        if not 1 <= len(changes) <= compare.MAX_ENTRIES:
            raise ValueError(f"a comparison takes from 1 to {compare.MAX_ENTRIES} entries, got {len(changes)}")
        settings = self.check_txt2img(prompt, negative_prompt, settings)
        return [self.check_txt2img(prompt, negative_prompt, replace(settings, **change)) for change in changes]

    @staticmethod
    def parse_scales(text: str) -> list[dict]:
        scales = compare.parse_list(text, "scales", float, "a number", "1,3,7.5")
        for scale in scales:
            if not 0 <= scale <= MAX_GUIDANCE:
                raise ValueError(f"scales: each takes 0 to {MAX_GUIDANCE:g}, got {scale:g}")
        return [{"guidance_scale": scale} for scale in scales]

    @staticmethod
    def parse_seeds(text: str) -> list[dict]:
        return [{"seed": seed} for seed in compare.parse_list(text, "seeds", int, "a whole number", "1,2,3,4")]

    @staticmethod
    def parse_samplers(text: str) -> list[dict]:
        """"lms, euler:15" -> each sampler, with its own step count where one follows a colon."""
        def sampler(entry: str) -> dict:
            name, _, steps = (part.strip() for part in entry.lower().partition(":"))
            if name not in schedule.SCHEDULERS or steps and not 1 <= int(steps) <= MAX_STEPS:
                raise ValueError(name)
            return {"scheduler": name, **({"steps": int(steps)} if steps else {})}
        return compare.parse_list(text, "samplers", sampler,
                                  f"one of {', '.join(schedule.SCHEDULERS)}, with an optional step count from 1 to "
                                  f"{MAX_STEPS}", "lms,euler:15,ddim")

    def guided(self, prompt: str, negative_prompt: str, settings: Settings, guidance: Guidance, *,
               should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Text to image steered by a loss on the decoded predicted x0, applied every `guidance.every` steps from
        step `guidance.start`."""
        # 1. check the inputs; draw a seed if asked to
        settings = self.check_guided(prompt, negative_prompt, settings, guidance)
        # 2. encode the prompts
        cond, notes = self.conditioning(prompt, negative_prompt)
        # 3. sample with the guidance hook
        frames = sample(self.bundle, cond, settings, hooks=[loss_guidance.hook(self.bundle, guidance)],
                        should_stop=should_stop)
        return self._run(settings, notes, frames)

    def attention(self, prompt: str, negative_prompt: str, settings: Settings, *,
                  layers: attention.Layers = attention.Layers(),
                  should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Text to image that records where each of the prompt's tokens lands: every frame carries the step's
        cross-attention maps (`frame.observed["attention"]`, a `core.attention.StepMaps`), summed over `layers`."""
        # 1. check the inputs; draw a seed if asked to; the layers the maps are summed over
        settings, chosen = self.check_attention(prompt, negative_prompt, settings, layers)
        # 2. encode the prompts; the tokens the maps are of
        cond, notes = self.conditioning(prompt, negative_prompt)
        tokens = text.tokenize(self.bundle, prompt)
        recorder = attention.Recorder(tokens.names, tokens.length, chosen)
        # 3. sample with the recorder watching
        frames = sample(self.bundle, cond, settings, observers=[recorder], should_stop=should_stop)
        return self._run(settings, notes, frames)

    def check_attention(self, prompt: str, negative_prompt: str, settings: Settings,
                        layers: attention.Layers) -> tuple[Settings, list[attention.Layer]]:
        return self.check_txt2img(prompt, negative_prompt, settings), attention.check_layers(self.bundle, layers)

    def attention_tokens(self, prompt: str) -> tuple[str, ...]:
        """What the prompt's attention maps are of: each token from the start token to the end token, as the
        tokenizer shows it, then the padding as one entry."""
        tokens = text.tokenize(self.bundle, prompt)
        return attention.entries(tokens.names, tokens.length)

    def attention_layers(self) -> list[attention.Layer]:
        """The UNet's cross-attention layers: where they sit and how many image pixels a map cell covers."""
        return attention.cross_attention_layers(self.bundle)

    def check_guided(self, prompt: str, negative_prompt: str, settings: Settings, guidance: Guidance) -> Settings:
        settings = self.check_txt2img(prompt, negative_prompt, settings)
        loss_guidance.check_guidance(guidance, settings.scheduler, settings.steps)
        return settings

    def conditioning(self, prompt: str, negative_prompt: str, *, learned: text.Learned | None = None,
                     name: str = "The prompt", words: bool = True) -> tuple[Conditioning, tuple[str, ...]]:
        """Both prompts encoded (with any learned tokens they use), a note for each one longer than CLIP reads,
        one when the prompt (called `name` in the notes) is empty, and with `words` one naming any word the model
        never saw (unknown_words)."""
        tokens = text.tokenize(self.bundle, prompt, learned)
        negative = text.tokenize(self.bundle, negative_prompt, learned)
        uncond = self.empty_encoding if negative_prompt == "" else text.encode(self.bundle, negative, learned)
        notes = tuple(
            f"{what} is longer than CLIP's {self.bundle.max_length} tokens; ignored: “{t.truncated}”"
            for what, t in ((name, tokens), ("The negative prompt", negative)) if t.truncated
        )
        if not prompt.strip():
            notes += (f"{name} is empty: CLIP encodes it as no text at all",)
        unknown = self.unknown_words(((name, prompt), ("The negative prompt", negative_prompt)), learned) if words \
            else ()
        return Conditioning(text.encode(self.bundle, tokens, learned), uncond), notes + unknown

    def unknown_words(self, prompts, learned: text.Learned | None = None) -> tuple[str, ...]:
        """A note naming the words (and numbers) of the (name, text) `prompts` that the model's training captions
        never held, for a model that says which words it knows (the toy world); the `learned` tokens such as
        <teal> are its own."""
        vocabulary, said = self.bundle.vocabulary, []
        for name, written in prompts if vocabulary else ():
            for token in learned or {}:
                written = written.replace(token, " ")
            words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+", written.lower())
            unknown = [word for word in dict.fromkeys(words) if word not in vocabulary.words]
            if unknown:
                said.append((name, ", ".join(map(repr, unknown))))
        if not said:
            return ()
        (first, listed), more = said[0], "".join(f"; {name[0].lower()}{name[1:]}: {words}" for name, words in said[1:])
        return (f"{first} has words this model never saw in training: {listed}{more}. It knows {vocabulary.known}",)

    # --- the text lab: tokens, embeddings and their edits ---

    def token_id(self, word: str) -> int:
        """The vocabulary id of a word that is one token, or of an id written as a number."""
        return text.token_id(self.bundle, word)

    def position_of(self, prompt: str, token: str, *, learned: text.Learned | None = None) -> int:
        """Which of the prompt's tokens `token` means: its position written as a number, or the token itself."""
        tokens = text.tokenize(self.bundle, prompt, learned)
        names = [name.removesuffix("</w>") for name in tokens.names[1 : tokens.length - 1]]
        token = str(token).strip()
        if token.isdigit():
            return int(token)
        if token.removesuffix("</w>") in names:
            return names.index(token.removesuffix("</w>")) + 1
        raise ValueError(f"{token!r} is not one of the prompt's tokens ({', '.join(names) or 'none'})")

    def edit_token(self, prompt: str, negative_prompt: str, settings: Settings, position: int,
                   parts: list[tuple[str, float]], *, learned: text.Learned | None = None,
                   should_stop: Callable[[], bool] = lambda: False) -> tuple[Run, Run]:
        """The prompt as it is, and with the token embedding at `position` replaced by a weighted blend of
        words' token embeddings (or of learned tokens' first vectors): two runs of the same seed, to be shown
        side by side."""
        # 1. check the inputs; draw a seed if asked to; each word must be one token
        settings = self.check_txt2img(prompt, negative_prompt, settings)
        learned = learned or {}
        ingredients = [(learned[part][0] if part in learned else self.token_id(part), weight) for part, weight in parts]
        # 2. encode: the prompt as it is, and with the blend at the position; a note names words the model never saw
        cond, notes = self.conditioning(prompt, negative_prompt, learned=learned, words=False)
        put = " ".join(part for part, _ in parts if part not in learned and not str(part).strip().isdigit())
        notes += self.unknown_words((("The prompt", prompt), ("The negative prompt", negative_prompt),
                                     ("The words put in the token's place", put)), learned)
        tokens = text.tokenize(self.bundle, prompt, learned)
        with torch.no_grad():
            edited = text.encode_embeddings(self.bundle, text.blend_at(self.bundle, tokens, learned, position,
                                                                       ingredients))
        # 3. two runs from the same noise
        return (self._run(settings, notes, sample(self.bundle, cond, settings, should_stop=should_stop)),
                self._run(settings, notes, sample(self.bundle, replace(cond, cond=edited), settings,
                                                  should_stop=should_stop)))

    def mix_prompts(self, prompt_a: str, prompt_b: str, factor: float, negative_prompt: str, settings: Settings, *,
                    learned: text.Learned | None = None, should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Generate from factor x encoding(A) + (1 - factor) x encoding(B): the notebook's mix_factor weights the
        first prompt."""
        settings = self.check_mix(prompt_a, prompt_b, factor, negative_prompt, settings)
        a, notes = self.conditioning(prompt_a, negative_prompt, learned=learned, name="Prompt A", words=False)
        b, more = self.conditioning(prompt_b, negative_prompt, learned=learned, name="Prompt B", words=False)
        more += self.unknown_words((("Prompt A", prompt_a), ("Prompt B", prompt_b),
                                    ("The negative prompt", negative_prompt)), learned)
        mixed = replace(a, cond=factor * a.cond + (1 - factor) * b.cond)
        frames = sample(self.bundle, mixed, settings, should_stop=should_stop)
        return self._run(settings, notes + tuple(note for note in more if note not in notes), frames)

    def check_mix(self, prompt_a: str, prompt_b: str, factor: float, negative_prompt: str,
                  settings: Settings) -> Settings:
        """A mix's settings, checked with its prompts and factor."""
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"mix factor must be from 0 to 1, got {factor!r}")
        text.check_prompt(prompt_b, "prompt B")
        return self.check_txt2img(prompt_a, negative_prompt, settings)

    def check_sweep(self, prompt_a: str, prompt_b: str, negative_prompt: str, settings: Settings,
                    count: int) -> Settings:
        """A sweep's settings (final images only, a random seed drawn once for all of them), checked with its
        prompts and count."""
        if not 2 <= count <= MAX_SWEEP:
            raise ValueError(f"the sweep takes from 2 to {MAX_SWEEP} images, got {count!r}")
        return replace(self.check_mix(prompt_a, prompt_b, 1.0, negative_prompt, settings), preview_every=0)

    def prompt_sweep(self, prompt_a: str, prompt_b: str, negative_prompt: str, settings: Settings, count: int, *,
                     learned: text.Learned | None = None,
                     should_stop: Callable[[], bool] = lambda: False
                     ) -> Iterator[tuple[float, Image.Image, tuple[str, ...]]]:
        """The mix from A to B (factors from 1 down to 0) at `count` evenly spaced factors, same seed: (factor,
        image, what its run noted) as each finishes."""
        settings = self.check_sweep(prompt_a, prompt_b, negative_prompt, settings, count)
        for i in range(count):
            if should_stop():
                return
            factor = 1 - i / (count - 1)
            run = self.mix_prompts(prompt_a, prompt_b, factor, negative_prompt, settings, learned=learned,
                                   should_stop=should_stop)
            frames = list(run.frames)
            if len(frames) == settings.steps:
                yield factor, frames[-1].image, run.notes + tuple(frame.note for frame in frames if frame.note)

    def load_learned(self, path: str | Path) -> text.Learned:
        """Textual-inversion embeddings from a file, checked against this model's text encoder."""
        return text.load_learned(path, self.bundle.text_encoder.config.hidden_size)

    @staticmethod
    def learned_sizes(learned: text.Learned) -> dict[str, int]:
        """How many vectors each learned token has (the positions it takes in a prompt)."""
        return {name: len(vectors) for name, vectors in learned.items()}

    def example_embeddings(self) -> list[Path]:
        """Learned embeddings shipped with the model (its folder's `embeddings/`)."""
        return list(self.bundle.defaults.embeddings)

    def own_learned(self) -> text.Learned:
        """The learned tokens of every embedding shipped with the model, as one set."""
        learned: text.Learned = {}
        for path in self.example_embeddings():
            learned |= self.load_learned(path)
        return learned

    # --- images in: image to image, the VAE, the noise schedule ---

    def fit_image(self, source: str | Path | Image.Image) -> images.Fitted:
        """An uploaded image opened and fitted to the model: native size on the shorter side, sides a
        multiple of the VAE factor."""
        return images.fit_to(self.bundle, source)

    def img2img_plan(self, strength: float, steps: int, scheduler: str, lms_order: str = "run") -> Plan:
        """Which steps a strength skips, as diffusers' img2img counts them."""
        if not 0.0 <= strength <= 1.0:  # also false for NaN
            raise ValueError(f"strength must be from 0 to 1, got {strength!r}")
        if lms_order not in schedule.LMS_ORDERS:
            raise ValueError(f"lms_order must be one of {', '.join(schedule.LMS_ORDERS)}, got {lms_order!r}")
        check_settings(self.bundle, replace(self.default_settings(), steps=steps, scheduler=scheduler, preview_every=0))
        first = steps - int(steps * strength)
        table = schedule.table(self.bundle.scheduler_config, scheduler, steps)
        if first == steps:
            return Plan(strength, steps, first, None, None)
        mid_lms = scheduler == "lms" and first > 0
        return Plan(strength, steps, first, table.timesteps[first], table.sigmas[first], lms_order if mid_lms else None)

    def img2img(self, prompt: str, negative_prompt: str, image: str | Path | Image.Image, strength: float,
                settings: Settings, *, lms_order: str = "run", should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Image to image: the image's latents noised to the step `strength` asks for, denoised from there
        (`lms_order`: how LMS counts its order from there, a key of schedule.LMS_ORDERS)."""
        # 1. check the inputs; fit the image to the model; the run takes the image's size
        fitted = self.fit_image(image)
        width, height = fitted.image.size
        settings = self.check_txt2img(prompt, negative_prompt, replace(settings, width=width, height=height))
        plan = self.img2img_plan(strength, settings.steps, settings.scheduler, lms_order)
        # 2. encode the prompts and the image
        cond, notes = self.conditioning(prompt, negative_prompt)
        clean = vae.image_latents(self.bundle, fitted.image)
        # 3. sample the rest of the schedule from the image noised to its first step (strength 1: from pure noise,
        # as text to image does); the loop's starting latents are decoded for the page
        if plan.first == settings.steps:  # strength 0: the result is the VAE's round trip
            begin, frames = clean, iter(())
        else:
            start = Start(clean, plan.first, lms_order) if plan.first else None
            frames = sample(self.bundle, cond, settings, start=start, should_stop=should_stop)
            begin = frames.start
        with torch.no_grad():
            begin_image = vae.to_pil(vae.decode(self.bundle, begin))[0]
        begin_image = screened_pictures([begin_image], self.safety)[0]  # at strength 0, the result too
        source = Source(fitted.image, fitted.note, begin_image, plan)
        return self._run(settings, notes, frames, source)
