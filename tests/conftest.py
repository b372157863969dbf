"""Shared fixtures: a tiny random Stable Diffusion in diffusers format (core.sd_folder's TINY shape), built
once per test session, and the app started as a user starts it.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from gradio_client import Client

import core.sampler
from core.engine import Engine
from core.models import ModelBundle, load_bundle, load_toy, serving_threads, torch_threads
from core.sd_folder import build_random_sd

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    return build_random_sd(tmp_path_factory.mktemp("tiny-sd"))


def add_small_safety_checker(folder: Path) -> Path:
    """A random, small diffusers StableDiffusionSafetyChecker and its feature extractor in a model folder's
    safety_checker/ and feature_extractor/, as SD v1.4 and v1.5 ship theirs."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2},
                        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=8)
    StableDiffusionSafetyChecker(config).save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "feature_extractor")
    return folder


@pytest.fixture(scope="session")
def tiny_sd_dir_with_checker(tiny_sd_dir, tmp_path_factory) -> Path:
    """The tiny model with a safety checker of its own: what a public link of real weights loads."""
    folder = tmp_path_factory.mktemp("tiny-sd-checked") / "model"
    shutil.copytree(tiny_sd_dir, folder)
    return add_small_safety_checker(folder)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_sd_dir) -> ModelBundle:
    return load_bundle(str(tiny_sd_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_sd_dir) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)


@pytest.fixture(scope="session")
def toy_engine() -> Engine:
    """The trained toy world model shipped in core/toyworld/model."""
    return Engine(load_toy(device="cpu", dtype="float32"))


def as_the_app_runs():
    """torch's CPU threads as the app sets them, for a reference run compared bit for bit with an app's images
    (another thread count sums in another order)."""
    return torch_threads(serving_threads(torch.device("cpu")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(*args: str, env: dict | None = None, timeout: float = 120,
              until: str | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    """Run `python app.py ARGS` as a user would; return the process once it prints its local URL (and then a
    line matching `until`, when given), with its URL and the lines printed after the URL line.

    The rest of its output is drained in the background; only this function reads it before that, so no
    line can be lost to the draining."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})
    killer = threading.Timer(timeout, proc.kill)  # a hung start fails the test instead of hanging it
    killer.start()
    lines, url, after = [], None, []
    try:
        for line in proc.stdout:
            lines.append(line)
            if url is not None:
                after.append(line)
            elif match := re.search(r"Running on local URL:\s+(\S+)", line):
                url = match.group(1)
            if url is not None and (until is None or (after and re.search(until, after[-1]))):
                threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
                return proc, url, after
    finally:
        killer.cancel()
    raise AssertionError("the app did not start:\n" + "".join(lines))


@contextmanager
def toy_app(*flags: str, download_files: bool = False) -> Iterator[Client]:
    """`python app.py --model toy FLAGS`, and a client of it (that by default downloads nothing); stopped on
    leaving."""
    proc, url, _ = start_app("--model", "toy", "--port", str(free_port()), *flags)
    try:
        yield Client(url, verbose=False, download_files=download_files)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def app_tmp(tmp_path_factory) -> Path:
    """The temporary folder of the app behind `app_url`."""
    return tmp_path_factory.mktemp("app-tmp")


@pytest.fixture(scope="session")
def app_url(tiny_sd_dir, app_tmp):
    proc, url, _ = start_app("--model", str(tiny_sd_dir), "--port", str(free_port()), env={"TMPDIR": str(app_tmp)})
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(params=[False, True], ids=["decoded-in-the-step", "decoded-beside-the-next-step"])
def overlap(request, monkeypatch) -> bool:
    """Runs a test with previews decoded in each step, and on a thread of their own beside the next step."""
    monkeypatch.setattr(core.sampler, "_overlapped", lambda bundle: request.param)
    return request.param
