"""Guidance taken apart, and runs compared across scales, samplers and seeds: in the engine and through the API."""
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from gradio_client import Client
from PIL import Image

from core.compare import x0_of
from core.engine import Engine
from core.sampler import Settings
from core.schedule import SCHEDULERS
from ui.compare import label_of, stream_side_by_side

SMALL = Settings(steps=6, guidance_scale=7.5, seed=5, height=64, width=64, preview_every=1, previews="full")


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_guided_x0_is_the_mix_of_the_two_predictions_x0(tiny_bundle, scheduler):
    engine = Engine(tiny_bundle)
    frames = list(engine.txt2img("a red circle", "", replace(SMALL, scheduler=scheduler)).frames)
    for frame in frames:
        uncond, text = (x0_of(frame.x_t, frame.sigma, noise) for noise in frame.branches)
        mixed = uncond + SMALL.guidance_scale * (text - uncond)
        assert torch.allclose(mixed, frame.x0, atol=1e-4), (scheduler, frame.index)  # the scheduler's own x0


def test_parts_come_from_the_steps_own_unet_batch(tiny_bundle):
    engine, calls = Engine(tiny_bundle), []
    handle = tiny_bundle.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        parts = [engine.cfg_parts(frame) for frame in engine.txt2img("a red circle", "", SMALL).frames]
    finally:
        handle.remove()
    assert calls == [2] * SMALL.steps  # one [uncond, text] batch a step, nothing more
    assert all(part.uncond.size == part.text.size == part.guided.size == (64, 64) for part in parts)
    assert len(parts[0].noise_norms) == 4 and parts[-1].distance > 0


def test_without_guidance_there_is_nothing_to_take_apart(tiny_bundle):
    engine = Engine(tiny_bundle)
    frame = next(engine.txt2img("a red circle", "", replace(SMALL, guidance_scale=1.0)).frames)
    with pytest.raises(ValueError, match="guidance scale 1 runs the UNet on the prompt alone"):
        engine.cfg_parts(frame)


def test_each_compared_run_is_the_text_to_image_run(tiny_bundle):
    engine = Engine(tiny_bundle)
    runs = engine.compare_runs("a red circle", "", SMALL, engine.parse_samplers("lms, Euler:4"))  # any case
    for run, change in zip(runs, [{"scheduler": "lms"}, {"scheduler": "euler", "steps": 4}]):
        alone = list(engine.txt2img("a red circle", "", replace(SMALL, **change)).frames)[-1]
        assert torch.equal(list(run.frames)[-1].latents, alone.latents)


def test_a_sampler_comparison_says_which_entry_stopped_early(toy_engine):
    """optim stops once the noise left is below its tolerance: the comparison names it and every entry's steps."""
    settings = replace(toy_engine.default_settings(), preview_every=0)
    changes = toy_engine.parse_samplers("lms, optim, euler:15")
    runs = toy_engine.compare_runs("a red circle on a white background", "", settings, changes)
    *_, last = stream_side_by_side(toy_engine, runs, [label_of(c, r.settings) for c, r in zip(changes, runs)],
                                   threading.Event())
    done = last.progress["steps"][1]
    assert last.progress["steps"] == [30, done, 15] and done < 30
    assert f"steps run: lms 30 / 30, optim {done} / 30, euler:15 15 / 15" in last.status
    assert f"⚠️ optim: the optimiser stopped early at step {done} of 30" in last.status
    assert last.progress["totals"] == [30, 30, 15]
    assert last.progress["notes"][0].startswith("optim: the optimiser stopped")


def test_a_note_only_some_entries_give_is_labelled_with_them(toy_engine):
    """One step of LMS starts at timestep 0 and says so; the entries that start at 999 say nothing."""
    settings = replace(toy_engine.default_settings(), preview_every=0, steps=4)
    changes = toy_engine.parse_samplers("euler, lms:1, dpm++:1")
    runs = toy_engine.compare_runs("a red circle on a white background", "", settings, changes)
    *_, last = stream_side_by_side(toy_engine, runs, [label_of(c, r.settings) for c, r in zip(changes, runs)],
                                   threading.Event())
    assert [note.split(" starts at")[0] for note in last.progress["notes"]] == ["lms:1: lms with 1 step"]
    assert "⚠️ lms:1: lms with 1 step starts at timestep 0" in last.status


@pytest.mark.parametrize("text, message", [
    ("", "samplers is empty"),
    ("lms,heun", "samplers: 'heun' is not one of lms, euler, ddim, dpm"),
    (",".join(["lms"] * 13), "samplers takes at most 12 entries, got 13"),
    ("lms:ten", "'lms:ten' is not one of"),
    ("euler:0", "samplers: 'euler:0' is not one of lms, euler, ddim, dpm\\+\\+, optim, with an optional step count "
                "from 1 to 200"),
])
def test_bad_sampler_lists_say_what_is_allowed(text, message):
    with pytest.raises(ValueError, match=message):
        Engine.parse_samplers(text)


@pytest.mark.parametrize("text, message", [
    ("3, 500", "scales: each takes 0 to 50, got 500"),
    ("3, -1", "scales: each takes 0 to 50, got -1"),
    ("3, x", "scales: 'x' is not a number, as in 1,3,7.5"),
])
def test_bad_scale_lists_name_the_scales(text, message):
    with pytest.raises(ValueError, match=message):
        Engine.parse_scales(text)


# --- through the API ---

SETTINGS = dict(steps=4, guidance_scale=7.5, seed=3, width=64, height=64, preview_every=1, scheduler="lms")


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


SLIDER = "(the slider takes any other step apart)"


def test_cfg_parts_endpoint_ends_on_the_step_where_the_predictions_differ_most(app_url):
    """The run ends showing the four pictures of the step that its plot puts highest, not the last step, where all
    three x0 agree."""
    client = Client(app_url, verbose=False)
    parts, status, plot, progress = client.predict(prompt="a red circle", negative_prompt="", **SETTINGS,
                                                   api_name="/cfg_parts")
    assert [item["caption"] for item in parts] == ["unconditional x0", "text x0", "guided x0", "noise prediction"]
    steps, distances = zip(*plot["data"])
    assert steps == (1, 2, 3, 4) and distances[-1] < max(distances)
    widest = steps[distances.index(max(distances))]
    assert status.startswith("step 4 / 4 · ") and " · done · " in status
    assert f"\nShown, where the two predictions differ most {SLIDER}: step {widest} / 4 · " in status
    assert progress["state"] == "done" and progress["step"] == 4


@pytest.mark.parametrize("endpoint, entries, captions, change", [
    ("/cfg_sweep", "1,7.123456789", ["CFG 1", "CFG 7.123456789"], lambda v: {"guidance_scale": float(v)}),
    ("/compare_samplers", "euler,ddim:3", ["euler", "ddim:3"],
     lambda v: {"scheduler": v.split(":")[0], "steps": int(v.split(":")[1]) if ":" in v else 4}),
    ("/compare_seeds", "1,2", ["seed 1", "seed 2"], lambda v: {"seed": int(v)}),
])
def test_each_entry_equals_the_same_run_on_txt2img(app_url, endpoint, entries, captions, change):
    client = Client(app_url, verbose=False)
    outputs = client.predict(prompt="a red circle", negative_prompt="", entries=entries, **SETTINGS,
                             api_name=endpoint)
    strip, progress = outputs[0], outputs[-1]
    assert [item["caption"] for item in strip] == captions and progress["state"] == "done"
    for item, entry in zip(strip, entries.split(",")):
        alone = client.predict(prompt="a red circle", negative_prompt="", **(SETTINGS | change(entry)),
                               api_name="/txt2img")[3]
        assert np.abs(pixels(item["image"]) - pixels(alone)).max() == 0, (endpoint, entry)


def test_a_random_seed_in_a_comparison_is_shown_as_the_seed_it_drew(app_url):
    client = Client(app_url, verbose=False)
    outputs = client.predict(prompt="a red circle", negative_prompt="", entries="-1,5", **SETTINGS,
                             api_name="/compare_seeds")
    strip, status, progress = outputs[0], outputs[1], outputs[-1]
    drawn = int(strip[0]["caption"].removeprefix("seed "))
    assert 0 <= drawn < 2**32 and [item["caption"] for item in strip][1:] == ["seed 5"]
    assert progress["seeds"] == [drawn, 5] and progress["entries"] == [str(drawn), "5"]
    assert f"seeds {drawn}, 5" in status
    alone = client.predict(prompt="a red circle", negative_prompt="", **(SETTINGS | {"seed": drawn}),
                           api_name="/txt2img")[3]
    assert np.abs(pixels(strip[0]["image"]) - pixels(alone)).max() == 0


def test_the_scale_sweep_ends_with_a_gif_and_the_sampler_plots(app_url):
    client = Client(app_url, verbose=False)
    *_, gif, _ = client.predict(prompt="a red circle", negative_prompt="", entries="1,3,7.5", **SETTINGS,
                                api_name="/cfg_sweep")
    assert Image.open(gif).n_frames == 3
    _, status, movement, sigmas, _ = client.predict(prompt="a red circle", negative_prompt="", entries="lms,euler:3",
                                                    **SETTINGS, api_name="/compare_samplers")
    assert " · done · seed 3 · steps run: lms 4 / 4, euler:3 3 / 3" in status  # the lead's step alone would hide it
    assert sorted({row[0] for row in movement["data"]}) == ["euler:3", "lms"]
    assert len([row for row in sigmas["data"] if row[0] == "euler:3"]) == 3


def test_a_bad_list_gets_a_clear_error_through_the_api(app_url):
    with pytest.raises(Exception, match="seeds takes at most 12 entries, got 13"):
        Client(app_url, verbose=False).predict(prompt="a red circle", negative_prompt="",
                                               entries=",".join(map(str, range(13))), **SETTINGS,
                                               api_name="/compare_seeds")
