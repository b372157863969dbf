"""Public demos: what the safety checker flags is shown blurred with a note, it is on only where real weights
are served publicly, diffusers' own checker loads from a model folder (a small random one here), and on a
Space the app serves every interface."""
from __future__ import annotations

import threading
from dataclasses import replace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import app
from core import safety
from core.engine import Engine
from core.models import TOY_DIR
from tests.conftest import add_small_safety_checker
from ui.run_view import PairView


def flag_all(pictures):
    return [True] * len(pictures)


def flag_none(pictures):
    return [False] * len(pictures)


def run_frames(engine: Engine, steps: int = 4):
    settings = replace(engine.default_settings(), steps=steps, seed=3, preview_every=1)
    return list(engine.txt2img("a red cat", "", settings).frames)


def test_flagged_pictures_are_shown_blurred_and_the_first_one_says_why(tiny_bundle):
    plain = run_frames(Engine(tiny_bundle))
    screened = run_frames(Engine(tiny_bundle, safety=flag_all))
    for before, after in zip(plain, screened):
        for name in ("x_t_image", "x0_image"):
            assert np.array_equal(np.asarray(getattr(after, name)), np.asarray(safety.blurred(getattr(before, name))))
    assert np.array_equal(np.asarray(screened[-1].image), np.asarray(safety.blurred(plain[-1].image)))
    blurred, sharp = np.asarray(screened[-1].image, float), np.asarray(plain[-1].image, float)
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.5 * np.abs(np.diff(sharp, axis=1)).mean()  # detail gone
    assert [frame.note for frame in screened] == [safety.NOTE] + [None] * (len(screened) - 1)


def test_pictures_the_checker_passes_are_the_runs_own(tiny_bundle):
    plain = run_frames(Engine(tiny_bundle))
    passed = run_frames(Engine(tiny_bundle, safety=flag_none))
    assert all(np.array_equal(np.asarray(a.x0_image), np.asarray(b.x0_image)) for a, b in zip(plain, passed))
    assert np.array_equal(np.asarray(plain[-1].image), np.asarray(passed[-1].image))
    assert all(frame.note is None for frame in passed)


def test_a_step_taken_apart_is_screened_too(tiny_bundle):
    frame = run_frames(Engine(tiny_bundle))[-1]
    plain = Engine(tiny_bundle).cfg_parts(frame)
    screened = Engine(tiny_bundle, safety=flag_all).cfg_parts(frame)
    for name in ("uncond", "text", "guided"):
        assert np.array_equal(np.asarray(getattr(screened, name)), np.asarray(safety.blurred(getattr(plain, name))))


@pytest.mark.parametrize("flags, environment, model, on", [
    ([], {}, "real", False),                                          # private: no checker
    (["--share"], {}, "real", True),                                  # a public link of real weights
    ([], {"SPACE_ID": "someone/sd-lens"}, "real", True),             # a Space
    (["--share", "--no-safety-checker"], {}, "real", False),          # turned off for private use
    (["--share"], {"SDLENS_NO_SAFETY_CHECKER": "1"}, "real", False),  # ... through the environment
    (["--share"], {}, "toy", False),                                  # the toy's shapes need none
])
def test_the_checker_is_on_for_public_demos_of_real_weights(monkeypatch, tiny_bundle, tiny_sd_dir, flags,
                                                            environment, model, on):
    for name in ("SPACE_ID", "SDLENS_NO_SAFETY_CHECKER", "SDLENS_SHARE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    loaded = []
    monkeypatch.setattr(safety, "load_checker", lambda source, device, dtype: loaded.append(source) or flag_all)
    bundle = replace(tiny_bundle, source=str(TOY_DIR if model == "toy" else tiny_sd_dir))
    checker = app.safety_checker(app.parse_args(flags), bundle)
    assert (checker is flag_all) == on and loaded == ([bundle.source] if on else [])


def test_diffusers_checker_loads_from_the_model_folder_and_flags_each_picture(tmp_path):
    import torch

    flagger = safety.load_checker(str(add_small_safety_checker(tmp_path)), torch.device("cpu"), torch.float32)
    pictures = [Image.new("RGB", (side, side), color) for side, color in ((64, "red"), (512, "white"), (8, "black"))]
    flags = flagger(pictures)  # a step's fast x0 preview and its full-size result differ in size
    assert len(flags) == 3 and all(isinstance(flag, bool) for flag in flags)


def test_a_checker_that_cannot_load_stops_the_start_with_what_to_do(tmp_path):
    import torch

    (tmp_path / "safety_checker").mkdir()
    (tmp_path / "feature_extractor").mkdir()
    with pytest.raises(ValueError, match="(?s)the safety checker could not be loaded from .* or CompVis/stable-diffusion-"
                                         "safety-checker .*pass --no-safety-checker"):
        safety.load_checker(str(tmp_path), torch.device("cpu"), torch.float32)


def test_on_a_space_the_app_serves_every_interface(monkeypatch):
    monkeypatch.delenv("SDLENS_HOST", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert app.parse_args([]).host == "127.0.0.1"
    monkeypatch.setenv("SPACE_ID", "someone/sd-lens")
    assert app.parse_args([]).host == "0.0.0.0"
    assert app.parse_args(["--host", "127.0.0.1"]).host == "127.0.0.1"


def test_a_pair_of_flagged_runs_says_why_once(tiny_bundle):
    """The two-image tabs (a token swapped or mixed) put a note on the status line once, though both runs carry it."""
    engine = Engine(tiny_bundle, safety=flag_all)
    settings = replace(engine.default_settings(), steps=3, seed=3, preview_every=1)
    with gr.Blocks():
        view = PairView("pair", None, "as written", "edited")
    runs = engine.edit_token("a red cat", "", settings, 2, [("blue", 1.0)])
    last = list(view.stream(runs, threading.Event(), "token 2 → 'blue'"))[-1]
    assert last[view.status].count(safety.NOTE) == 1 and last[view.progress]["notes"] == [safety.NOTE]
