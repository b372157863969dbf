"""Show the code: every tab's script, run on its own in a fresh Python outside the repository, makes the app's
image (within 1/255) and final latents (within 1e-5)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from core.attention import Layers
from core.code import Scripts, Unscriptable
from core.engine import Engine
from core.guidance import Guidance, Target

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "ui" / "assets" / "examples" / "red-heart.png"
TEAL = ROOT / "core" / "toyworld" / "model" / "embeddings" / "teal.safetensors"


def run_script(code: str, folder: Path) -> tuple[np.ndarray, torch.Tensor, str]:
    """The script run as a user runs it: its own file, a fresh isolated Python (no PYTHONPATH, no script
    folder on the path), outside the repository; returns its image, its latents and what it printed."""
    assert "import core" not in code and "from core" not in code and "from ui" not in code
    (folder / "script.py").write_text(code)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "script.py", "out.png", "latents.pt"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    image = np.asarray(Image.open(folder / "out.png").convert("RGB")).astype(int)
    return image, torch.load(folder / "latents.pt", weights_only=True), done.stdout


def app_results(runs) -> tuple[np.ndarray, torch.Tensor]:
    """The app's final images side by side, and their final latents."""
    finals = [list(run.frames)[-1] for run in runs]
    return (np.concatenate([np.asarray(f.image).astype(int) for f in finals], axis=1),
            torch.cat([f.latents for f in finals]))


def assert_same(code: str, runs, folder: Path) -> str:
    folder.mkdir(exist_ok=True)
    image, latents, printed = run_script(code, folder)
    app_image, app_latents = app_results(runs)
    assert image.shape == app_image.shape
    assert np.abs(image - app_image).max() <= 1
    assert (latents - app_latents.cpu()).abs().max().item() <= 1e-5
    return printed


def cases(engine: Engine, learned: dict | None = None) -> dict:
    """(script, the app's runs) for each generating tab's engine call; with `learned` embeddings, the textual
    inversion tab's two kinds of run too."""
    scripts = Scripts(engine)
    s = replace(engine.default_settings(), steps=8, seed=11, preview_every=0)
    prompt, guidance = "a red circle on a white background", Guidance(scale=30.0, every=3, start=2)
    out = {
        "txt2img": (scripts.txt2img(prompt, "blue", s), lambda: [engine.txt2img(prompt, "blue", s)]),
        "guided": (scripts.guided(prompt, "", replace(s, scheduler="euler"), guidance),
                   lambda: [engine.guided(prompt, "", replace(s, scheduler="euler"), guidance)]),
        "img2img": (scripts.img2img(prompt, "", str(EXAMPLE), 0.5, s),
                    lambda: [engine.img2img(prompt, "", EXAMPLE, 0.5, s)]),
        "swap_token": (scripts.edit_token(prompt, "", s, 2, [("blue", 1.0)]),
                       lambda: engine.edit_token(prompt, "", s, 2, [("blue", 1.0)])),
        "mix_prompts": (scripts.mix_prompts(prompt, "a blue star on a yellow background", 0.3, "", s),
                        lambda: [engine.mix_prompts(prompt, "a blue star on a yellow background", 0.3, "", s)]),
    }
    if learned:
        teal = "a <teal> circle on a white background"
        out["textual_inversion"] = (scripts.txt2img(teal, "", s, learned=learned),
                                    lambda: [engine.txt2img(teal, "", s, learned=learned)])
        out["learned_in_place"] = (scripts.edit_token("a green star on a black background", "", s, 2,
                                                      [("<teal>", 1.0)], learned=learned),
                                   lambda: engine.edit_token("a green star on a black background", "", s, 2,
                                                             [("<teal>", 1.0)], learned=learned))
    return out


@pytest.mark.parametrize("tab", ["txt2img", "guided", "img2img", "swap_token", "mix_prompts"])
def test_the_script_of_each_tab_makes_the_apps_image_on_the_tiny_model(tiny_bundle, tmp_path, tab):
    code, runs = cases(Engine(tiny_bundle))[tab]
    assert_same(code, runs(), tmp_path)


@pytest.mark.parametrize("tab", ["txt2img", "guided", "img2img", "textual_inversion", "learned_in_place"])
def test_the_script_of_each_tab_makes_the_apps_image_on_the_toy(toy_engine, tmp_path, tab):
    code, runs = cases(toy_engine, toy_engine.load_learned(TEAL))[tab]
    printed = assert_same(code, runs(), tmp_path)
    if tab == "guided":
        # steps 3 and 6 of 8 are guided (the first 2 left unguided), each printing its loss, counted from 1 as the
        # page's loss plot counts them
        assert re.findall(r"step (\d+) \(timestep \d+\): loss", printed) == ["3", "6"]


@pytest.mark.parametrize("change, lms_order", [({"scheduler": "ddim"}, "run"), ({"scheduler": "dpm++"}, "run"),
                                               ({"guidance_scale": 1.0}, "run"), ({"scheduler": "lms"}, "diffusers")])
def test_image_to_image_scripts_follow_the_sampler_the_guidance_and_the_lms_order(tiny_bundle, tmp_path, change,
                                                                                  lms_order):
    engine = Engine(tiny_bundle)
    s = replace(engine.default_settings(), steps=8, seed=3, preview_every=0, **change)
    code = Scripts(engine).img2img("a cat", "", str(EXAMPLE), 0.6, s, lms_order=lms_order)
    assert ("order=min(i + 1" in code) == (s.scheduler == "lms" and lms_order == "run")
    assert_same(code, [engine.img2img("a cat", "", EXAMPLE, 0.6, s, lms_order=lms_order)], tmp_path)


@pytest.mark.parametrize("kind, entries, names", [
    ("scales", "1,4", "guidance scale 1.0 | guidance scale 4.0"),
    ("samplers", "lms, euler:5, ddim", "lms:6 | euler:5 | ddim:6"),
    ("seeds", "2,9", "seed 2 | seed 9")])
def test_the_script_of_a_comparison_makes_each_of_its_runs(tiny_bundle, tmp_path, kind, entries, names):
    engine = Engine(tiny_bundle)
    s = replace(engine.default_settings(), steps=6, seed=4, guidance_scale=3.0, preview_every=0)
    changes = {"scales": engine.parse_scales, "samplers": engine.parse_samplers, "seeds": engine.parse_seeds}[kind](
        entries)
    printed = assert_same(Scripts(engine).compare("a cat", "", s, changes),
                          engine.compare_runs("a cat", "", s, changes), tmp_path)
    assert printed.startswith(f"{names} written to")


@pytest.mark.parametrize("layers", [Layers(), Layers(places=("up",)), Layers(places=("down", "mid"), cells=(16,))])
def test_the_attention_script_makes_the_apps_image_and_its_last_maps(tiny_bundle, tmp_path, layers):
    engine = Engine(tiny_bundle)
    s = replace(engine.default_settings(), steps=5, seed=8, preview_every=0)
    prompt = "a red cat on a mat"
    run = engine.attention(prompt, "", s, layers=layers)
    frames = list(run.frames)
    printed = assert_same(Scripts(engine).attention(prompt, "", s, layers=layers), [SimpleNamespace(frames=frames)], tmp_path)
    maps = np.asarray(Image.open(tmp_path / "out-maps.png")).astype(int)
    app_maps = np.concatenate([np.asarray(gray) for gray in frames[-1].observed["attention"].images], axis=1)
    assert maps.shape == app_maps.shape and np.abs(maps - app_maps).max() <= 1
    assert "(and the padding)" in printed and "cat</w>" in printed


@pytest.mark.parametrize("scheduler", ["lms", "ddim", "dpm++"])
def test_the_parts_script_takes_apart_the_step_the_page_shows(tiny_bundle, tmp_path, scheduler):
    """The previewed step (every 2nd and the last: 2, 4, 5) where the two predictions differ most, as the page
    ends on it."""
    engine = Engine(tiny_bundle)
    s = replace(engine.default_settings(), steps=5, seed=6, preview_every=2, scheduler=scheduler)
    frames = list(engine.txt2img("a red cat", "", s).frames)
    printed = assert_same(Scripts(engine).cfg_parts("a red cat", "", s), [SimpleNamespace(frames=frames)], tmp_path)
    shown = {frame.index + 1: engine.cfg_parts(frame) for frame in frames if frame.x0_image is not None}
    assert list(shown) == [2, 4, 5]
    step, parts = max(shown.items(), key=lambda item: item[1].distance)
    app_parts = np.concatenate([np.asarray(p) for p in (parts.uncond, parts.text, parts.guided, parts.noise)], axis=1)
    assert np.abs(np.asarray(Image.open(tmp_path / "out-parts.png")).astype(int) - app_parts).max() <= 1
    assert f"step {step} of 5, where the two predictions differ most" in printed
    assert f"are {parts.distance:.4f} apart" in printed


def test_mixing_two_tokens_and_guiding_accurately_or_by_colour(tiny_bundle, tmp_path):
    engine = Engine(tiny_bundle)
    s = replace(engine.default_settings(), steps=6, seed=5, preview_every=0)
    parts = [("blue", 0.25), ("green", 0.75)]
    assert_same(Scripts(engine).edit_token("a red cat", "", s, 2, parts),
                engine.edit_token("a red cat", "", s, 2, parts), tmp_path / "mix")
    guidance = Guidance(loss="color", scale=50.0, every=2, mode="accurate", target=Target(color=(1.0, 0.5, 0.0)))
    assert_same(Scripts(engine).guided("a red cat", "", s, guidance), [engine.guided("a red cat", "", s, guidance)],
                tmp_path / "guided")


def test_the_script_says_where_the_shipped_toy_lives(toy_engine, tiny_bundle):
    """A script given away (a share link, a zip) names the toy's folder as the repository has it."""
    settings = toy_engine.default_settings()
    toy = Scripts(toy_engine).txt2img("a red circle", "", settings)
    assert toy.startswith('"""Text to image with core/toyworld/model in the SD Lens repository, as SD Lens ran it.')
    assert f"model = {toy_engine.bundle.source!r}  # core/toyworld/model in the SD Lens repository" in toy
    other = Scripts(Engine(tiny_bundle)).txt2img("a red circle", "", settings)
    assert f"model = {tiny_bundle.source!r}\n" in other and "SD Lens repository" not in other


def test_the_script_says_what_it_cannot_write(tiny_bundle):
    engine = Engine(tiny_bundle)
    s = replace(engine.default_settings(), steps=6, scheduler="optim")
    with pytest.raises(Unscriptable, match="the code is written for the samplers lms, euler, ddim, dpm\\+\\+; 'optim'"):
        Scripts(engine).txt2img("a cat", "", s)  # the run itself is fine: the page lets it go
    with pytest.raises(ValueError, match="position must be one of the prompt's tokens, from 1 to 2, got 5"):
        Scripts(engine).edit_token("a cat", "", replace(s, scheduler="lms"), 5, [("dog", 1.0)])
    with pytest.raises(ValueError, match="steps must be a whole number"):
        Scripts(engine).txt2img("a cat", "", replace(s, steps=0, scheduler="lms"))
    with pytest.raises(ValueError, match="guidance scale 1 runs the UNet on the prompt alone"):
        Scripts(engine).cfg_parts("a cat", "", replace(s, scheduler="lms", guidance_scale=1.0))
    with pytest.raises(Unscriptable, match="the code is written for the samplers lms, euler, ddim, dpm\\+\\+; 'optim'"):
        Scripts(engine).compare("a cat", "", replace(s, scheduler="lms"), engine.parse_samplers("euler,optim"))


def test_a_learned_token_stands_in_as_a_word_the_prompts_do_not_use(toy_engine):
    """The script writes a learned token as a one-token word, then puts the learned vector in its place: a word
    the prompts use (in any case, beside any punctuation) would be replaced too."""
    s = replace(toy_engine.default_settings(), steps=4, seed=1)
    code = Scripts(toy_engine).txt2img("a <teal> Puppy, with a kitten.", "", s, learned=toy_engine.load_learned(TEAL))
    assert "stand_ins = {'<teal>': 'banana'}" in code
