"""The engine: the experiments the app offers, each a short recipe that feeds the one sampling loop.

It holds the loaded model bundle and nothing per user: every call builds its own run (scheduler,
generator, stop flag belong to the call), so many users can share one engine.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core import attention, compare
from core import guidance as loss_guidance
from core import images, schedule, text, vae
from core.guidance import Guidance
from core.models import ModelBundle
from core.sampler import (MAX_SEED, Conditioning, Frame, RunFailed, Settings, Start, check_settings, initial_noise,
                          sample, start_latents)

RANDOM_SEED = -1  # asks the engine to pick a seed; the run reports the one it used
MAX_CHANNEL_SCALE = 5.0  # the VAE tab may multiply a latent channel by -5 .. 5
DIFFERENCE_GAIN = 4  # the VAE's error map is |input - reconstruction| times this
NOISE_ROW = 6  # noised images in the schedule tab's row
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

    def describe(self) -> str:
        head = f"strength {self.strength:g} with {self.steps} steps: "
        if self.first == self.steps:
            return head + "no step runs; the result is the image through the VAE and back"
        if self.first == 0:
            return head + f"all {self.steps} steps from pure noise; the image is ignored"
        return head + (f"skip the first {self.first} steps, start at timestep {self.timestep:.0f}, "
                       f"sigma {self.sigma:.2f} ({self.steps - self.first} steps run)")


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


@dataclass(frozen=True)
class VaeView:
    """An image through the VAE and back."""

    image: Image.Image             # the input as the VAE takes it
    note: str                      # what was done to the upload
    channels: list[tuple[Image.Image, float, float]]  # each latent channel in grayscale, with its min and max
    reconstruction: Image.Image
    difference: Image.Image        # |input - reconstruction| per pixel, times DIFFERENCE_GAIN
    psnr: float                    # dB
    compression: str               # "512x512x3 -> 64x64x4: 48x fewer numbers"
    edited: Image.Image | None     # decoded with one channel scaled, when asked


@dataclass(frozen=True)
class TokenView:
    """A prompt's tokens as the text encoder reads them."""

    rows: list[tuple[int, int | None, str, float, float]]  # position, id (None: learned), token, |token emb|, |pos emb|
    padding: int                   # end-of-text tokens that pad the rest of the 77
    truncated: str                 # what CLIP cuts off
    token_heat: Image.Image        # the token embeddings, a row per token (blue negative, red positive)
    position_heat: Image.Image     # the position embeddings of the same positions
    max_diff: float                # |our encoder path - text_encoder(ids)|, max: 0 when they agree
    max_diff_without_mask: float   # the same without the causal mask: what the mask changes


def heat_image(matrix: torch.Tensor, cell: int = 4) -> Image.Image:
    """A (rows, columns) matrix as a picture: blue below zero, white at zero, red above; `cell` px a value."""
    values = matrix.detach().float().cpu()
    values = (values / values.abs().max().clamp_min(1e-8)).numpy()       # in [-1, 1]
    red = np.where(values > 0, 1.0, 1 + values)
    blue = np.where(values < 0, 1.0, 1 - values)
    green = 1 - np.abs(values)
    rgb = (np.stack([red, green, blue], -1) * 255).round().astype(np.uint8)  # (rows, columns, 3)
    image = Image.fromarray(rgb)
    return image.resize((image.width * cell, image.height * cell), Image.Resampling.NEAREST)


@dataclass(frozen=True)
class NoiseRow:
    """An image noised to chosen steps of a schedule: (index, timestep, sigma, noised latents decoded)."""

    image: Image.Image
    note: str
    chosen: tuple[int, float, float, Image.Image]
    row: list[tuple[int, float, float, Image.Image]]


class Engine:
    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        vae.preview_map(bundle)  # fit the fast preview decoder now, not in the first user's run
        self.empty_encoding = text.encode(bundle, text.tokenize(bundle, ""))  # every prompt without a negative
        check_settings(bundle, self.default_settings())  # the folder's recommendations must be runnable here
        loss_guidance.check_guidance(self.default_guidance(), self.default_settings().scheduler)

    def default_settings(self) -> Settings:
        """Settings for this model: its native size, and any defaults its folder recommends."""
        size = self.bundle.native_size
        return replace(Settings(height=size, width=size), **self.bundle.defaults.settings)

    def setting_note(self, name: str) -> str | None:
        """What this model's folder says about one of its settings (e.g. where its guidance scale breaks)."""
        return self.bundle.defaults.notes.get(name)

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
        if settings.seed == RANDOM_SEED:
            settings = replace(settings, seed=random.randint(0, MAX_SEED))
        check_settings(self.bundle, settings)
        return settings

    def txt2img(self, prompt: str, negative_prompt: str, settings: Settings,
                should_stop: Callable[[], bool] = lambda: False, learned: text.Learned | None = None) -> Run:
        """Text to image: encode the prompt and the negative prompt (with any `learned` tokens they use), then
        denoise from pure noise."""
        # 1. check the inputs; draw a seed if asked to
        settings = self.check_txt2img(prompt, negative_prompt, settings)
        # 2. encode the prompts, noting what CLIP cuts off
        cond, notes = self.conditioning(prompt, negative_prompt, learned)
        # 3. sample
        frames = sample(self.bundle, cond, settings, should_stop=should_stop)
        return Run(settings, notes, guarded(frames, settings, self.bundle.device))

    # --- inside a step, and runs compared ---

    def cfg_parts(self, frame: Frame) -> compare.CfgParts:
        """A guided step taken apart: the unconditional, text and guided x0 and the noise prediction, decoded."""
        with torch.no_grad():
            return compare.cfg_parts(self.bundle, frame)

    @staticmethod
    def x0_movement(previous: Frame | None, frame: Frame) -> float:
        return compare.x0_movement(previous, frame)

    def compare_runs(self, prompt: str, negative_prompt: str, settings: Settings, changes: list[dict],
                     should_stop: Callable[[], bool] = lambda: False) -> list[Run]:
        """The prompt run once per change of the settings (a guidance scale, a sampler and its steps, a seed):
        each run is exactly the text-to-image run with the settings so changed, from the same seed unless the
        change is the seed."""
        if not 1 <= len(changes) <= compare.MAX_ENTRIES:
            raise ValueError(f"a comparison takes from 1 to {compare.MAX_ENTRIES} entries, got {len(changes)}")
        settings = self.check_txt2img(prompt, negative_prompt, settings)
        changed = [self.check_txt2img(prompt, negative_prompt, replace(settings, **change)) for change in changes]
        return [self.txt2img(prompt, negative_prompt, each, should_stop) for each in changed]

    @staticmethod
    def parse_scales(text: str) -> list[dict]:
        scales = compare.parse_list(text, "scales", float, "a number", "1,3,7.5")
        return [{"guidance_scale": scale} for scale in scales]

    @staticmethod
    def parse_seeds(text: str) -> list[dict]:
        return [{"seed": seed} for seed in compare.parse_list(text, "seeds", int, "a whole number", "1,2,3,4")]

    @staticmethod
    def parse_samplers(text: str) -> list[dict]:
        """"lms, euler:15" -> each sampler, with its own step count where one follows a colon."""
        def sampler(entry: str) -> dict:
            name, _, steps = (part.strip() for part in entry.partition(":"))
            if name not in schedule.SCHEDULERS:
                raise ValueError(name)
            return {"scheduler": name, **({"steps": int(steps)} if steps else {})}
        return compare.parse_list(text, "samplers", sampler,
                                  f"one of {', '.join(schedule.SCHEDULERS)}, with an optional step count",
                                  "lms,euler:15,ddim")

    def guided(self, prompt: str, negative_prompt: str, settings: Settings, guidance: Guidance,
               should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Text to image steered by a loss on the decoded predicted x0, applied every `guidance.every` steps."""
        # 1. check the inputs; draw a seed if asked to
        settings = self.check_guided(prompt, negative_prompt, settings, guidance)
        # 2. encode the prompts
        cond, notes = self.conditioning(prompt, negative_prompt)
        # 3. sample with the guidance hook
        frames = sample(self.bundle, cond, settings, hooks=[loss_guidance.hook(self.bundle, guidance)],
                        should_stop=should_stop)
        return Run(settings, notes, guarded(frames, settings, self.bundle.device))

    def attention(self, prompt: str, negative_prompt: str, settings: Settings,
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
        return Run(settings, notes, guarded(frames, settings, self.bundle.device))

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
        loss_guidance.check_guidance(guidance, settings.scheduler)
        return settings

    def conditioning(self, prompt: str, negative_prompt: str,
                     learned: text.Learned | None = None) -> tuple[Conditioning, tuple[str, ...]]:
        """Both prompts encoded (with any learned tokens they use), and a note for each one longer than CLIP
        reads."""
        tokens = text.tokenize(self.bundle, prompt, learned)
        negative = text.tokenize(self.bundle, negative_prompt, learned)
        uncond = self.empty_encoding if negative_prompt == "" else text.encode(self.bundle, negative, learned)
        notes = tuple(
            f"{what} is longer than CLIP's {self.bundle.max_length} tokens; ignored: “{t.truncated}”"
            for what, t in (("The prompt", tokens), ("The negative prompt", negative)) if t.truncated
        )
        return Conditioning(text.encode(self.bundle, tokens, learned), uncond), notes

    # --- the text lab: tokens, embeddings and their edits ---

    @torch.no_grad()
    def token_view(self, prompt: str, learned: text.Learned | None = None) -> TokenView:
        """A prompt's tokens with their embeddings, and the proof that token + position embeddings through the
        encoder (with its causal mask) and the final layer norm give the text encoder's output."""
        bundle = self.bundle
        tokens = text.tokenize(bundle, prompt, learned)
        ids = tokens.input_ids[0].tolist()
        embeds = text.with_learned(bundle, tokens, learned or {})          # (1, 77, hidden)
        positions = text.position_embeddings(bundle)                      # (1, 77, hidden)
        learned_at = {position for position, _, _ in tokens.learned}
        rows = [(i, None if i in learned_at else ids[i], tokens.names[i], embeds[0, i].norm().item(),
                 positions[0, i].norm().item()) for i in range(tokens.length)]
        plain = text.tokenize(bundle, prompt) if learned_at else tokens  # the encoder's own path takes ids only
        reference = bundle.text_encoder(plain.input_ids.to(bundle.device))[0]
        ours = text.encode_embeddings(bundle, text.token_embeddings(bundle, plain.input_ids))
        open_ = text.encode_embeddings(bundle, text.token_embeddings(bundle, plain.input_ids), causal=False)
        shown = slice(0, tokens.length)
        return TokenView(rows, bundle.max_length - tokens.length, tokens.truncated,
                         heat_image(embeds[0, shown]), heat_image(positions[0, shown]),
                         (ours - reference).abs().max().item(), (open_ - reference).abs().max().item())

    def token_id(self, word: str) -> int:
        """The vocabulary id of a word that is one token, or of an id written as a number."""
        return text.token_id(self.bundle, word)

    def position_of(self, prompt: str, token: str, learned: text.Learned | None = None) -> int:
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
                   parts: list[tuple[str, float]], learned: text.Learned | None = None,
                   should_stop: Callable[[], bool] = lambda: False) -> tuple[Run, Run]:
        """The prompt as it is, and with the token embedding at `position` replaced by a weighted blend of
        words' token embeddings (or of learned tokens' first vectors): two runs of the same seed, to be shown
        side by side."""
        # 1. check the inputs; draw a seed if asked to; each word must be one token
        settings = self.check_txt2img(prompt, negative_prompt, settings)
        learned = learned or {}
        ingredients = [(learned[part][0] if part in learned else self.token_id(part), weight) for part, weight in parts]
        # 2. encode: the prompt as it is, and with the blend at the position
        cond, notes = self.conditioning(prompt, negative_prompt, learned)
        tokens = text.tokenize(self.bundle, prompt, learned)
        with torch.no_grad():
            edited = text.encode_embeddings(self.bundle, text.blend_at(self.bundle, tokens, learned, position,
                                                                       ingredients))
        # 3. two runs from the same noise
        return (Run(settings, notes, guarded(sample(self.bundle, cond, settings, should_stop=should_stop),
                                             settings, self.bundle.device)),
                Run(settings, notes, guarded(sample(self.bundle, replace(cond, cond=edited), settings,
                                                    should_stop=should_stop), settings, self.bundle.device)))

    def mix_prompts(self, prompt_a: str, prompt_b: str, factor: float, negative_prompt: str, settings: Settings,
                    learned: text.Learned | None = None, should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Generate from (1 - factor) x encoding(A) + factor x encoding(B)."""
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"mix factor must be from 0 to 1, got {factor!r}")
        settings = self.check_txt2img(prompt_a, negative_prompt, settings)
        text.check_prompt(prompt_b, "second prompt")
        a, notes = self.conditioning(prompt_a, negative_prompt, learned)
        b, more = self.conditioning(prompt_b, negative_prompt, learned)
        mixed = replace(a, cond=(1 - factor) * a.cond + factor * b.cond)
        frames = sample(self.bundle, mixed, settings, should_stop=should_stop)
        return Run(settings, notes + more, guarded(frames, settings, self.bundle.device))

    def prompt_sweep(self, prompt_a: str, prompt_b: str, negative_prompt: str, settings: Settings, count: int,
                     learned: text.Learned | None = None,
                     should_stop: Callable[[], bool] = lambda: False) -> Iterator[tuple[float, Image.Image]]:
        """The mix at `count` factors from 0 to 1, same seed: (factor, image) as each finishes."""
        if not 2 <= count <= MAX_SWEEP:
            raise ValueError(f"the sweep takes from 2 to {MAX_SWEEP} images, got {count!r}")
        settings = replace(self.check_txt2img(prompt_a, negative_prompt, settings), preview_every=0)
        for i in range(count):
            if should_stop():
                return
            factor = i / (count - 1)
            run = self.mix_prompts(prompt_a, prompt_b, factor, negative_prompt, settings, learned, should_stop)
            frames = list(run.frames)
            if len(frames) == settings.steps:
                yield factor, frames[-1].image

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

    # --- images in: image to image, the VAE, the noise schedule ---

    def fit_image(self, source: str | Path | Image.Image) -> images.Fitted:
        """An uploaded image opened and fitted to the model: native size on the shorter side, sides a
        multiple of the VAE factor."""
        bundle = self.bundle
        return images.fit(images.open_image(source), bundle.native_size, bundle.max_side, bundle.vae_scale_factor)

    @torch.no_grad()
    def image_latents(self, image: Image.Image) -> torch.Tensor:
        return vae.encode(self.bundle, vae.from_pil(image))

    def img2img_plan(self, strength: float, steps: int, scheduler: str) -> Plan:
        """Which steps a strength skips, as diffusers' img2img counts them."""
        if not 0.0 <= strength <= 1.0:  # also false for NaN
            raise ValueError(f"strength must be from 0 to 1, got {strength!r}")
        check_settings(self.bundle, replace(self.default_settings(), steps=steps, scheduler=scheduler, preview_every=0))
        first = steps - int(steps * strength)
        table = schedule.table(self.bundle.scheduler_config, scheduler, steps)
        if first == steps:
            return Plan(strength, steps, first, None, None)
        return Plan(strength, steps, first, table.timesteps[first], table.sigmas[first])

    def img2img(self, prompt: str, negative_prompt: str, image: str | Path | Image.Image, strength: float,
                settings: Settings, should_stop: Callable[[], bool] = lambda: False) -> Run:
        """Image to image: the image's latents noised to the step `strength` asks for, denoised from there."""
        # 1. check the inputs; fit the image to the model; the run takes the image's size
        fitted = self.fit_image(image)
        width, height = fitted.image.size
        settings = self.check_txt2img(prompt, negative_prompt, replace(settings, width=width, height=height))
        plan = self.img2img_plan(strength, settings.steps, settings.scheduler)
        # 2. encode the prompts and the image
        cond, notes = self.conditioning(prompt, negative_prompt)
        clean = self.image_latents(fitted.image)
        # 3. the starting latents, decoded for the page; strength 1 starts from pure noise, as text to image does
        if plan.first == settings.steps:  # strength 0: the result is the VAE's round trip
            begin, frames = clean, iter(())
        else:
            start = Start(clean, plan.first) if plan.first else None
            scheduler = schedule.make_scheduler(self.bundle.scheduler_config, settings.scheduler, settings.steps,
                                                self.bundle.device, plan.first)
            begin = start_latents(self.bundle, settings, scheduler, start)
            # 4. sample the rest of the schedule
            frames = sample(self.bundle, cond, settings, start=start, should_stop=should_stop)
        with torch.no_grad():
            begin_image = vae.to_pil(vae.decode(self.bundle, begin))[0]
        source = Source(fitted.image, fitted.note, begin_image, plan)
        return Run(settings, notes, guarded(frames, settings, self.bundle.device), source)

    @torch.no_grad()
    def vae_view(self, image: str | Path | Image.Image, channel: int | None = None, scale: float = 0.0) -> VaeView:
        """An image through the VAE: its latent channels, the reconstruction, the error; optionally the latents
        decoded again with one channel multiplied by `scale` (0 removes it)."""
        channels = self.bundle.latent_channels
        if channel is not None and not 0 <= channel < channels:
            raise ValueError(f"channel must be from 0 to {channels - 1}, got {channel!r}")
        if not -MAX_CHANNEL_SCALE <= scale <= MAX_CHANNEL_SCALE:
            raise ValueError(f"scale must be from {-MAX_CHANNEL_SCALE:g} to {MAX_CHANNEL_SCALE:g}, got {scale!r}")
        # 1. fit and encode
        fitted = self.fit_image(image)
        pixels = vae.from_pil(fitted.image)                  # (1, 3, H, W)
        lat = self.image_latents(fitted.image)                   # (1, 4, H/8, W/8)
        # 2. decode, and decode again with one channel changed
        batch = [lat]
        if channel is not None:
            edited = lat.clone()
            edited[:, channel] *= scale
            batch.append(edited)
        decoded = vae.decode(self.bundle, torch.cat(batch)).float().cpu()  # (1 or 2, 3, H, W)
        recon, *edit = vae.to_pil(decoded)
        error = ((decoded[:1] - pixels).abs().mean(1, keepdim=True) * DIFFERENCE_GAIN).clamp(0, 1)  # (1, 1, H, W)
        difference = vae.to_pil(error.expand(-1, 3, -1, -1))[0]
        (_, _, height, width), (_, c, h, w) = pixels.shape, lat.shape
        ratio = (3 * height * width) / (c * h * w)
        about = f"{width}x{height}x3 -> {w}x{h}x{c}: {ratio:g}x fewer numbers"
        return VaeView(fitted.image, fitted.note, vae.channel_images(lat), recon, difference,
                       vae.psnr(decoded[:1], pixels), about, edit[0] if edit else None)

    def schedule_table(self, steps: int, scheduler: str) -> schedule.Table:
        check_settings(self.bundle, replace(self.default_settings(), steps=steps, scheduler=scheduler, preview_every=0))
        return schedule.table(self.bundle.scheduler_config, scheduler, steps)

    @torch.no_grad()
    def noise_row(self, image: str | Path | Image.Image, steps: int, scheduler: str, index: int, seed: int,
                  count: int = NOISE_ROW) -> NoiseRow:
        """The image noised with add_noise to step `index`, and to `count` steps spread over the schedule
        (the same noise each time, so only its level changes), each decoded."""
        # 1. check the inputs; fit the image
        if not isinstance(index, int) or not 0 <= index < steps:
            raise ValueError(f"step must be from 0 to {steps - 1} (steps - 1), got {index!r}")
        fitted = self.fit_image(image)
        width, height = fitted.image.size
        settings = replace(self.default_settings(), steps=steps, scheduler=scheduler, seed=seed,
                           width=width, height=height, preview_every=0)
        check_settings(self.bundle, settings)
        # 2. one draw of noise, added at each step's level
        clean = self.image_latents(fitted.image)
        noise = initial_noise(self.bundle, settings)
        row = sorted({round(i * (steps - 1) / max(count - 1, 1)) for i in range(count)})
        noised = []
        for i in [index, *row]:
            sched = schedule.make_scheduler(self.bundle.scheduler_config, scheduler, steps, self.bundle.device)
            noised.append(schedule.add_noise(sched, clean, noise, i))
        # 3. decode them all at once
        pictures = vae.to_pil(vae.decode(self.bundle, torch.cat(noised)))
        table = schedule.table(self.bundle.scheduler_config, scheduler, steps)
        shown = [(i, table.timesteps[i], table.sigmas[i], picture) for i, picture in zip([index, *row], pictures)]
        return NoiseRow(fitted.image, fitted.note, shown[0], shown[1:])
