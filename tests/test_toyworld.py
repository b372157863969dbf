"""The toy world's procedural data: reproducible, captioned truthfully, drawn in the named colours or their shades."""
import json
from dataclasses import replace
import random
from types import SimpleNamespace

import numpy as np
import pytest

from core.engine import Engine
from core.models import load_bundle
from core.sampler import Settings
from core.toyworld.data import (COLORS, CONTRAST, SHADE_MARGIN, SHADE_SPREAD, SHAPES, SIZE, Scene, caption, draw, make_dataset,
                                off_palette_images, scene_shades, shade)
from core.toyworld.evaluate import Reader, evaluate, prompt_grid, prompt_of
from core.toyworld.train import PRESETS, STAGES, Budget, budget, train


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = make_dataset(20, seed=5), make_dataset(20, seed=5), make_dataset(20, seed=6)
    assert [t for _, t, _ in a] == [t for _, t, _ in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (x, _, _), (y, _, _) in zip(a, b))
    assert [s for _, _, s in a] != [s for _, _, s in c]


def test_caption_templates_vary():
    scene = Scene(shape="star", color="orange", background="white", size="small", cx=0.5, cy=0.5, angle=0)
    texts = {caption(scene, random.Random(i)) for i in range(50)}
    assert len(texts) >= 5 and "an orange star on a white background" in texts


def test_captions_name_what_is_drawn():
    for image, text, scene in make_dataset(300, seed=1):
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"
        assert scene.color != scene.background
        words = text.replace(",", "").split()
        assert scene.shape in words and scene.color in words and scene.background in words
        assert " a orange" not in text and " a a" not in text


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_centre_and_corner_have_the_named_colours(shape):
    scene = Scene(shape=shape, color="red", background="blue", size="medium", cx=0.5, cy=0.5, angle=10)
    pixels = np.asarray(draw(scene)).astype(int)
    assert np.abs(pixels[32, 32] - COLORS["red"]).max() <= 2
    assert np.abs(pixels[0, 0] - COLORS["blue"]).max() <= 2
    edge = np.abs(pixels - COLORS["red"]).sum(-1) > 6
    edge &= np.abs(pixels - COLORS["blue"]).sum(-1) > 6
    assert edge.any()  # anti-aliased: some pixels lie between the two colours


@pytest.mark.parametrize("name", COLORS)
def test_every_shade_reads_as_its_name_and_they_vary(name):
    rng = random.Random(name)
    shades = np.array([shade(name, rng) for _ in range(200)])
    distances = np.sqrt(((shades[:, None, :] - np.array(list(COLORS.values()))[None]) ** 2).sum(-1))  # (200, 11)
    own = list(COLORS).index(name)
    others = np.delete(distances, own, axis=1).min(1)
    assert (distances[:, own] + SHADE_MARGIN <= others).all()
    assert len({tuple(s) for s in shades}) >= 150 and distances[:, own].mean() > 25  # a range, not the name's RGB


def test_a_scene_keeps_its_shape_visible_against_its_background():
    rng = random.Random(4)
    for scene in (Scene("star", "gray", "white", "small", 0.5, 0.5, 0), Scene("heart", "orange", "yellow", "large", 0.5, 0.5, 0)):
        for _ in range(100):
            shades = scene_shades(scene, rng)
            assert np.linalg.norm(np.subtract(shades[scene.color], shades[scene.background])) >= CONTRAST


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="shape must be one of circle, square, triangle, star, heart, cross, got 'blob'"):
        draw(Scene(shape="blob", color="red", background="blue", size="small", cx=0.5, cy=0.5, angle=0))


def test_every_colour_and_shape_appears_in_a_modest_dataset():
    scenes = [s for _, _, s in make_dataset(1000, seed=2)]
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.color for s in scenes} == set(COLORS) == {s.background for s in scenes}


def test_off_palette_images_leave_the_named_colours_with_the_shape_visible():
    images = off_palette_images(40, seed=3)
    assert [np.asarray(a).tolist() for a in images[:3]] == [np.asarray(b).tolist() for b in off_palette_images(3, seed=3)]
    palette = np.array(list(COLORS.values()))
    named = 0
    for image in images:
        pixels = np.asarray(image).astype(int).reshape(-1, 3)
        corner, centre_spread = pixels[0], np.abs(pixels - pixels[0]).sum(-1)
        assert centre_spread.max() >= 110  # a shape that differs from the background by >= 120 in RGB, less anti-aliasing
        named += int(np.abs(palette - corner).sum(-1).min() <= 30)
    assert named <= 2  # backgrounds spread over the RGB cube, almost never on a named colour


def test_training_recipe_runs_and_the_engine_loads_its_model(tmp_path):
    """The full recipe on the tiny preset: a diffusers folder the app loads and samples like any SD."""
    measured = train(PRESETS["tiny"], tmp_path / "toy")
    recipe = json.loads((tmp_path / "toy" / "training.json").read_text())
    assert recipe["recipe"]["unet_channels"] == [32, 32] and recipe["vae_psnr_db"] == round(measured["vae_psnr_db"], 2)
    bundle = load_bundle(str(tmp_path / "toy"), device="cpu", dtype="float32")
    assert bundle.vae_scale_factor == 8 and bundle.latent_channels == 4 and bundle.native_size == 64
    assert len(bundle.tokenizer) == 49408 and bundle.tokenizer("puppy").input_ids[1] == 6829
    assert bundle.scheduler_config["beta_schedule"] == "scaled_linear"
    assert bundle.vae.config.scaling_factor != 0.18215  # set from the trained latents' spread
    engine = Engine(bundle)
    assert engine.examples("txt2img")[0][0] == "a red circle on a white background"
    run = engine.txt2img("a red circle", "", Settings(steps=3, height=64, width=64, preview_every=0))
    assert list(run.frames)[-1].image.size == (64, 64)


def test_a_budget_spends_its_time_when_the_first_steps_are_slow():
    """10 warm-up steps of 2 s, then 1 s a step, in a 100 s budget: about 90 steps, not the 50 that the
    warm-up speed alone promises, and the last step ends within a step of the budget."""
    now = [0.0]
    budget = Budget("test", 100 / 60, None, probe=10, clock=lambda: now[0])
    step = 0
    while step < budget.steps_so_far(step):
        now[0] += 2.0 if step < 10 else 1.0
        step += 1
        budget.report(step, 0.0)
    assert 88 <= step <= 91, step
    assert abs(now[0] - 100) <= 2, now[0]


def test_stage_step_counts_replace_the_time_budgets():
    """With stage_steps each stage runs exactly its count, however little time its budget would allow."""
    cfg = replace(PRESETS["tiny"], vae_minutes=1e-9, unet_minutes=1e-9, decoder_minutes=1e-9, stage_steps=(3, 14, 2))
    counts = []
    for stage in STAGES:
        stage_budget, step = budget(cfg, stage), 0
        while step < stage_budget.steps_so_far(step):
            step += 1
            stage_budget.report(step, 0.0)
        counts.append(step)
    assert counts == [3, 14, 2]
    assert PRESETS["shaded"].shade_spread > 0 and PRESETS["shaded"].text_from_timestep == 150
    assert PRESETS["full"].shade_spread == 0 and PRESETS["full"].text_from_timestep == 0  # the shipped weights' recipe


def test_the_reader_reads_clean_images_back():
    reader = Reader()
    data = make_dataset(150, seed=99) + make_dataset(150, seed=98, shade_spread=SHADE_SPREAD)
    readings = [reader.read(image) for image, _, _ in data]
    for field, floor in (("color", 1.0), ("background", 1.0), ("shape", 0.98)):
        hits = np.mean([getattr(r, field) == getattr(s, field) for r, (_, _, s) in zip(readings, data)])
        assert hits >= floor, (field, hits)


class DrawingEngine:
    """Stands in for a model: draws what the prompt asks (or always `fixed`), to check the bookkeeping."""

    def __init__(self, fixed: Scene | None = None):
        self.scenes = {prompt_of(s): s for s in prompt_grid()}
        self.fixed = fixed

    def txt2img(self, prompt, negative_prompt, settings):
        frame = SimpleNamespace(image=draw(self.fixed or self.scenes[prompt]))
        return SimpleNamespace(frames=iter([frame]))


def test_evaluate_scores_a_faithful_and_a_stubborn_model():
    reader = Reader()
    perfect = evaluate(DrawingEngine(), Settings(), seeds=1, reader=reader)
    assert perfect["images"] == len(COLORS) * len(SHAPES)
    assert (perfect["color"], perfect["background"]) == (1.0, 1.0) and perfect["shape"] >= 0.95
    stubborn = evaluate(DrawingEngine(Scene("square", "blue", "white", "large", 0.5, 0.5, 0)), Settings(),
                        seeds=1, reader=reader)
    assert stubborn["color"] == round(6 / 66, 3)  # only the blue prompts
    assert stubborn["shape"] == round(11 / 66, 3)  # only the square prompts
