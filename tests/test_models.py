"""Loading model bundles, and the app's one-line startup errors."""
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants

import app
import core.toyworld
from core import models
from core.defaults import EXAMPLE_FIELDS, ModelDefaults
from core.engine import Engine
from core.models import (SD_V1, TOY, ModelLoadError, auto_choice, load_bundle, load_model, resolve_device,
                         resolve_dtype)
from tests.conftest import ROOT, free_port
from ui import build_app
from ui.run_view import CFG_NOTE


def test_tiny_bundle_shape(tiny_bundle):
    assert tiny_bundle.vae_scale_factor == 8
    assert tiny_bundle.latent_channels == 4
    assert tiny_bundle.native_size == 64 and tiny_bundle.max_side == 128
    assert tiny_bundle.max_length == 77
    assert tiny_bundle.scheduler_config["beta_schedule"] == "scaled_linear"
    assert not any(p.requires_grad for p in tiny_bundle.unet.parameters())
    assert "2.7M parameters" in tiny_bundle.describe()


def test_folder_missing_parts_is_named(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match="missing tokenizer, text_encoder, vae, scheduler"):
        load_bundle(str(tmp_path))


def test_missing_folder_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(ModelLoadError, match="No model folder at"):
        load_bundle(str(tmp_path / "nope"))


@pytest.fixture
def closed_hub(monkeypatch):
    """A Hub endpoint on a closed loopback port: unreachable at once, and no traffic leaves the machine."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


def test_unreachable_hub_fails_fast_with_advice(closed_hub):
    with pytest.raises(ModelLoadError) as err:
        load_bundle("sdlens-tests/no-such-model")
    assert f"The Hugging Face Hub ({closed_hub}) cannot be reached" in str(err.value)
    assert "'sdlens-tests/no-such-model'" in str(err.value)
    assert "--model /path/to/folder" in str(err.value)


def test_device_and_dtype_choices():
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError, match="dtype must be auto, float32, float16, bfloat16, got 'int8'"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda, cuda:N or mps, got 'gpu0'"):
        resolve_device("gpu0")


def test_the_app_keeps_a_cpu_core_for_serving_the_page(monkeypatch):
    """On a CPU the model gets all of torch's threads but one (or --threads); a GPU leaves torch's choice."""
    monkeypatch.setattr(models, "TORCH_THREADS", 16)
    assert models.serving_threads(torch.device("cpu")) == 15
    assert models.serving_threads(torch.device("cuda")) == 16
    assert models.serving_threads(torch.device("cpu"), requested=4) == 4
    threads = torch.get_num_threads()
    try:
        app.load_engine(app.parse_args(["--model", "toy", "--device", "cpu"]))
        assert torch.get_num_threads() == 15
        app.load_engine(app.parse_args(["--model", "toy", "--device", "cpu", "--threads", "3"]))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(models, "TORCH_THREADS", 1)
    assert models.serving_threads(torch.device("cpu")) == 1


@pytest.mark.parametrize("args, message", [
    (["--model", "sdlens-tests/no-such-model"], "error: Could not load model 'sdlens-tests/no-such-model'"),
    (["--model", "./no/such/folder"], "error: No model folder at no/such/folder"),
    (["--model", "x/y", "--dtype", "int8"], "error: dtype must be auto"),
])
def test_startup_errors_are_one_line(closed_hub, args, message):
    proc = subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message)
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("defaults, message", [
    ({"settings": {"cfg": 3}}, "lens_defaults.json settings: unknown key 'cfg'; allowed: steps, guidance_scale"),
    ({"settings": {"steps": 5000}}, "steps must be a whole number from 1 to 200, got 5000"),
])
def test_a_bad_defaults_file_stops_the_start_with_one_line(tiny_sd_dir, tmp_path, defaults, message):
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_dir, folder)
    (folder / "lens_defaults.json").write_text(json.dumps(defaults))
    proc = subprocess.run([sys.executable, "app.py", "--model", str(folder), "--port", str(free_port())], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0]
    assert "Traceback" not in proc.stderr


def test_auth_needs_a_colon():
    proc = subprocess.run([sys.executable, "app.py", "--auth", "justaname"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--auth must be user:password, got 'justaname'" in proc.stderr


def test_a_bad_number_in_the_environment_is_a_usage_error():
    proc = subprocess.run([sys.executable, "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SDLENS_PORT": "abc"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == "app.py: error: argument --port: invalid int value: 'abc'"
    assert "Traceback" not in proc.stderr


def test_a_folder_can_recommend_settings_and_examples(tiny_sd_dir, tmp_path):
    folder = tmp_path / "with-defaults"
    shutil.copytree(tiny_sd_dir, folder)
    (folder / "lens_defaults.json").write_text(json.dumps({
        "settings": {"guidance_scale": 3.0, "steps": 20},
        "notes": {"guidance_scale": "this model: 3; LMS breaks above it", "scheduler": "euler holds at 7.5",
                  "img2img": {"scheduler": "image to image: euler keeps the layout"},
                  "guided": {"mode": "accurate breaks shapes here"}},
        "guidance": {"start": 5},
        "examples": {"txt2img": [{"prompt": "a red circle", "negative_prompt": "", "guidance_scale": 3.0}],
                     "guided": [{"prompt": "a red circle", "loss": "blue", "scale": 50.0, "color": "#0000ff"}]},
    }))
    engine = Engine(load_bundle(str(folder), device="cpu"))
    settings = engine.default_settings()
    assert (settings.guidance_scale, settings.steps, settings.width, settings.height) == (3.0, 20, 64, 64)
    assert engine.examples("txt2img") == [["a red circle", "", 3.0]]
    # start and guidance_scale left out: the example sets the tab's defaults for them, the folder's over the
    # notebook's guidance demo's
    assert engine.examples("guided") == [["a red circle", "blue", 50.0, "#0000ff", 5, 3.0]]
    assert (engine.default_settings("guided").steps, engine.default_settings("guided").guidance_scale) == (20, 3.0)
    plain = Engine(load_bundle(str(tiny_sd_dir), device="cpu"))
    assert (plain.default_settings().steps, plain.default_settings().guidance_scale) == (30, 7.5)
    assert plain.examples("txt2img")[0][0] == "A watercolor painting of an otter"
    assert plain.examples("guided")[0][-1] == 8.0  # the notebook runs its guidance demo at CFG 8

    def props(engine: Engine, label: str, key: str = "info") -> list:
        page = build_app(engine).get_config_file()
        return [c["props"].get(key) for c in page["components"] if c["props"].get("label") == label]

    assert set(props(engine, "Guidance scale (CFG)")) == {f"{CFG_NOTE} · this model: 3; LMS breaks above it"}
    assert set(props(plain, "Guidance scale (CFG)")) == {CFG_NOTE}
    # the scales compared are guidance scales: their box says what the model's folder says of them
    assert "comma-separated, at most 12 · this model: 3; LMS breaks above it" in props(engine, "Scales")
    assert "comma-separated, at most 12" in props(plain, "Scales") and "comma-separated, at most 12" in props(
        engine, "Seeds")
    assert set(props(plain, "Width")) == {f"a multiple of {plain.bundle.vae_scale_factor}"}
    assert "euler holds at 7.5" in props(engine, "Sampler") and "euler holds at 7.5" not in props(plain, "Sampler")
    # a tab's own note replaces the general one there: image to image's, on its one Sampler menu
    notes = Counter(filter(None, props(engine, "Sampler")))
    assert notes["image to image: euler keeps the layout"] == 1 and notes["euler holds at 7.5"] >= 4
    assert len(notes) == 2
    assert engine.setting_note("scheduler", "img2img") == "image to image: euler keeps the layout"
    assert engine.setting_note("guidance_scale", "img2img") == "this model: 3; LMS breaks above it"
    assert props(engine, "Gradient") == ["accurate breaks shapes here"] and props(plain, "Gradient") == [None]
    # the Guidance and Image to image tabs alone start from the notebook's demos of them: 50 steps at CFG 8
    assert props(plain, "Steps", "value").count(50) == 2 and 50 not in props(engine, "Steps", "value")
    assert props(plain, "Guidance scale (CFG)", "value").count(8.0) == 2


def test_every_example_label_shows_whole(toy_engine, tiny_sd_dir):
    """An example's label shows through its first input's example view, which cuts text past 60 characters
    (gradio's Textbox example): the toy's labels and the notebook's all fit."""
    for engine in (toy_engine, Engine(load_bundle(str(tiny_sd_dir), device="cpu"))):
        page = build_app(engine).get_config_file()
        labels = [label for c in page["components"] if c["type"] == "dataset"
                  for label in c["props"].get("sample_labels") or []]
        assert len(labels) >= 6
        assert [label for label in labels if len(label) > 60] == []


def test_the_shipped_toy_defaults_are_checked_and_name_their_embedding():
    folder = Path(core.toyworld.__file__).parent / "model"
    defaults = ModelDefaults.read(folder)
    assert defaults.embeddings == (folder / "embeddings" / "teal.safetensors",)
    assert set(defaults.examples) == set(EXAMPLE_FIELDS)
    assert all(len(row) == len(EXAMPLE_FIELDS[tab]) for tab, rows in defaults.examples.items() for row in rows)
    assert dict(defaults.settings) == {"previews": "full"}  # guidance: the app's own default, the notebook's 7.5


@pytest.mark.parametrize("entry, message", [
    ({"setings": {}}, "unknown key 'setings'; allowed: settings, notes, guidance, embeddings, examples"),
    ({"settings": {"cfg": 3}}, "settings: unknown key 'cfg'; allowed: steps, guidance_scale"),
    ({"settings": {"steps": "20"}}, "settings: steps must be int, got '20'"),
    ({"settings": {"steps": 2.5}}, "settings: steps must be int, got 2.5"),
    ({"guidance": {"target": "#fff"}}, "guidance: unknown key 'target'"),
    ({"notes": {"steps": 3}}, "notes steps must be text, got 3"),
    ({"notes": {"guided": {"steps": 3}}}, "notes guided: steps must be text, got 3"),
    ({"notes": {"img2img": {"cfg": "3"}}}, "notes img2img: unknown key 'cfg'; allowed: steps, guidance_scale"),
    ({"notes": {"img2img": {"mode": "3"}}}, "notes img2img: unknown key 'mode'; allowed: steps"),  # guidance's own
    ({"notes": {"guided": {"scale": "3"}}}, "notes guided: unknown key 'scale'; allowed: steps, guidance_scale, seed, "
                                            "height, width, preview_every, scheduler, previews, mode"),
    ({"notes": {"img2img": "image to image: 3"}}, "notes img2img must be a JSON object with keys from steps"),
    ({"notes": {"txt2img": {"steps": "30"}}}, "notes: unknown key 'txt2img'"),
    ({"embeddings": ["missing.safetensors"]}, "embeddings: there is no file"),
    ({"examples": {"txt2img": [["a red circle", "", 3.0]]}}, "each txt2img record has exactly the keys "
                                                             "prompt, negative_prompt, guidance_scale"),
    ({"examples": {"txt2im": []}}, "examples: unknown key 'txt2im'"),
    ({"examples": {"guided": [{"prompt": "a red circle", "loss": "blue", "scale": 50.0, "color": "#0000ff",
                               "guidance_scale": "3"}]}}, "examples: guided: guidance_scale must be float, got '3'"),
    ({"settings": {"guidance_scale": float("nan")}}, "settings: guidance_scale must be float, got nan"),
    ({"examples": {"guided": [{"prompt": "a red circle", "loss": "blue", "scale": 50.0}]}},
     "each guided record has exactly the keys prompt, loss, scale, color, start, guidance_scale "
     "(start, guidance_scale may be left out)"),
])
def test_a_bad_defaults_file_is_refused_naming_the_entry(tiny_sd_dir, tmp_path, entry, message):
    folder = tmp_path / "bad-defaults"
    shutil.copytree(tiny_sd_dir, folder)
    (folder / "lens_defaults.json").write_text(json.dumps(entry))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_bundle(str(folder), device="cpu")


def test_defaults_out_of_range_for_the_model_are_refused_at_load(tiny_sd_dir, tmp_path):
    folder = tmp_path / "big-defaults"
    shutil.copytree(tiny_sd_dir, folder)
    (folder / "lens_defaults.json").write_text(json.dumps({"settings": {"steps": 5000}}))
    with pytest.raises(ValueError, match="steps must be a whole number from 1 to 200, got 5000"):
        Engine(load_bundle(str(folder), device="cpu"))
    (folder / "lens_defaults.json").write_text(json.dumps({"settings": {"steps": 20}, "guidance": {"start": 20}}))
    with pytest.raises(ValueError,
                       match=r"start \(the first steps left unguided\) must be a whole number from 0 to 19, got 20"):
        Engine(load_bundle(str(folder), device="cpu"))
    # without a folder's steps, the guidance start is checked against the Guidance tab's 50, not text to image's 30
    (folder / "lens_defaults.json").write_text(json.dumps({"guidance": {"start": 40}}))
    assert Engine(load_bundle(str(folder), device="cpu")).default_guidance().start == 40
    (folder / "lens_defaults.json").write_text(json.dumps({"guidance": {"start": 50}}))
    with pytest.raises(ValueError,
                       match=r"start \(the first steps left unguided\) must be a whole number from 0 to 49, got 50"):
        Engine(load_bundle(str(folder), device="cpu"))


def test_auto_prefers_real_sd_on_a_gpu_and_the_toy_elsewhere():
    assert auto_choice(torch.device("cuda")) == [SD_V1, TOY]
    assert auto_choice(torch.device("cpu")) == [TOY] == auto_choice(torch.device("mps"))


def test_toy_and_auto_on_a_cpu_load_the_toy_folder(tiny_sd_dir):
    for name in ("toy", "auto"):
        bundle, notice = load_model(name, device="cpu", toy_folder=tiny_sd_dir)
        assert bundle.name.startswith("toy world") and notice is None


def test_a_missing_toy_model_says_how_to_train_it(tmp_path):
    with pytest.raises(ModelLoadError, match=r"train it with `python -m core.toyworld.train`"):
        load_model("toy", device="cpu", toy_folder=tmp_path)


def test_auto_falls_back_to_the_toy_with_a_notice_on_the_page(closed_hub, tiny_sd_dir, monkeypatch):
    monkeypatch.setattr(models, "auto_choice", lambda device: ["sdlens-tests/no-such-model", TOY])
    bundle, notice = load_model("auto", device="cpu", toy_folder=tiny_sd_dir)
    assert bundle.name.startswith("toy world")
    assert notice.startswith("sdlens-tests/no-such-model could not be loaded, so this is the toy world")
    assert "cannot be reached" in notice
    page = build_app(Engine(bundle), notice=notice).get_config_file()
    texts = [c["props"].get("value") for c in page["components"] if c["props"].get("elem_id") == "model-notice"]
    assert len(texts) == 1 and "could not be loaded, so this is the toy world" in texts[0]
