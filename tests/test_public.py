"""Ready for the public: share link, password, uploads and files, a full queue, faults, many users at once."""
import functools
import inspect
import socket
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AuthenticationError
from PIL import Image

from core.engine import Engine
from core.models import load_bundle
from core.sampler import Settings
from tests.conftest import ROOT, as_the_app_runs, free_port, start_app
from tests.test_api import RESULT, STATUS, X0, image_paths, txt2img
from ui import build_app
from ui.common import GENERATE


def test_port_taken_is_one_line_before_loading_anything():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "app.py", "--model", "x/y", "--port", str(port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: port {port} on 127.0.0.1 is taken; pick another with --port"
    assert "Loading" not in proc.stdout


@pytest.fixture(scope="module")
def locked_app(tiny_sd_dir_with_checker):
    """Password from the environment, --share with no reachable share server (so the model's own safety
    checker loads, offline), a 1 kB upload limit."""
    proc, url, lines = start_app("--model", str(tiny_sd_dir_with_checker), "--port", str(free_port()), "--share",
                                 "--max-upload", "1kb", until="(?i)public",
                                 env={"SDLENS_AUTH": "teacher:s3cret",
                                      "GRADIO_SHARE_SERVER_ADDRESS": f"127.0.0.1:{free_port()}"})
    yield url, lines
    proc.terminate()
    proc.wait(timeout=30)


def test_share_without_a_share_server_says_so_in_one_line_and_serves(locked_app):
    url, lines = locked_app
    assert lines == ["* No public link: the share server cannot be reached (offline?); serving locally only.\n"]
    assert httpx.get(url).status_code == 200


def test_password_protects_page_and_api(locked_app):
    url, _ = locked_app
    config = httpx.get(f"{url}config")
    assert config.status_code == 401
    with pytest.raises(AuthenticationError, match="credentials were not provided. Please login."):
        Client(url, verbose=False)
    client = Client(url, auth=("teacher", "s3cret"), verbose=False)
    assert len(image_paths(list(txt2img(client, steps=2)), X0)) == 2


def test_uploads_above_the_limit_are_refused(locked_app):
    url, _ = locked_app
    with httpx.Client() as http:
        assert http.post(f"{url}login", data={"username": "teacher", "password": "s3cret"}).status_code == 200
        small = http.post(f"{url}gradio_api/upload", files={"files": ("a.txt", b"x" * 100)})
        big = http.post(f"{url}gradio_api/upload", files={"files": ("b.txt", b"x" * 5000)})
    assert small.status_code == 200
    assert big.status_code == 413 and "maximum allowed size of 1024 bytes" in big.text


def test_only_the_apps_own_files_are_served(app_url, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    for path in ("/etc/passwd", str(secret), str(ROOT / "app.py")):
        response = httpx.get(f"{app_url}gradio_api/file={path}")
        assert response.status_code in (403, 404), path
        assert "not for the web" not in response.text and "root:" not in response.text


def test_a_full_queue_turns_requests_away_with_a_message(tiny_sd_dir):
    proc, url, _ = start_app("--model", str(tiny_sd_dir), "--port", str(free_port()), "--queue-size", "1")
    try:
        first = Client(url, verbose=False)
        running = txt2img(first, steps=200)
        next(iter(running))  # the first run holds the only worker
        extra = [txt2img(Client(url, verbose=False), steps=2) for _ in range(4)]
        outcomes = []
        for job in extra:
            try:
                job.result()
                outcomes.append("served")
            except Exception as err:
                outcomes.append(str(err))
        first.predict(api_name="/stop")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert outcomes.count("served") == 1  # the one place in the queue
    refused = [o for o in outcomes if o != "served"]
    assert len(refused) == 3 and all("queue is full" in o.lower() for o in refused)


class Faults:
    """Makes the UNet fail on demand, as a bad GPU day would."""

    def __init__(self, unet):
        self.kind, self.after, self.calls = None, 0, 0
        self._forward = unet.forward
        unet.forward = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.kind and self.calls > self.after:
            kind, self.kind = self.kind, None
            if kind == "nan":
                out = self._forward(*args, **kwargs)
                out.sample.fill_(float("nan"))
                return out
            raise torch.OutOfMemoryError("CUDA out of memory") if kind == "oom" else RuntimeError("kaboom")
        return self._forward(*args, **kwargs)


@pytest.fixture(scope="module")
def faulty_app(tiny_sd_dir):
    bundle = load_bundle(str(tiny_sd_dir), device="cpu", dtype="float32")
    faults = Faults(bundle.unet)
    demo = build_app(Engine(bundle)).queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url, faults
    demo.close()


@pytest.mark.parametrize("kind, message", [
    ("oom", "Out of memory on cpu at 64x64: try a smaller width and height"),
    ("boom", "This run failed (RuntimeError: kaboom). The app is still running"),
    ("nan", "The latents became NaN or infinite at step 4: lower the guidance scale (now 7.5)"),
])
def test_a_run_failing_midway_shows_an_error_and_the_next_run_works(faulty_app, kind, message):
    url, faults = faulty_app
    client = Client(url, verbose=False)
    faults.kind, faults.after, faults.calls = kind, 3, 0
    job = txt2img(client, steps=8)
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        job.result()
    assert len(image_paths(job.outputs(), X0)) == 3  # the steps before the fault were streamed
    assert len(image_paths(list(txt2img(client, steps=4)), X0)) == 4


def test_eight_users_at_once_each_get_their_own_images(tiny_sd_dir, tiny_bundle):
    proc, url, _ = start_app("--model", str(tiny_sd_dir), "--port", str(free_port()), "--concurrency", "4")
    users = [(f"a shape number {i}", 100 + i) for i in range(8)]

    def use(prompt_seed):
        prompt, seed = prompt_seed
        return list(txt2img(Client(url, verbose=False), prompt=prompt, seed=seed, steps=10))

    try:
        with ThreadPoolExecutor(len(users)) as pool:
            results = list(pool.map(use, users))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    engine = Engine(tiny_bundle)
    for (prompt, seed), outputs in zip(users, results):
        statuses = [o[STATUS] for o in outputs if isinstance(o[STATUS], str)]
        assert len(image_paths(outputs, X0)) == 10
        assert all(f"seed {seed}" in s for s in statuses) and " · done · " in statuses[-1]
        served = Image.open(image_paths(outputs, RESULT)[-1]).convert("RGB")
        with as_the_app_runs():
            alone = list(engine.txt2img(prompt, "", Settings(steps=10, seed=seed, height=64, width=64)).frames)[-1]
        assert list(served.getdata()) == list(alone.image.getdata())


def test_on_zero_gpu_every_event_that_runs_the_model_asks_for_the_gpu(tiny_bundle, monkeypatch):
    """The `spaces` package's decorator wraps each event of the generation queue, and no other (here a stand-in
    for ZeroGPU's that counts the calls it lets through); a run through a wrapped event streams as before. Off
    ZeroGPU the real package leaves every handler as it is."""
    plain = build_app(Engine(tiny_bundle))
    assert not any(hasattr(event.fn, "zerogpu") for event in plain.fns.values())  # the real spaces, off ZeroGPU
    asked = []

    def gpu(fn, duration):
        def regular(*args, **kwargs):
            asked.append(fn.__name__)
            return fn(*args, **kwargs)

        def streaming(*args, **kwargs):
            asked.append(fn.__name__)
            yield from fn(*args, **kwargs)
        wrapped = functools.wraps(fn)(streaming if inspect.isgeneratorfunction(fn) else regular)
        wrapped.zerogpu = duration
        return wrapped

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    demo = build_app(Engine(tiny_bundle)).queue()
    wrapped = {event.name for event in demo.fns.values() if hasattr(event.fn, "zerogpu")}
    generating = {event.name for event in demo.fns.values() if event.concurrency_id == GENERATE}
    assert wrapped == generating and {"txt2img", "img2img", "guided", "vae", "cfg_parts"} <= wrapped
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        outputs = list(txt2img(Client(url, verbose=False), steps=4))
    finally:
        demo.close()
    assert asked == ["txt2img"] and len(image_paths(outputs, X0)) == 4
