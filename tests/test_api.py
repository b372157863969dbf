"""The running app (`python app.py` on the tiny model) driven through gradio_client, as scripts use it."""
import pytest
from gradio_client import Client
from PIL import Image

from core.engine import Engine
from core.sampler import Settings

STATUS, X_T, X0, RESULT = 2, 0, 1, 3


def txt2img(client, prompt="a red circle", negative_prompt="", steps=12, guidance_scale=7.5, seed=7,
            width=64, height=64, preview_every=1, scheduler="lms"):
    return client.submit(prompt=prompt, negative_prompt=negative_prompt, steps=steps,
                         guidance_scale=guidance_scale, seed=seed, width=width, height=height,
                         preview_every=preview_every, scheduler=scheduler, api_name="/txt2img")


def image_paths(outputs, index):
    return [out[index] for out in outputs if isinstance(out[index], str)]


def test_txt2img_streams_every_preview_frame(app_url, app_tmp):
    client = Client(app_url, verbose=False)
    outputs = list(txt2img(client, steps=12))
    x0s, x_ts = image_paths(outputs, X0), image_paths(outputs, X_T)
    assert len(x0s) == len(set(x0s)) == 12 and len(x_ts) == 12
    statuses = [out[STATUS] for out in outputs if isinstance(out[STATUS], str)]
    assert [s.split(" · ")[0] for s in statuses[:12]] == [f"step {i} / 12" for i in range(1, 13)]
    assert "**done**" in statuses[-1] and "seed 7" in statuses[-1]
    assert Image.open(image_paths(outputs, RESULT)[-1]).size == (64, 64)
    mp4, gif = client.predict(api_name="/export_video")
    assert mp4.endswith("sdlens-x0-seed7.mp4") and gif.endswith("sdlens-x0-seed7.gif")
    assert Image.open(gif).n_frames == 12
    assert list(app_tmp.glob("sdlens-*")) == []  # the app keeps no copy outside gradio's expiring cache


def test_video_before_any_run_says_what_to_do(app_url):
    with pytest.raises(Exception, match="There is no run to make a video of yet: press Generate first"):
        Client(app_url, verbose=False).predict(api_name="/export_video")


def test_preview_every_n(app_url):
    outputs = list(txt2img(Client(app_url, verbose=False), steps=10, preview_every=4))
    assert len(image_paths(outputs, X0)) == 3  # steps 4, 8 and the last
    assert len(image_paths(outputs, RESULT)) == 1


def test_api_image_equals_the_engine_alone(app_url, tiny_bundle):
    outputs = list(txt2img(Client(app_url, verbose=False), prompt="a blue star", negative_prompt="red",
                           steps=6, seed=11, preview_every=0))
    served = Image.open(image_paths(outputs, RESULT)[-1]).convert("RGB")
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
    assert "**stopped**" in outputs[-1][STATUS]
    assert len(image_paths(list(txt2img(client, steps=3)), X0)) == 3


@pytest.mark.parametrize("change, message", [
    ({"width": 68}, "width must be a multiple of 8, got 68"),
    ({"prompt": "x" * 5000}, "prompt must be at most 4000 characters, got 5000"),
    ({"scheduler": "heun"}, "heun"),
    ({"seed": None}, "seed is empty: enter a number"),
    ({"width": 4096}, "Value 4096 is greater than maximum value 128"),
])
def test_bad_input_gets_a_clear_error(app_url, change, message):
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match=message):
        txt2img(client, **change).result()
    assert len(image_paths(list(txt2img(client, steps=2)), X0)) == 2
