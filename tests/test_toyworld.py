"""The toy world's procedural data: reproducible, captioned truthfully, drawn in the named colours or their shades."""
import json
import random
import re
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from safetensors.torch import load_file

import core.toyworld
from core.engine import Engine
from core.models import TOY_DIR, load_bundle
from core.sampler import Settings
from core.toyworld import evaluate as evaluate_module
from core.toyworld.data import (COLORS, CONTRAST, SHADE_MARGIN, SHADE_SPREAD, SHAPES, SIZE, Scene, caption, draw, make_dataset,
                                off_palette_images, sample_scene, scene_shades, shade)
from core.toyworld.evaluate import (Reader, blue_grid, blueness, box_iou, evaluate, evaluate_blue, evaluate_img2img,
                                     prompt_grid, prompt_of)
from core.toyworld.report import vae_cells
from core.toyworld.train import PRESETS, STAGE_FIELDS, Checkpoints, stage_of, train

DATA = Path(__file__).parent / "data"


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


def test_unnamed_colours_are_left_out_of_captions_and_painted_anywhere_in_rgb():
    data = make_dataset(400, seed=3, shade_spread=SHADE_SPREAD, free_colour=0.2)
    assert 90 <= sum(bool(scene.unnamed) for _, _, scene in data) <= 200  # each of two roles 20%: about 36%
    palette = np.array(list(COLORS.values()))
    off_palette = 0
    for image, text, scene in data:
        words = text.replace(",", "").split()
        assert scene.shape in words
        assert (scene.color in words) == ("color" not in scene.unnamed), text
        assert (scene.background in words) == ("background" not in scene.unnamed), text
        assert "  " not in text and not text.endswith(" on") and " a a" not in text
        corner = np.asarray(image).astype(int)[0, 0]
        if "background" in scene.unnamed:
            off_palette += np.sqrt(((palette - corner) ** 2).sum(-1)).min() > 40
    assert off_palette >= 20  # unnamed backgrounds spread over the RGB cube, mostly far from any named colour


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
    assert re.fullmatch("[0-9a-f]{40}", recipe["commit"]) and recipe["recipe"]["unet_steps"] == 6
    assert set(recipe["minutes"]) == {"vae", "unet", "vae decoder"}
    defaults = json.loads((tmp_path / "toy" / "lens_defaults.json").read_text())
    shipped = json.loads((Path(core.toyworld.__file__).parent / "model" / "lens_defaults.json").read_text())
    assert defaults == {**shipped, "embeddings": []}  # the shipped defaults, less the embeddings not learned yet
    bundle = load_bundle(str(tmp_path / "toy"), device="cpu", dtype="float32")
    assert bundle.vae_scale_factor == 8 and bundle.latent_channels == 4 and bundle.native_size == 64
    assert len(bundle.tokenizer) == 49408 and bundle.tokenizer("puppy").input_ids[1] == 6829
    assert bundle.scheduler_config["beta_schedule"] == "scaled_linear"
    assert bundle.vae.config.scaling_factor != 0.18215  # set from the trained latents' spread
    held_out, unnamed = map(float, vae_cells(bundle, tmp_path / "toy")[0].split(" / "))
    assert abs(held_out - measured["vae_psnr_db"]) < 0.05 and 0 < unnamed < 60  # the report's, from the saved weights
    engine = Engine(bundle)
    assert engine.examples("txt2img")[0][0] == "a red circle on a white background"
    run = engine.txt2img("a red circle", "", Settings(steps=3, height=64, width=64, preview_every=0))
    assert list(run.frames)[-1].image.size == (64, 64)


def folder_weights(folder) -> dict:
    """Every tensor of a saved diffusers folder, by part and name."""
    return {f"{part.parent.name}/{name}": tensor for part in sorted(folder.glob("*/*.safetensors"))
            for name, tensor in load_file(part).items()}


STAGES = ("vae", "unet", "unet cycle 2", "vae decoder", "vae decoder restart")


@pytest.mark.parametrize("stop_in", STAGES)
def test_a_run_stopped_after_a_checkpoint_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys, stop_in):
    """A run killed right after a stage's step-4 checkpoint, then the same command again, gives bit for bit
    the weights of one run through."""
    cfg = PRESETS["tiny"]
    whole = train(cfg, tmp_path / "whole" / "toy")
    save = Checkpoints.save

    def save_then_stop(self, name, state):
        save(self, name, state)
        if name == f"{stop_in} step" and state["step"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoints, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "stopped" / "toy")
    monkeypatch.setattr(Checkpoints, "save", save)
    capsys.readouterr()
    resumed = train(cfg, tmp_path / "stopped" / "toy")
    log = capsys.readouterr().out
    assert f"{stop_in}: 6 steps, resumed at step 4" in log  # goes on from the checkpoint, not from the start
    assert all(f"{done}: 6 steps" not in log for done in STAGES[:STAGES.index(stop_in)])
    a, b = folder_weights(tmp_path / "whole" / "toy"), folder_weights(tmp_path / "stopped" / "toy")
    assert a.keys() == b.keys() and len(a) > 100
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert resumed["vae_psnr_db"] == whole["vae_psnr_db"]


def test_a_changed_recipe_retrains_the_stages_it_changes_and_only_those(tmp_path, capsys):
    """A run after a change of the UNet's steps keeps the VAE and decoder stages and trains the UNet anew; one after
    a change of the decoder's restart trains that cycle alone anew."""
    cfg = PRESETS["tiny"]
    train(cfg, tmp_path / "toy")
    capsys.readouterr()
    train(replace(cfg, unet_steps=7), tmp_path / "toy")
    log = capsys.readouterr().out
    assert "unet.pt: the recipe changed (unet_steps), so unet trains anew" in log
    assert "unet: 7 steps\n" in log and "unet cycle 2: 7 steps\n" in log
    assert "vae: 6 steps" not in log and "vae decoder: 6 steps" not in log and "vae decoder restart" not in log
    train(replace(cfg, unet_steps=7, decoder_restart_lr=1e-3), tmp_path / "toy")
    log = capsys.readouterr().out
    assert "vae-decoder-restart.pt: the recipe changed (decoder_restart_lr), so vae decoder restart trains anew" in log
    assert "vae decoder restart: 6 steps\n" in log
    assert re.findall(r"^(.+): \d+ steps", log, re.M) == ["vae decoder restart"]  # no other stage trains
    recipe = tmp_path / ".toy-checkpoints" / "recipe.json"  # checkpoints from before a field was added, at its default
    recipe.write_text(json.dumps({k: v for k, v in json.loads(recipe.read_text()).items() if k != "unet_norm_groups"}))
    train(replace(cfg, unet_steps=7, decoder_restart_lr=1e-3), tmp_path / "toy")
    assert re.findall(r"^(.+): \d+ steps", capsys.readouterr().out, re.M) == []  # nothing trains anew


def test_every_field_that_makes_weights_belongs_to_a_stage():
    fields = set(PRESETS["full"].recipe()) - {"checkpoint_every", "unet_cycles"}
    assert fields == set().union(*STAGE_FIELDS.values())
    assert [stage_of(name) for name in ("unet cycle 2 step", "vae decoder", "vae decoder restart step", "latents")] \
        == ["unet", "vae decoder", "vae decoder restart", "latents"]


def test_the_recipe_is_the_second_edition_in_fixed_steps():
    full = PRESETS["full"]
    assert full.shade_spread == SHADE_SPREAD and full.text_from_timestep == 150 and full.free_colour > 0
    assert (full.vae_steps, full.unet_steps, full.unet_cycles, full.decoder_steps) == (5000, 3000, 2, 1000)
    assert (full.decoder_restart_steps, full.decoder_restart_lr) == (2000, 5e-4)


def test_the_fine_preset_is_the_full_recipe_on_16x16_latents():
    full, fine = PRESETS["full"], PRESETS["fine"]
    assert full.shape().vae_scale_factor == 8 and fine.shape().vae_scale_factor == 4
    assert len(fine.unet_channels) == 3  # one level more, for the latents twice as wide
    # channels per norm group at the first level: at 1 the output's norm takes out each channel's mean (the colour)
    assert [c.unet_channels[0] // c.shape().unet_norm_groups for c in (full, fine)] == [2, 4]
    # attention where the full preset has it (8x8, 4x4 and mid), none at 16x16
    assert full.shape().unet_attention == (True, True) and fine.shape().unet_attention == (False, True, True)
    assert replace(fine, vae_channels=full.vae_channels, unet_channels=full.unet_channels,
                   unet_norm_groups=full.unet_norm_groups, unet_attention=full.unet_attention) == full


def test_blueness_is_how_much_blue_beats_red_and_green():
    assert blueness(Image.new("RGB", (8, 8), (0, 0, 255))) == 1.0
    assert blueness(Image.new("RGB", (8, 8), (128, 128, 128))) == 0.0
    assert blueness(Image.new("RGB", (8, 8), (250, 40, 40))) < -0.8
    assert blueness(Image.new("RGB", (8, 8), (180, 200, 250))) == pytest.approx(50 / 255)  # white turned pale blue


def test_the_blue_loss_is_measured_on_scenes_with_no_blue_in_every_shape():
    scenes = blue_grid()
    assert len(scenes) == 12 and {s.shape for s in scenes} == set(SHAPES) and len({s.color for s in scenes}) >= 8
    assert all("blue" not in (s.color, s.background) for s in scenes)


def test_the_reader_reads_clean_images_back():
    reader = Reader()
    data = make_dataset(150, seed=99) + make_dataset(150, seed=98, shade_spread=SHADE_SPREAD)
    readings = [reader.read(image) for image, _, _ in data]
    for field, floor in (("color", 1.0), ("background", 1.0), ("shape", 0.98)):
        hits = np.mean([getattr(r, field) == getattr(s, field) for r, (_, _, s) in zip(readings, data)])
        assert hits >= floor, (field, hits)


def test_the_reader_reads_soft_turned_shapes_as_a_person_would():
    """A model's shapes are softer than drawn (round corners, blurred edges) and turned any way: a square is still
    4-fold, a star 5-fold. Blurred by 1.5 px, the two older features alone read 75% of these right."""
    reader, rng = Reader(), random.Random(7)
    scenes = [replace(sample_scene(rng), angle=rng.uniform(-45, 45)) for _ in range(240)]
    images = [draw(scene, scene_shades(scene, rng)).filter(ImageFilter.GaussianBlur(1.5)) for scene in scenes]
    assert np.mean([reader.read(image).shape == scene.shape for scene, image in zip(scenes, images)]) >= 0.97


def test_the_reader_agrees_with_a_person_on_the_shipped_models_own_images():
    """56 images the shipped model drew at LMS 7.5 and 3 (the grid's prompts) that the reader, or its first two
    features alone, read as another shape than asked, each marked by a person looking at it: shows the shape asked
    for, or not. The two features alone agree with the person on 7 of them."""
    seen = json.loads((DATA / "seen_by_a_person.json").read_text())
    sheet = Image.open(DATA / "seen_by_a_person.png")
    reader = Reader()
    agree = [(reader.read(sheet.crop((64 * i, 0, 64 * i + 64, 64))).shape == mark["asked"]) == mark["seen"]
             for i, mark in enumerate(seen)]
    assert len(agree) == 56 and np.mean(agree) >= 0.9, [mark["image"] for mark, ok in zip(seen, agree) if not ok]


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


class RecolouringEngine:
    """Stands in for image to image: draws the prompt's scene, centred (as blue_grid's scenes are) or at `cx`;
    `keep` returns the input unchanged."""

    def __init__(self, cx: float = 0.5, keep: bool = False):
        self.cx, self.keep = cx, keep

    def img2img(self, prompt, negative_prompt, image, strength, settings):
        color, shape, background = re.fullmatch(r"an? (\w+) (\w+) on a (\w+) background", prompt).groups()
        drawn = image if self.keep else draw(Scene(shape, color, background, "medium", self.cx, 0.5, 0))
        return SimpleNamespace(frames=iter([SimpleNamespace(image=drawn)]))


def test_image_to_image_is_scored_on_layout_and_new_colour():
    reader = Reader()
    faithful = evaluate_img2img(RecolouringEngine(), Settings(), strengths=(0.3,), reader=reader)
    assert faithful == {"0.3": {"layout": 1.0, "median_iou": 1.0, "new_colour": 1.0}}
    unchanged = evaluate_img2img(RecolouringEngine(keep=True), Settings(), strengths=(0.3,), reader=reader)["0.3"]
    assert (unchanged["layout"], unchanged["new_colour"]) == (1.0, 0.0)
    moved = evaluate_img2img(RecolouringEngine(cx=0.2), Settings(), strengths=(0.3,), reader=reader)["0.3"]
    assert moved["layout"] == 0.0 and moved["median_iou"] < 0.5 and moved["new_colour"] == 1.0


class BluingEngine:
    """Stands in for a model under the blue loss: draws the prompt's scene, and guided, a circle of the prompt's
    colour on a blue ground (or, `stubborn`, the same image as unguided)."""

    def __init__(self, stubborn: bool = False):
        self.stubborn = stubborn

    @staticmethod
    def drawn(prompt: str, guided: bool = False) -> SimpleNamespace:
        color, shape, background = re.fullmatch(r"an? (\w+) (\w+) on a (\w+) background", prompt).groups()
        scene = Scene("circle", color, "blue", "medium", 0.5, 0.5, 0) if guided else \
            Scene(shape, color, background, "medium", 0.5, 0.5, 0)
        return SimpleNamespace(frames=iter([SimpleNamespace(image=draw(scene))]))

    def txt2img(self, prompt, negative_prompt, settings):
        return self.drawn(prompt)

    def guided(self, prompt, negative_prompt, settings, guidance):
        return self.drawn(prompt, guided=not self.stubborn)


def test_the_blue_loss_is_scored_on_blueness_and_on_shape_guided_and_unguided():
    reader = Reader()
    bluer = evaluate_blue(BluingEngine(), Settings(), guidance=None, seeds=1, reader=reader)
    assert (bluer["bluer"], bluer["shape_unguided"], bluer["images"]) == (1.0, 1.0, 12)
    assert bluer["shape"] == round(2 / 12, 3)  # only the circle prompts
    assert bluer["median_rise"] > 0.3
    same = evaluate_blue(BluingEngine(stubborn=True), Settings(), guidance=None, seeds=1, reader=reader)
    assert (same["bluer"], same["median_rise"], same["shape"], same["shape_unguided"]) == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("mode, flags, expected", [
    ("--blue", [], (50, 8.0, "lms")),  # the Guidance tab's defaults: the notebook's guidance demo
    ("--blue", ["--steps", "30", "--guidance", "7.5"], (30, 7.5, "lms")),
    ("--img2img", [], (50, 8.0, "lms")),  # the Image to image tab's defaults: the notebook's image-to-image demo
    ("--img2img", ["--steps", "30", "--guidance", "7.5", "--scheduler", "euler"], (30, 7.5, "euler")),
    ("--seeds", ["1"], (30, 7.5, "lms")),  # the grid: text to image's defaults, the notebook's first demo
])
def test_each_measurement_runs_at_its_tab_s_settings(monkeypatch, capsys, mode, flags, expected):
    seen = []

    def record(engine, settings, *rest):
        seen.append((settings.steps, settings.guidance_scale, settings.scheduler))
        return {}

    for name in ("evaluate", "evaluate_blue", "evaluate_img2img"):
        monkeypatch.setattr(evaluate_module, name, record)
    monkeypatch.setattr(sys, "argv", ["evaluate", "--model", str(TOY_DIR), mode, *flags])
    evaluate_module.main()
    assert seen == [expected]
    printed = json.loads(capsys.readouterr().out)
    assert (printed["steps"], printed["guidance_scale"]) == expected[:2]
    if mode == "--blue":
        assert printed["scale"] == 100.0  # the toy folder's loss scale


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
