"""Where each word lands: the UNet's cross-attention maps per prompt token, recorded while a run samples.

Every cross-attention layer of the UNet turns each latent position's query into softmax weights over the 77
text positions. `Recorder` is an observer of the one sampling loop (`core.sampler.sample(observers=...)`):
for the run it wraps the UNet's attention processors in taps that compute exactly what the processors they
wrap compute, and, around the loop's UNet call on each step, reads the weights of the text-conditioned half of
the batch. As DAAM does, each layer's weights are averaged over its heads, upsampled to the image size and
summed over layers; the sum is kept on the fly (per resolution within a step, since upsampling is linear) and
handed to the step's Frame as `StepMaps`, never stored per layer.

A step's maps have one entry per prompt token (the start token, each word piece, the end token) and one for
the end-token padding summed; divided by the number of layers, the entries at every pixel sum to 1.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.models import ModelBundle
from core.sampler import Settings

PLACES = ("down", "mid", "up")  # the parts of the UNet a map may draw on
# What the Attention tab sums at first: the up blocks, which turn the words into the image. On the toy their maps
# cover the shape (the shape word's hottest pixels overlap it by IoU >= 0.5 in 16 of 18 runs, against 10 of 18
# with the down and mid blocks added).
DEFAULT_PLACES = ("up",)
# The heat palette (inferno's anchors, cold to hot): weak attention dark, strong attention bright.
HEAT = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float64)
HEAT_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(HEAT)), HEAT[:, c])
                     for c in range(3)], axis=1).round().astype(np.uint8)  # (256, 3): gray level -> RGB


@dataclass(frozen=True)
class Layers:
    """Which cross-attention layers a map is summed over."""

    places: tuple[str, ...] = PLACES    # parts of the UNet: any of PLACES
    cells: tuple[int, ...] | None = None  # image pixels per map cell (SD: 8, 16, 32, 64); None: every one


@dataclass(frozen=True)
class Layer:
    """One cross-attention layer of the UNet."""

    name: str                      # its processor's key in `unet.attn_processors`
    place: str                     # one of PLACES
    depth: int                     # how often the latents were halved before it
    cell: int                      # image pixels per map cell: the VAE factor x 2 ** depth


def cross_attention_layers(bundle: ModelBundle) -> list[Layer]:
    """The UNet's cross-attention layers, in the order `unet.attn_processors` lists them."""
    unet, deepest = bundle.unet, len(bundle.unet.config.block_out_channels) - 1
    layers = []
    for name in unet.attn_processors:
        if not unet.get_submodule(name.removesuffix(".processor")).is_cross_attention:
            continue
        block, _, rest = name.partition(".")
        index = int(rest.split(".")[0]) if block != "mid_block" else None
        place, depth = {"down_blocks": ("down", index), "mid_block": ("mid", deepest),
                        "up_blocks": ("up", deepest - (index or 0))}[block]
        layers.append(Layer(name, place, depth, bundle.vae_scale_factor * 2**depth))
    return layers


def check_layers(bundle: ModelBundle, layers: Layers) -> list[Layer]:
    """The layers a choice selects; ValueError naming the bad choice and what this model has."""
    available = cross_attention_layers(bundle)
    cells = sorted({layer.cell for layer in available})
    if not layers.places or not set(layers.places) <= set(PLACES):
        raise ValueError(f"UNet parts must be one or more of {', '.join(PLACES)}, got {list(layers.places)!r}")
    wanted = cells if layers.cells is None else layers.cells
    if not wanted or not set(wanted) <= set(cells):
        raise ValueError(f"cells must be one or more of {', '.join(map(str, cells))} (image pixels per map cell in "
                         f"this model's cross-attention layers), got {list(wanted)!r}")
    chosen = [layer for layer in available if layer.place in layers.places and layer.cell in wanted]
    if not chosen:
        kinds = sorted({(PLACES.index(layer.place), layer.cell) for layer in available})
        have = ", ".join(f"{PLACES[place]} at {cell} px" for place, cell in kinds)
        raise ValueError(f"no cross-attention layer is in {'/'.join(layers.places)} at "
                         f"{'/'.join(map(str, wanted))} px cells; this model has: {have}")
    return chosen


def entries(names: Sequence[str], length: int) -> tuple[str, ...]:
    """What a prompt's maps are of: the token at each of its `length` positions from the start token to the end
    token, as the tokenizer shows them (`names`: every position of the encoder's input), then the padding
    after them as one entry."""
    padding = len(names) - length
    return tuple(names[:length]) + ((f"padding x{padding}",) if padding else ())


END_OF_WORD = "</w>"  # how the tokenizer marks a word's last token
ARTICLES = ("a</w>", "an</w>", "the</w>")


def word_positions(tokens: Sequence[str]) -> list[int]:
    """The positions of a prompt's words among its map entries: not the start and end tokens, not the padding."""
    return [i for i, name in enumerate(tokens) if not name.startswith(("<|", "padding x"))]


def first_word(tokens: Sequence[str]) -> int:
    """The position of the first word among a prompt's map entries that is not an article ("a red circle" -> 2,
    red), the first entry after the start token when there is none."""
    return next((i for i in word_positions(tokens) if tokens[i] not in ARTICLES), 1)


def check_entry(tokens: Sequence[str], position: int) -> int:
    """A position among a prompt's map entries; ValueError naming the bad one and what this prompt has."""
    if not isinstance(position, int) or not 0 <= position < len(tokens):
        maps = ", ".join(f"{i} {name.removesuffix(END_OF_WORD)}" for i, name in enumerate(tokens))
        raise ValueError(f"token must be a position from 0 to {len(tokens) - 1} (this prompt's maps: {maps}), "
                         f"got {position!r}")
    return position


def grid(height: int, width: int, depth: int) -> tuple[int, int]:
    """The latent grid after `depth` halvings, rounding up as the UNet's stride-2 convolutions do."""
    for _ in range(depth):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


@dataclass(frozen=True)
class StepMaps:
    """One step's cross-attention maps, one entry per prompt token and one for the padding."""

    tokens: tuple[str, ...]        # each entry's token as the tokenizer shows it; the last may be the padding
    maps: torch.Tensor             # (entries, H, W) at the image size; at each pixel the entries sum to 1
    mass: tuple[float, ...]        # each entry's share of the step's attention (its map's mean); sums to 1
    images: tuple[Image.Image, ...]  # each map in grayscale, scaled on its own from its min to its max
    ranges: tuple[tuple[float, float], ...]  # each map's (min, max): the values its image shows as 0 and 255


def gray_images(maps: torch.Tensor) -> tuple[Image.Image, ...]:
    """(entries, H, W) -> one grayscale image per entry, each stretched from its own min (0) to max (255)."""
    low = maps.amin((1, 2), keepdim=True)
    span = (maps.amax((1, 2), keepdim=True) - low).clamp_min(1e-12)
    levels = ((maps - low) / span * 255).round().to(torch.uint8).cpu().numpy()  # (entries, H, W)
    return tuple(Image.fromarray(level, mode="L") for level in levels)


def one_scale(ranges: Sequence[tuple[float, float]], tokens: Sequence[str]) -> float:
    """The value a step's maps on one scale show as white: the most any word takes at a pixel. The start and end
    tokens and the padding do not set it (the padding, many positions summed, takes the most, and in SD so may the
    start token: every word would be left dark); above it they clip to white. A prompt without words is scaled to
    its start and end tokens."""
    words = word_positions(tokens) or [k for k, name in enumerate(tokens) if name.startswith("<|")]
    return max(ranges[k][1] for k in words)


def on_scale(image: Image.Image, value_range: tuple[float, float], top: float) -> Image.Image:
    """A grayscale map stretched on its own (its 0-255 showing `value_range`) redrawn with black 0 and white `top`."""
    low, high = value_range
    values = low + np.asarray(image.convert("L"), dtype=np.float64) / 255 * (high - low)
    return Image.fromarray(np.clip(values / top * 255, 0, 255).round().astype(np.uint8), mode="L")


def on_one_scale(images: Sequence[Image.Image], ranges: Sequence[tuple[float, float]],
                 tokens: Sequence[str]) -> tuple[Image.Image, ...]:
    """A step's grayscale maps, each stretched on its own (`images`, showing `ranges`), redrawn on one scale
    (`one_scale`): black is no attention, white the most any word takes at a pixel. Each map on its own shows where
    its token lands, even one that takes next to nothing; on one scale they show how much each takes."""
    top = one_scale(ranges, tokens)
    return tuple(on_scale(image, value_range, top) for image, value_range in zip(images, ranges))


def check_opacity(opacity: float) -> float:
    if not 0.0 <= opacity <= 1.0:  # also false for NaN
        raise ValueError(f"opacity must be from 0 to 1, got {opacity!r}")
    return opacity


def overlay(picture: Image.Image | None, heat: Image.Image, opacity: float) -> Image.Image:
    """A grayscale map in the heat palette laid over `picture` (resized to the map) at `opacity`; the map
    alone when there is no picture yet."""
    check_opacity(opacity)
    colored = Image.fromarray(HEAT_LUT[np.asarray(heat.convert("L"))])
    if picture is None:
        return colored
    return Image.blend(picture.convert("RGB").resize(heat.size, Image.Resampling.BILINEAR), colored, opacity)


class _Tap:
    """An attention processor that returns exactly what the processor it wraps returns, and shows the
    attention weights to the recorder watching this thread's UNet call, if there is one."""

    def __init__(self, inner, layer: Layer):
        self.inner, self.layer = inner, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        watch = _WATCHING.get()
        if watch is not None:
            recorder, cond_index = watch
            recorder.see(self.layer, attn, hidden_states[cond_index : cond_index + 1],
                         encoder_hidden_states[cond_index : cond_index + 1])
        return out


_WATCHING: ContextVar[tuple[Recorder, int] | None] = ContextVar("sdlens_attention_watch", default=None)
_install_lock = threading.Lock()
_users: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # UNet -> runs now using its taps


@contextmanager
def tapped(bundle: ModelBundle) -> Iterator[None]:
    """The UNet's cross-attention processors wrapped in taps while entered; the processors that were there come
    back on leaving, also when the run fails or is stopped. Concurrent runs on one UNet share its taps, and a
    tap reports only to the recorder of the thread that called the UNet."""
    unet = bundle.unet
    with _install_lock:
        if not _users.get(unet):
            layers = {layer.name: layer for layer in cross_attention_layers(bundle)}
            unet.set_attn_processor({name: _Tap(processor, layers[name]) if name in layers else processor
                                     for name, processor in unet.attn_processors.items()})
        _users[unet] = _users.get(unet, 0) + 1
    try:
        yield
    finally:
        with _install_lock:
            _users[unet] -= 1
            if not _users[unet]:
                unet.set_attn_processor({name: processor.inner if isinstance(processor, _Tap) else processor
                                         for name, processor in unet.attn_processors.items()})


def _head_mean_weights(attn, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) of one sample, as the stock processor forms it, averaged over heads: (n, 77)."""
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query = attn.head_to_batch_dim(attn.to_q(hidden))                 # (heads, n, head_dim)
    key = attn.head_to_batch_dim(attn.to_k(context))                  # (heads, 77, head_dim)
    if attn.norm_q is not None:
        query, key = attn.norm_q(query), attn.norm_k(key)
    return attn.get_attention_scores(query, key).mean(0)              # (n, 77)


class Recorder:
    """An observer of the sampling loop: each step's cross-attention maps of the prompt's tokens, as `StepMaps`
    on the frame (`frame.observed["attention"]`)."""

    name = "attention"

    def __init__(self, names: Sequence[str], length: int, layers: Sequence[Layer]):
        """`names`: the token at each of the text encoder's positions as the tokenizer shows it; the first
        `length` (start token to end token) get a map each, the padding after them one map together;
        `layers`: the cross-attention layers to sum over."""
        self.length, self.names, self.tokens = length, {layer.name for layer in layers}, entries(names, length)
        self.size = self.latent_size = (0, 0)
        self._sums: dict[tuple[int, int], torch.Tensor] = {}  # layer grid -> summed weights (entries, h, w)
        self._count = 0

    @contextmanager
    def attached(self, bundle: ModelBundle, settings: Settings) -> Iterator[None]:
        """Taps on the UNet for the run; the image size the maps are upsampled to."""
        factor = bundle.vae_scale_factor
        self.size = (settings.height, settings.width)
        self.latent_size = (settings.height // factor, settings.width // factor)
        with tapped(bundle):
            yield

    @contextmanager
    def watching(self, cond_index: int) -> Iterator[None]:
        """Record the layers' weights for the batch's sample `cond_index` (the text-conditioned one) while
        this thread's UNet call runs."""
        token = _WATCHING.set((self, cond_index))
        try:
            yield
        finally:
            _WATCHING.reset(token)

    def see(self, layer: Layer, attn, hidden: torch.Tensor, context: torch.Tensor) -> None:
        if layer.name not in self.names:
            return
        weights = _head_mean_weights(attn, hidden[0:1], context[0:1])  # (n, 77)
        entries = weights[:, : self.length]
        if self.length < weights.shape[1]:  # the padding, summed as one entry
            entries = torch.cat([entries, weights[:, self.length :].sum(1, keepdim=True)], 1)
        h, w = grid(*self.latent_size, layer.depth)
        if h * w != weights.shape[0]:
            raise RuntimeError(f"{layer.name} attends over {weights.shape[0]} positions, not the {h}x{w} grid "
                               f"expected {layer.depth} halvings below {self.latent_size}")
        entries = entries.T.reshape(-1, h, w).float()  # (entries, h, w)
        self._sums[h, w] = self._sums[h, w] + entries if (h, w) in self._sums else entries
        self._count += 1

    def summary(self) -> StepMaps:
        """This step's maps at the image size (each resolution's sum upsampled once), then a fresh sum."""
        total = sum(F.interpolate(sums[None], size=self.size, mode="bilinear", align_corners=False)[0]
                    for sums in self._sums.values())
        maps = (total / self._count).cpu()                   # (entries, H, W)
        self._sums, self._count = {}, 0
        ranges = tuple(zip(maps.amin((1, 2)).tolist(), maps.amax((1, 2)).tolist()))
        return StepMaps(self.tokens, maps, tuple(maps.mean((1, 2)).tolist()), gray_images(maps), ranges)
