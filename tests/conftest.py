"""Shared fixtures: a tiny random Stable Diffusion in diffusers format, built once per test session.

Same structure as SD v1 (CLIP text encoder with the real 49,408-token vocabulary, an 8x AutoencoderKL
with 4 latent channels, a cross-attention UNet, LMS with SD's betas), but small enough that a 64 px
image takes milliseconds a step on a CPU.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, LMSDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core.engine import Engine
from core.models import TOKENIZER_DIR, ModelBundle, load_bundle, load_toy

ROOT = Path(__file__).resolve().parents[1]
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    num_train_timesteps=1000, steps_offset=1)


def build_tiny_sd(folder: Path, seed: int = 0, latent_size: int = 8) -> Path:
    """Write a tiny random SD v1-shaped model to `folder` and return it; its native size is 8 x `latent_size`."""
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=8 * latent_size, scaling_factor=0.18215)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=LMSDiscreteScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


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
