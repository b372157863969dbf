"""Cross-attention maps recorded through the one sampling loop: exact, removed after every kind of run,
normalised, aimed at the text-conditioned half of the batch, and meaningful on the trained toy model."""
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from core import attention, text
from core.engine import Engine
from core.models import load_bundle
from core.sampler import Conditioning, HookResult, Settings, sample
from core.sd_folder import TINY, build_random_sd
from core.toyworld.data import COLORS

SMALL = Settings(steps=4, guidance_scale=7.5, seed=3, height=64, width=64, preview_every=0)
PROMPT = "a red circle on a white background"


def conditioning(bundle, prompt=PROMPT):
    return Conditioning(text.encode(bundle, text.tokenize(bundle, prompt)),
                        text.encode(bundle, text.tokenize(bundle, "")))


def recorder(bundle, prompt=PROMPT, layers=attention.Layers()):
    tokens = text.tokenize(bundle, prompt)
    return attention.Recorder(tokens.names, tokens.length, attention.check_layers(bundle, layers))


def recorded(bundle, settings=SMALL, prompt=PROMPT, layers=attention.Layers(), **options):
    return list(sample(bundle, conditioning(bundle, prompt), settings,
                       observers=[recorder(bundle, prompt, layers)], **options))


def processors(bundle):
    return dict(bundle.unet.attn_processors)


@pytest.mark.parametrize("guidance_scale", [1.0, 7.5])  # the UNet batch is [cond], then [uncond, cond]
def test_recording_changes_nothing(tiny_bundle, guidance_scale):
    settings = replace(SMALL, guidance_scale=guidance_scale)
    plain = list(sample(tiny_bundle, conditioning(tiny_bundle), settings))
    watched = recorded(tiny_bundle, settings)
    assert all((a.latents - b.latents).abs().max().item() == 0 for a, b in zip(plain, watched))
    assert np.array_equal(np.asarray(plain[-1].image), np.asarray(watched[-1].image))
    assert all("attention" in frame.observed for frame in watched) and plain[-1].observed == {}


def test_the_toy_image_with_maps_equals_the_image_without(toy_engine):
    settings = replace(toy_engine.default_settings(), steps=8, seed=5)
    plain = list(toy_engine.txt2img(PROMPT, "", settings).frames)[-1]
    watched = list(toy_engine.attention(PROMPT, "", settings).frames)[-1]
    assert (plain.latents - watched.latents).abs().max().item() == 0.0
    assert np.array_equal(np.asarray(plain.image), np.asarray(watched.image))


def test_the_stock_processors_come_back_after_a_run(tiny_bundle):
    before = processors(tiny_bundle)
    frames = sample(tiny_bundle, conditioning(tiny_bundle), SMALL, observers=[recorder(tiny_bundle)])
    assert processors(tiny_bundle) == before  # nothing installed before the first step
    next(frames)
    assert any(isinstance(p, attention._Tap) for p in processors(tiny_bundle).values())
    list(frames)
    assert all(processors(tiny_bundle)[name] is p for name, p in before.items())


def failing_hook(state):
    if state.index == 1:
        raise RuntimeError("a hook broke")
    return HookResult(state.latents)


def test_the_stock_processors_come_back_after_a_failed_run(tiny_bundle, overlap):
    before = processors(tiny_bundle)
    with pytest.raises(RuntimeError, match="a hook broke"):
        recorded(tiny_bundle, hooks=[failing_hook])
    assert all(processors(tiny_bundle)[name] is p for name, p in before.items())


def test_the_stock_processors_come_back_after_a_stopped_or_abandoned_run(tiny_bundle, overlap):
    before = processors(tiny_bundle)
    asked = iter([False, False, True])
    # asked before steps 0, 1, 2; beside the next step, step 1 was made while Stop was pressed, and is dropped
    assert len(recorded(tiny_bundle, should_stop=lambda: next(asked))) == (1 if overlap else 2)
    assert all(processors(tiny_bundle)[name] is p for name, p in before.items())
    frames = sample(tiny_bundle, conditioning(tiny_bundle), SMALL, observers=[recorder(tiny_bundle)])
    next(frames)
    frames.close()  # a page closed mid-run: gradio drops the generator
    assert all(processors(tiny_bundle)[name] is p for name, p in before.items())


def test_two_runs_on_one_unet_each_see_their_own_calls(tiny_bundle):
    before = processors(tiny_bundle)
    alone = [recorded(tiny_bundle, prompt=prompt) for prompt in (PROMPT, "a blue star")]
    runs = [sample(tiny_bundle, conditioning(tiny_bundle, prompt), SMALL, observers=[recorder(tiny_bundle, prompt)])
            for prompt in (PROMPT, "a blue star")]
    together = [[next(run) for run in runs] for _ in range(SMALL.steps)]  # interleaved, step by step
    assert next(runs[0], None) is None  # the first run ends ...
    assert any(isinstance(p, attention._Tap) for p in processors(tiny_bundle).values())  # ... the second goes on
    assert next(runs[1], None) is None
    assert all(processors(tiny_bundle)[name] is p for name, p in before.items())
    for which, solo in enumerate(alone):
        for a, b in zip(solo, (step[which] for step in together)):
            assert torch.equal(a.observed["attention"].maps, b.observed["attention"].maps)


def test_maps_are_shares_of_each_pixels_attention(tiny_bundle):
    frames = recorded(tiny_bundle)
    step = frames[-1].observed["attention"]
    assert step.tokens == ("<|startoftext|>", "a</w>", "red</w>", "circle</w>", "on</w>", "a</w>", "white</w>",
                           "background</w>", "<|endoftext|>", "padding x68")
    assert step.maps.shape == (10, 64, 64)
    assert step.maps.min().item() >= 0
    assert torch.allclose(step.maps.sum(0), torch.ones(64, 64), atol=1e-5)  # the 77 positions' softmax, summed
    assert sum(step.mass) == pytest.approx(1.0, abs=1e-5)
    assert step.mass == pytest.approx(step.maps.mean((1, 2)).tolist())
    assert [image.size for image in step.images] == [(64, 64)] * 10 and {i.mode for i in step.images} == {"L"}
    assert all(image.getextrema() == (0, 255) for image in step.images)  # each scaled on its own
    assert not torch.equal(frames[0].observed["attention"].maps, step.maps)  # a summary per step


def test_on_one_scale_each_map_is_its_share_against_the_most_any_word_takes(tiny_bundle):
    """Redrawn from the images each stretched on its own: black 0, white the largest value among the words (not
    the start token or the padding, which clip), every map within one gray level of its exact values."""
    step = recorded(tiny_bundle)[-1].observed["attention"]
    assert np.allclose(step.ranges, [(m.min().item(), m.max().item()) for m in step.maps])
    redrawn = attention.on_one_scale(step.images, step.ranges, step.tokens)
    top = step.maps[1:-2].max()  # the words, "a" to "background"
    exact = (step.maps / top * 255).clamp(0, 255)
    levels = torch.from_numpy(np.stack([np.asarray(image) for image in redrawn])).float()
    assert (levels - exact).abs().max().item() <= 1.0
    assert max(image.getextrema()[1] for image in redrawn[1:-2]) == 255
    assert redrawn[-1].getextrema() == (255, 255)  # the padding takes more than any word everywhere


def test_a_prompt_without_words_is_scaled_to_its_start_and_end_tokens(tiny_bundle):
    step = recorded(tiny_bundle, prompt="")[-1].observed["attention"]
    assert step.tokens[:2] == ("<|startoftext|>", "<|endoftext|>")
    redrawn = attention.on_one_scale(step.images, step.ranges, step.tokens)
    assert max(image.getextrema()[1] for image in redrawn[:2]) == 255


def test_the_maps_are_the_text_conditioned_half_of_the_batch(tiny_bundle):
    """At the first step both runs give the UNet the same x_t: with CFG the maps must be those of the
    prompt's half of the [uncond, cond] batch, as a run without CFG (batch [cond]) records them."""
    with_cfg = recorded(tiny_bundle, SMALL)[0].observed["attention"].maps
    cond_only = recorded(tiny_bundle, replace(SMALL, guidance_scale=1.0))[0].observed["attention"].maps
    empty_prompt = recorded(tiny_bundle, replace(SMALL, guidance_scale=1.0), prompt="")[0].observed["attention"]
    assert torch.allclose(with_cfg, cond_only, atol=1e-5)
    assert not torch.allclose(with_cfg[0], empty_prompt.maps[0], atol=1e-3)


def test_any_image_size_maps_to_the_image(tiny_bundle):
    """72 px is 9 latent cells: the UNet's attention grid rounds up (5), the maps still cover the image."""
    step = recorded(tiny_bundle, replace(SMALL, height=72, width=64))[-1].observed["attention"]
    assert step.maps.shape == (10, 72, 64) and step.images[0].size == (64, 72)
    assert torch.allclose(step.maps.sum(0), torch.ones(72, 64), atol=1e-5)


@pytest.fixture(scope="module")
def sd_levels_bundle(tmp_path_factory):
    """SD v1's UNet levels (cross-attention on all but the deepest, the mid block at the deepest) at tiny widths:
    maps at four resolutions, as SD's 64/32/16/8 at 512 px."""
    shape = replace(TINY, unet_channels=(32, 32, 32, 32), unet_attention=(True, True, True, False))
    return load_bundle(str(build_random_sd(tmp_path_factory.mktemp("sd-levels"), shape)), device="cpu",
                       dtype="float32")


@pytest.mark.parametrize("height, width, deepest", [(64, 64, (1, 1)), (80, 64, (2, 1))])  # 80 px: 10, 5, 3, 2 cells
def test_maps_from_four_resolutions_cover_the_image(sd_levels_bundle, height, width, deepest):
    layers = attention.cross_attention_layers(sd_levels_bundle)
    assert sorted({(layer.place, layer.cell) for layer in layers}) == [
        ("down", 8), ("down", 16), ("down", 32), ("mid", 64), ("up", 8), ("up", 16), ("up", 32)]
    settings = replace(SMALL, steps=2, height=height, width=width)
    plain = list(sample(sd_levels_bundle, conditioning(sd_levels_bundle), settings))[-1]
    last = recorded(sd_levels_bundle, settings)[-1]
    assert (plain.latents - last.latents).abs().max().item() == 0
    step = last.observed["attention"]
    assert step.maps.shape == (10, height, width)
    assert torch.allclose(step.maps.sum(0), torch.ones(height, width), atol=1e-5)
    assert attention.grid(height // 8, width // 8, 3) == deepest
    coarsest = recorded(sd_levels_bundle, settings, layers=attention.Layers(cells=(64,)))[-1].observed["attention"]
    assert torch.allclose(coarsest.maps[..., 0], coarsest.maps[..., -1])  # one cell across: the same along a row
    assert torch.allclose(coarsest.maps[:, 0], coarsest.maps[:, -1]) == (deepest[0] == 1)


def test_layers_by_place_and_resolution(toy_engine, tiny_bundle):
    layers = toy_engine.attention_layers()
    assert {(layer.place, layer.cell) for layer in layers} == {("down", 8), ("down", 16), ("mid", 16),
                                                               ("up", 16), ("up", 8)}
    assert {layer.cell for layer in Engine(tiny_bundle).attention_layers()} == {16}  # the tiny: one resolution
    fine = attention.check_layers(toy_engine.bundle, attention.Layers(cells=(8,)))
    assert {(layer.place, layer.cell) for layer in fine} == {("down", 8), ("up", 8)}
    assert len(attention.check_layers(toy_engine.bundle, attention.Layers(places=("mid",)))) == 1
    settings = replace(toy_engine.default_settings(), steps=2)
    every = list(toy_engine.attention(PROMPT, "", settings).frames)[-1].observed["attention"].maps
    mid = list(toy_engine.attention(PROMPT, "", settings, layers=attention.Layers(places=("mid",))).frames)
    assert not torch.allclose(every, mid[-1].observed["attention"].maps, atol=1e-3)


@pytest.mark.parametrize("layers, message", [
    (attention.Layers(places=("side",)), "UNet parts must be one or more of down, mid, up, got ['side']"),
    (attention.Layers(places=()), "UNet parts must be one or more of down, mid, up, got []"),
    (attention.Layers(cells=(32,)), "cells must be one or more of 8, 16 (image pixels per map cell"),
    (attention.Layers(cells=()), "cells must be one or more of 8, 16"),
    (attention.Layers(places=("mid",), cells=(8,)), "no cross-attention layer is in mid at 8 px cells; this model "
                                                    "has: down at 8 px, down at 16 px, mid at 16 px, up at 8 px, "
                                                    "up at 16 px"),
])
def test_bad_layer_choices_say_what_the_model_has(toy_engine, layers, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        toy_engine.attention(PROMPT, "", toy_engine.default_settings(), layers=layers)


@pytest.mark.parametrize("prompt, first", [("a blue star", 2), ("the cat and a dog", 2), ("red circle", 1),
                                           ("a", 1), ("", 1)])
def test_the_map_shown_first_is_the_first_word_past_the_articles(toy_engine, prompt, first):
    assert attention.first_word(toy_engine.attention_tokens(prompt)) == first


def test_entries_and_positions(toy_engine):
    tokens = toy_engine.attention_tokens("a blue star")
    assert tokens == ("<|startoftext|>", "a</w>", "blue</w>", "star</w>", "<|endoftext|>",
                      "padding x72")
    assert attention.check_entry(tokens, 3) == 3
    with pytest.raises(ValueError, match=r"token must be a position from 0 to 5 \(this prompt's maps: 0 "
                                         r"<\|startoftext\|>, 1 a, 2 blue, .*got 6"):
        attention.check_entry(tokens, 6)


def test_overlay_lays_the_heat_palette_over_the_picture():
    gray = attention.gray_images(torch.linspace(0, 1, 64).reshape(1, 8, 8))[0]
    picture = Image.new("RGB", (4, 4), (0, 0, 255))  # smaller: resized to the map
    assert attention.overlay(picture, gray, 0.0).getpixel((7, 7)) == (0, 0, 255)
    assert attention.overlay(picture, gray, 1.0).getpixel((7, 7)) == tuple(attention.HEAT[-1].astype(int))
    assert attention.overlay(None, gray, 0.3).getpixel((0, 0)) == tuple(attention.HEAT[0].astype(int))
    with pytest.raises(ValueError, match="opacity must be from 0 to 1, got 1.5"):
        attention.overlay(picture, gray, 1.5)


def shape_mask(image, prompt):
    """The pixels nearer the shape's named colour than the background's, in the generated image."""
    words = prompt.split()
    color, background = words[words.index("on") - 2], words[words.index("background") - 1]
    pixels = np.asarray(image.convert("RGB"), dtype=float)
    near = np.linalg.norm(pixels - COLORS[color], axis=-1) < np.linalg.norm(pixels - COLORS[background], axis=-1)
    return torch.from_numpy(near)


def top_iou(heat: torch.Tensor, mask: torch.Tensor) -> float:
    """IoU of the map's k hottest pixels with the mask, k = the mask's size."""
    top = torch.zeros(heat.numel(), dtype=torch.bool)
    top[heat.flatten().topk(int(mask.sum())).indices] = True
    top = top.reshape(mask.shape)
    return ((top & mask).sum() / (top | mask).sum()).item()


@pytest.fixture(scope="module")
def toy_last_step(toy_engine):
    """The last frame of a 20-step toy run per (prompt, seed, UNet parts), with the shape's mask in its image."""
    runs = {}

    def last_step(prompt, seed, places=attention.PLACES):
        if (prompt, seed, places) not in runs:
            settings = replace(toy_engine.default_settings(), seed=seed, steps=20, preview_every=0)
            last = list(toy_engine.attention(prompt, "", settings, layers=attention.Layers(places)).frames)[-1]
            runs[prompt, seed, places] = last.observed["attention"], shape_mask(last.image, prompt)
        return runs[prompt, seed, places]

    return last_step


def word_map(step, word):
    return step.maps[step.tokens.index(f"{word}</w>")]


@pytest.mark.parametrize("prompt", ["a red circle on a white background", "a blue square on a yellow background",
                                    "a yellow star on a blue background", "a green heart on a black background"])
def test_on_the_toy_the_shape_word_lands_on_the_shape(toy_last_step, prompt):
    """In the UNet's up blocks, the tab's default: IoU >= 0.5 in 16 of 18 runs over six shapes and seeds 1-3
    (README); the circle's word here, at seed 1, is the lowest of them (0.46)."""
    step, mask = toy_last_step(prompt, seed=1, places=attention.DEFAULT_PLACES)
    words = prompt.split()
    shape = word_map(step, words[words.index("on") - 1])
    assert 0.05 < mask.float().mean() < 0.6  # the shape was drawn
    assert top_iou(shape, mask) >= 0.45
    assert shape[mask].mean() > shape[~mask].mean()


@pytest.mark.parametrize("prompt", ["a blue square on a yellow background", "a green heart on a black background",
                                    "a yellow star on a blue background"])
def test_on_the_toy_the_background_word_takes_less_attention_than_the_shape_word(toy_last_step, prompt):
    """By share, and on one scale, where the background word's brightest pixel stays below the shape word's (over
    the whole UNet here; by 1.2 to 3.9 times over 18 runs in the up blocks, the tab's default, README)."""
    step, _ = toy_last_step(prompt, seed=2)
    words = prompt.split()
    shape = step.tokens.index(f"{words[words.index('on') - 1]}</w>")
    share = dict(zip(step.tokens, step.mass))
    assert share["background</w>"] < share[step.tokens[shape]]
    redrawn = attention.on_one_scale(step.images, step.ranges, step.tokens)
    brightest = dict(zip(step.tokens, (image.getextrema()[1] for image in redrawn)))
    assert brightest["background</w>"] < brightest[step.tokens[shape]]  # the star's: 93 and 106 when measured
