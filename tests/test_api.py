"""The running app (`python app.py` on the tiny model) driven through gradio_client, as scripts use it."""
import html
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from core.engine import Engine
from core.sampler import Settings
from tests.conftest import as_the_app_runs

STATUS, X_T, X0, RESULT = 2, 0, 1, 3
EXAMPLE = Path(__file__).resolve().parents[1] / "ui" / "assets" / "examples" / "red-heart.png"


def txt2img(client, prompt="a red circle", negative_prompt="", steps=12, guidance_scale=7.5, seed=7,
            width=64, height=64, preview_every=1, scheduler="lms", **more):
    return client.submit(prompt=prompt, negative_prompt=negative_prompt, steps=steps,
                         guidance_scale=guidance_scale, seed=seed, width=width, height=height,
                         preview_every=preview_every, scheduler=scheduler, **more, api_name="/txt2img")


def image_paths(outputs, index):
    return [out[index] for out in outputs if isinstance(out[index], str)]


def test_txt2img_streams_every_preview_frame(app_url, app_tmp):
    client = Client(app_url, verbose=False)
    outputs = list(txt2img(client, steps=12))
    x0s, x_ts = image_paths(outputs, X0), image_paths(outputs, X_T)
    assert len(x0s) == len(set(x0s)) == 12 and len(x_ts) == 12
    statuses = [out[STATUS] for out in outputs if isinstance(out[STATUS], str)]
    assert [s.split(" · ")[0] for s in statuses[:12]] == [f"step {i} / 12" for i in range(1, 13)]
    assert " · done · " in statuses[-1] and "seed 7" in statuses[-1]
    assert Image.open(image_paths(outputs, RESULT)[-1]).size == (64, 64)
    mp4, gif = client.predict(fps=4, api_name="/txt2img_video")
    assert mp4.endswith("sdlens-txt2img-x0-seed7.mp4") and gif.endswith("sdlens-txt2img-x0-seed7.gif")
    gif = Image.open(gif)
    assert gif.n_frames == 12 and gif.info["duration"] == 250  # 4 frames a second
    # x_t | x0, each 64 px scaled up 8x, over a white band with the step burnt in
    assert gif.width == 2 * 512 + 4 and gif.height > 512
    band = np.asarray(gif.convert("L").crop((0, 512, gif.width, gif.height)))
    assert np.median(band) == 255 and band.min() < 100  # dark writing on white (the GIF palette may lift black)
    assert list(app_tmp.glob("sdlens-*")) == []  # the app keeps no copy outside gradio's expiring cache


PROGRESS = -1  # the last output of every streaming endpoint: where the run stands, as plain fields


def test_the_last_message_carries_the_final_images_and_plain_progress(app_url):
    client = Client(app_url, verbose=False)
    x_t, x0, status, result, *_, progress = txt2img(client, steps=5, seed=9).result()
    assert Image.open(result).size == (64, 64)
    # previews every step: "fast", which on this random model is the VAE (no linear map fits its colours)
    assert Image.open(x_t).size == Image.open(x0).size == (64, 64)
    assert status == "step 5 / 5 · timestep 0.0 · sigma 0.0292 · done · seed 9"  # plain text, no markdown
    assert progress == {"step": 5, "steps": 5, "timestep": 0.0, "sigma": pytest.approx(0.0292, abs=1e-4),
                        "state": "done", "seed": 9, "notes": []}
    streamed = list(txt2img(client, steps=5, seed=9))
    assert [out[PROGRESS]["state"] for out in streamed] == ["running"] * 4 + ["done"]
    assert [out[PROGRESS]["step"] for out in streamed] == [1, 2, 3, 4, 5]


def test_every_streaming_endpoint_returns_its_final_images_to_predict(app_url):
    client = Client(app_url, verbose=False)
    settings = dict(steps=3, guidance_scale=7.5, seed=3, width=64, height=64, preview_every=1, scheduler="lms")
    image = handle_file(str(EXAMPLE))
    calls = {  # endpoint: (parameters, positions of the images its last message must carry)
        "/txt2img": (dict(prompt="a red circle", negative_prompt=""), (X_T, X0, RESULT)),
        "/img2img": (dict(image=image, prompt="a red circle", negative_prompt="", strength=0.6),
                     (0, 1, 3, 4, 6)),  # the input as taken, the start, x_t, x0, the result
        "/guided": (dict(prompt="a red circle", negative_prompt="", loss="blue", color="#0000ff", level=0.5,
                         loss_scale=50, every=2, mode="cheap"), (1, 2, 3, 5)),  # unguided, x_t, x0, result
        "/swap_token": (dict(prompt="a red circle", token="red", replacement="blue"), (0, 1)),
        "/mix_tokens": (dict(prompt="a red circle", token="red", word_a="red", word_b="blue", weight=0.5), (0, 1)),
        "/mix_prompts": (dict(prompt_a="a red circle", prompt_b="a blue star", factor=0.5), (X_T, X0, RESULT)),
    }
    for endpoint, (parameters, images) in calls.items():
        if endpoint == "/img2img":
            parameters |= {key: settings[key] for key in settings if key not in ("width", "height")}
        else:
            parameters |= settings
        outputs = client.predict(**parameters, api_name=endpoint)
        assert all(isinstance(outputs[i], str) and Image.open(outputs[i]).width in (8, 64) for i in images), endpoint
        assert outputs[PROGRESS]["state"] == "done" and outputs[PROGRESS]["step"] == 3, endpoint
    plot = client.predict(**calls["/guided"][0], api_name="/guided")[0]
    assert [row[0] for row in plot["data"]] == [1, 3]  # the loss of each guided step, in the last message too


def test_video_before_any_run_says_what_to_do(app_url):
    with pytest.raises(Exception, match="There is no run to make a video of yet: press Generate first"):
        Client(app_url, verbose=False).predict(api_name="/txt2img_video")


def test_preview_every_n(app_url):
    outputs = list(txt2img(Client(app_url, verbose=False), steps=10, preview_every=4))
    assert len(image_paths(outputs, X0)) == 3  # steps 4, 8 and the last
    assert len(image_paths(outputs, RESULT)) == 1


def test_api_image_equals_the_engine_alone(app_url, tiny_bundle):
    outputs = list(txt2img(Client(app_url, verbose=False), prompt="a blue star", negative_prompt="red",
                           steps=6, seed=11, preview_every=0))
    served = Image.open(image_paths(outputs, RESULT)[-1]).convert("RGB")
    with as_the_app_runs():
        run = Engine(tiny_bundle).txt2img("a blue star", "red", Settings(steps=6, seed=11, height=64, width=64,
                                                                          preview_every=0))
        alone = list(run.frames)[-1].image
    assert list(served.getdata()) == list(alone.getdata())


def test_stop_ends_the_run_and_the_app_keeps_serving(app_url):
    client = Client(app_url, verbose=False)
    job = txt2img(client, steps=200)
    outputs = []
    for out in job:
        outputs.append(out)
        if len(outputs) == 4:
            client.predict(api_name="/stop")
    steps_run = len(image_paths(outputs, X0))  # the stream lags the server; "within one step" is a core test
    assert 4 <= steps_run < 100
    assert " · stopped · " in outputs[-1][STATUS]
    assert len(image_paths(list(txt2img(client, steps=3)), X0)) == 3


@pytest.mark.parametrize("change, message", [
    ({"width": 68}, "width must be a multiple of 8 from 64 to 128, got 68"),
    ({"prompt": "x" * 5000}, "prompt must be at most 4000 characters, got 5000"),
    ({"scheduler": "heun"}, "Sampler takes one of 'lms', 'euler', 'ddim', 'dpm++', 'optim', got 'heun'"),
    ({"previews": "bogus"}, "Previews decoded by takes one of 'auto', 'fast', 'full', got 'bogus'"),
    ({"seed": None}, "seed is empty: enter a number"),
    ({"seed": 1.5}, "seed must be a whole number, got 1.5"),
    ({"steps": 2.5}, "steps must be a whole number, got 2.5"),
    ({"width": 4096}, "Width takes 64 to 128, got 4096"),
    ({"steps": "abc"}, "Steps takes a number from 1 to 200, got 'abc'"),
    ({"seed": "abc"}, "seed must be a number, got 'abc'"),
])
def test_bad_input_gets_a_clear_error(app_url, change, message):
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match=re.escape(message)):
        txt2img(client, **change).result()
    assert len(image_paths(list(txt2img(client, steps=2)), X0)) == 2


def test_numbers_sent_as_text_run_as_those_numbers(app_url):
    """A script that read its settings from a CSV or the command line sends "3" and "7.5": the same run."""
    client = Client(app_url, verbose=False)
    as_text = txt2img(client, steps="3", guidance_scale="7.5", seed="5").result()
    as_numbers = txt2img(client, steps=3, guidance_scale=7.5, seed=5).result()
    assert image_paths([as_text], X0) and np.array_equal(*(np.asarray(Image.open(run[RESULT]))
                                                           for run in (as_text, as_numbers)))


# --- image to image, the VAE, the noise schedule ---

I2I_STATUS, I2I_X0, I2I_RESULT, I2I_ABOUT, I2I_START = 5, 4, 6, 2, 1


def img2img(client, image=EXAMPLE, prompt="a red circle", strength=0.6, steps=10, seed=7, preview_every=1):
    return client.submit(image=handle_file(str(image)), prompt=prompt, negative_prompt="", strength=strength,
                         steps=steps, guidance_scale=7.5, seed=seed, preview_every=preview_every, scheduler="lms",
                         api_name="/img2img")


def test_img2img_shows_the_start_then_streams_the_remaining_steps(app_url):
    outputs = list(img2img(Client(app_url, verbose=False), strength=0.6, steps=10))
    assert "skip the first 4 steps" in outputs[0][I2I_ABOUT] and isinstance(outputs[0][I2I_START], str)
    statuses = [out[I2I_STATUS] for out in outputs if isinstance(out[I2I_STATUS], str)]
    assert [s.split(" · ")[0] for s in statuses[:6]] == [f"step {i} / 10" for i in range(5, 11)]
    assert len(image_paths(outputs, I2I_X0)) == 6 and " · done · " in statuses[-1]


def test_img2img_left_to_its_defaults_runs_the_notebook_s_50_steps(app_url):
    job = Client(app_url, verbose=False).submit(image=handle_file(str(EXAMPLE)), prompt="a red circle", strength=0.1,
                                               preview_every=0, api_name="/img2img")
    outputs = list(job)
    assert "strength 0.1 with 50 steps: skip the first 45 steps" in outputs[0][I2I_ABOUT]
    status = outputs[-1][I2I_STATUS]
    assert status.startswith("step 50 / 50 · ") and " · done · seed 32" in status


def test_img2img_at_strength_zero_returns_the_round_trip(app_url, tiny_bundle):
    client = Client(app_url, verbose=False)
    list(img2img(client, strength=0.6))
    outputs = list(img2img(client, strength=0.0))
    assert outputs[-1][I2I_X0] is None and outputs[-1][I2I_X0 - 1] is None  # no step: x_t and x0 cleared
    served = Image.open(image_paths(outputs, I2I_RESULT)[-1]).convert("RGB")
    alone = Engine(tiny_bundle).views.vae_view(str(EXAMPLE)).reconstruction
    assert list(served.getdata()) == list(alone.getdata())


@pytest.mark.parametrize("content, message", [
    (b"these are my notes", "bad.png is not an image that can be read"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "bad.png is not an image that can be read"),
])
def test_bad_images_get_a_clear_error_and_the_app_keeps_serving(app_url, tmp_path, content, message):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    client = Client(app_url, verbose=False)
    for call in (lambda: img2img(client, image=bad).result(),
                 lambda: client.predict(handle_file(str(bad)), "none", 0, api_name="/vae"),
                 lambda: client.predict(handle_file(str(bad)), 10, "lms", 3, 1, api_name="/add_noise")):
        with pytest.raises(Exception, match=message):
            call()
    served = img2img(client, steps=4).result()  # the app still serves this session
    assert Image.open(served[I2I_RESULT]).size == (64, 64) and " · done · " in served[I2I_STATUS]


def test_vae_schedule_and_add_noise_endpoints(app_url):
    client = Client(app_url, verbose=False)
    fitted, reconstruction, about, channels, difference, edited = client.predict(
        handle_file(str(EXAMPLE)), "1", 0, api_name="/vae")
    assert "64x64x3 -> 8x8x4: 48x fewer numbers" in about and "PSNR" in about
    assert [c["caption"].split(":")[0] for c in channels] == ["ch 0", "ch 1", "ch 2", "ch 3"]
    assert Image.open(edited).size == (64, 64)
    with pytest.raises(Exception, match=re.escape("channel ... takes one of 'none', '0', '1', '2', '3', got 2")):
        client.predict(handle_file(str(EXAMPLE)), 2, 0, api_name="/vae")  # a number, where the menu offers text
    table, plot, explain = client.predict(15, "lms", api_name="/schedule")
    assert [round(row[2], 4) for row in table["data"][:3]] == [14.6146, 9.6826, 6.678]
    assert "init_noise_sigma = 14.6146" in explain
    assert "⚠️" not in explain
    assert client.predict(1, "euler", api_name="/schedule")[2].startswith(
        "⚠️ euler with 1 step starts at timestep 0, not near 999: its start noise is scaled down")
    noised, about, row = client.predict(handle_file(str(EXAMPLE)), 15, "lms", 7, 1, api_name="/add_noise")
    assert about.startswith("step 7 · timestep") and len(row) == 6
    # steps count from 1 here as in a run's status line: step 7 is the table's 7th row
    assert table["data"][6][0] == 7 and f"sigma {table['data'][6][2]:.4f}" in about
    assert "· seed 1" in about and "the UNet still finds the picture in them" in about  # noise that hides it
    assert row[0]["caption"].startswith("1: σ 14.61") and row[-1]["caption"].startswith("15: σ")
    # a step past a script's own count: its range, counted as the page counts (the slider's page range is 30)
    for step in (12, 50):
        with pytest.raises(Exception, match=re.escape(f"step must be from 1 to 10 (the steps; 1 = the noisiest), "
                                                      f"got {step}")):
            client.predict(handle_file(str(EXAMPLE)), 10, "lms", step, 1, api_name="/add_noise")


def test_guided_streams_the_loss_and_ends_beside_the_unguided_run(app_url):
    client = Client(app_url, verbose=False)
    outputs = list(client.submit(
        prompt="a red circle", negative_prompt="", loss="color", color="#ffff00", level=0.5, loss_scale=50,
        every=3, start=1, mode="cheap", steps=8, guidance_scale=7.5, seed=7, width=64, height=64, preview_every=1,
        scheduler="lms", api_name="/guided"))
    plots = [out[0] for out in outputs if isinstance(out[0], dict) and "data" in out[0]]
    assert [row[0] for row in plots[-1]["data"]] == [2, 5, 8]  # the guided steps, 1-based, after the first
    assert len(image_paths(outputs, 3)) == 8 and " · done · " in outputs[-1][4]
    assert isinstance(outputs[-1][1], str)  # the unguided image, in the last message with the rest
    with pytest.raises(Exception, match="loss guidance runs with the samplers lms and euler"):
        client.predict(prompt="a red circle", negative_prompt="", loss="blue", color="#0000ff", level=0.5,
                       loss_scale=50, every=3, mode="cheap", steps=4, guidance_scale=7.5, seed=7, width=64,
                       height=64, preview_every=1, scheduler="ddim", api_name="/guided")
    # a start past a script's own steps: the run's range (the page's slider follows its steps, a script's does not)
    with pytest.raises(Exception, match=re.escape("start (the first steps left unguided) must be a whole number "
                                                  "from 0 to 3, got 100")):
        client.predict(prompt="a red circle", negative_prompt="", loss="blue", color="#0000ff", level=0.5,
                       loss_scale=50, every=3, start=100, mode="cheap", steps=4, guidance_scale=7.5, seed=7,
                       width=64, height=64, preview_every=1, scheduler="lms", api_name="/guided")


# --- the text lab ---

def test_tokenize_endpoint(app_url):
    table, proof, token_heat, position_heat = Client(app_url, verbose=False).predict(
        "A picture of a puppy.", api_name="/tokenize")
    assert [row[1] for row in table["data"][:8]] == [49406, 320, 1674, 539, 320, 6829, 269, 49407]
    assert table["data"][8][2] == "69 x <|endoftext|> (padding to 77)"
    assert "max abs difference **0**" in proof and "reads bytes" not in proof


def test_tokenize_says_why_an_emoji_reads_as_odd_symbols(app_url):
    table, proof, *_ = Client(app_url, verbose=False).predict("a 🌟 star", api_name="/tokenize")
    assert table["data"][2][2] == "ðŁĮŁ</w>"
    assert "CLIP's tokenizer reads bytes" in proof and "ðŁĮŁ for 🌟" in proof


def test_swap_token_streams_both_runs(app_url):
    outputs = list(Client(app_url, verbose=False).submit(
        prompt="a picture of a puppy", token="puppy", replacement="cat", steps=5, guidance_scale=7.5, seed=3,
        width=64, height=64, preview_every=1, scheduler="lms", api_name="/swap_token"))
    assert len(image_paths(outputs, 0)) == len(image_paths(outputs, 1)) == 5
    assert " · done · " in outputs[-1][2] and "token 5 → 'cat'" in outputs[-1][2]
    assert "⚠️" not in outputs[-1][2]
    one_step = Client(app_url, verbose=False).predict(
        prompt="a picture of a puppy", token="puppy", replacement="cat", steps=1, guidance_scale=7.5, seed=3,
        width=64, height=64, preview_every=1, scheduler="euler", api_name="/swap_token")
    assert one_step[2].count("⚠️ euler with 1 step starts at timestep 0") == 1  # the pair's note, said once
    with pytest.raises(Exception, match="'stegosaurus' is 3 tokens"):
        Client(app_url, verbose=False).predict(
            prompt="a picture of a puppy", token="puppy", replacement="stegosaurus", steps=5, guidance_scale=7.5,
            seed=3, width=64, height=64, preview_every=1, scheduler="lms", api_name="/swap_token")


def test_learned_embeddings_stay_with_the_user_who_loaded_them(app_url, tmp_path):
    torch.save({"<thing>": torch.randn(32)}, tmp_path / "learned_embeds.bin")
    owner, other = Client(app_url, verbose=False), Client(app_url, verbose=False)
    loaded, choices = owner.predict(handle_file(str(tmp_path / "learned_embeds.bin")), api_name="/load_embedding")
    assert "<thing>" in loaded
    run = dict(prompt="a <thing> on a table", token="", learned_token="<thing>", steps=3, guidance_scale=7.5,
               seed=3, width=64, height=64, preview_every=1, scheduler="lms", api_name="/textual_inversion")
    outputs = list(owner.submit(**run))
    assert " · done · " in outputs[-1][2] and len(image_paths(outputs, 1)) == 3
    with pytest.raises(Exception, match="No embeddings are loaded"):
        other.predict(**run)
    with pytest.raises(Exception) as refused:  # two runs of it would be one picture twice
        owner.predict(**(run | {"prompt": "a <nope> on a table"}))
    assert ("The prompt 'a <nope> on a table' holds none of the loaded tokens (<thing>): write one in it, or name a "
            "word of it") in html.unescape(str(refused.value))  # the page shows messages as HTML
    with pytest.raises(Exception, match=re.escape("This model has no embeddings of its own: upload a file")):
        other.predict(api_name="/load_model_embeddings")


def test_prompt_mix_and_sweep_endpoints(app_url):
    client = Client(app_url, verbose=False)
    settings = dict(steps=4, guidance_scale=7.5, seed=3, width=64, height=64, preview_every=1, scheduler="lms")
    outputs = list(client.submit(prompt_a="a red circle", prompt_b="a blue star", factor=0.3, **settings,
                                 api_name="/mix_prompts"))
    assert len(image_paths(outputs, X0)) == 4 and "0.3 x A + 0.7 x B" in outputs[-1][STATUS]
    strip, gif, status = client.predict(prompt_a="a red circle", prompt_b="a blue star", count=3, **settings,
                                        api_name="/prompt_sweep")
    assert status == "sweep from A to B · image 3 of 3 · done · seed 3"
    drawn, _, status = client.predict(prompt_a="", prompt_b="a blue star", count=2, **(settings | {"seed": -1}),
                                      api_name="/prompt_sweep")
    seed = int(re.search(r"image 2 of 2 · done · seed (\d+)\n", status).group(1))  # drawn, once for the sweep
    assert status.endswith("\n⚠️ Prompt A is empty: CLIP encodes it as no text at all")
    named, _, _ = client.predict(prompt_a="", prompt_b="a blue star", count=2, **(settings | {"seed": seed}),
                                 api_name="/prompt_sweep")
    assert [Image.open(item["image"]).tobytes() for item in drawn] == [Image.open(item["image"]).tobytes()
                                                                       for item in named]  # the seed it names
    assert [item["caption"] for item in strip] == ["1.00", "0.50", "0.00"]  # from A to B
    assert all(Image.open(item["image"]).format == "PNG" for item in strip)  # lossless: the ends equal plain runs
    assert Image.open(gif).n_frames == 3


# --- show the code ---

TXT2IMG_PARAMETERS = dict(prompt="a red circle", negative_prompt="", steps=12, guidance_scale=7.5, seed=7,
                          width=64, height=64, preview_every=1, previews="auto", scheduler="lms")


def test_code_writes_a_tabs_script_from_its_named_parameters(app_url, tiny_bundle):
    from core.code import Scripts

    client = Client(app_url, verbose=False)
    code = client.predict("txt2img", TXT2IMG_PARAMETERS, api_name="/code")
    settings = Settings(steps=12, guidance_scale=7.5, seed=7, height=64, width=64, preview_every=1)
    assert code.strip() == Scripts(Engine(tiny_bundle)).txt2img("a red circle", "", settings).strip()  # gr.Code strips
    left_out = client.predict("txt2img", {"prompt": "a red circle"}, api_name="/code")  # the tab's defaults
    engine = Engine(tiny_bundle)
    assert left_out.strip() == Scripts(engine).txt2img("a red circle", "", engine.default_settings()).strip()
    image = client.predict("img2img", {"prompt": "a cat"}, api_name="/code")  # the example image, as /img2img
    # the example's own file, not the app's expiring copy of it
    assert "image_path = '" + str(EXAMPLE.with_name("green-star.png")) + "'  # ui/assets/examples/green-star.png in " \
           "the SD Lens repository" in image
    swap_parameters = {k: v for k, v in TXT2IMG_PARAMETERS.items() if k != "negative_prompt"}
    swap = client.predict("swap_token", swap_parameters | {"token": "red", "replacement": "blue"}, api_name="/code")
    assert "position = 2  # red -> 1 x blue" in swap and "seed = 7" in swap
    sweep = client.predict("cfg_sweep", TXT2IMG_PARAMETERS | {"entries": "1, 5"}, api_name="/code")
    assert "guidance_scales = [1.0, 5.0]" in sweep and "for guidance_scale in guidance_scales:" in sweep
    maps = client.predict("attention", TXT2IMG_PARAMETERS | {"parts": ["up"], "cells": [16], "opacity": 0.5,
                                                             "scale": "one", "token": 1}, api_name="/code")
    assert "step_weights.append(" in maps and "'down_blocks" not in maps and "'up_blocks" in maps


@pytest.mark.parametrize("tab, parameters, message", [
    ("vae", {}, "tab must be one of txt2img, img2img, swap_token, mix_tokens, textual_inversion, mix_prompts, "
                "guided, attention, cfg_parts, cfg_sweep, compare_samplers, compare_seeds, got 'vae'"),
    ("compare_samplers", {**TXT2IMG_PARAMETERS, "entries": "lms, optim"}, "'optim' is this app's own"),
    ("textual_inversion", {"prompt": "a cat"}, "textual_inversion takes prompt, token, learned_token, steps, "
                                               "guidance_scale, seed, width, height, preview_every, previews, "
                                               "scheduler; missing: learned_token"),
    ("txt2img", {**TXT2IMG_PARAMETERS, "strength": 1}, "unknown: strength"),
    ("txt2img", {**TXT2IMG_PARAMETERS, "steps": 0}, "steps must be a whole number from 1 to 200, got 0"),
])
def test_code_says_what_is_wrong_with_its_input(app_url, tab, parameters, message):
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match=re.escape(message)):
        client.predict(tab, parameters, api_name="/code")


def test_every_endpoint_names_what_it_returns(app_url):
    """view_api names each output by its label: a status line or a plot without one reads as "value_38"."""
    endpoints = Client(app_url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    unnamed = [(name, output["component"]) for name, endpoint in endpoints.items()
               for output in endpoint["returns"] if re.fullmatch(r"value_\d+", output["label"] or "value_0")]
    assert "/txt2img" in endpoints and not unnamed, unnamed


def test_every_generation_endpoint_runs_with_its_parameters_left_out(app_url):
    """A script may leave out any parameter of a run, as of /txt2img: each takes the page's starting value."""
    endpoints = Client(app_url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    required = {name: [p["parameter_name"] for p in endpoints[name]["parameters"] if not p["parameter_has_default"]]
                for name in ("/txt2img", "/guided", "/swap_token", "/mix_tokens", "/textual_inversion",
                             "/mix_prompts", "/attention")}
    # but the loaded token to put in place: the tiny model ships no embeddings, so a script names the one it loads
    assert {name: names for name, names in required.items() if names} == {"/textual_inversion": ["learned_token"]}


def test_a_token_picker_is_described_to_scripts_as_any_text(app_url):
    """It takes a word of the prompt or a position typed in, not only the positions it first offers."""
    endpoints = Client(app_url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    token = next(p for p in endpoints["/swap_token"]["parameters"] if p["parameter_name"] == "token")
    assert token["python_type"]["type"] == "str"  # was Literal['1', ..., '5']: the first prompt's positions
