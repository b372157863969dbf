"""Load a Stable Diffusion v1.x model bundle: tokenizer, text encoder, VAE, UNet and scheduler config.

A bundle comes from a Hugging Face Hub id (`CompVis/stable-diffusion-v1-4`) or a local folder in
diffusers format (model_index.json beside tokenizer/, text_encoder/, vae/, unet/, scheduler/). It is
loaded once by the app and passed down; nothing here keeps models in module globals.
"""
from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

import torch
from diffusers import AutoencoderKL, LMSDiscreteScheduler, UNet2DConditionModel
from huggingface_hub import constants as hub_constants
from transformers import CLIPTextModel, CLIPTokenizer

from core.defaults import ModelDefaults
from core.sampler import TORCH_THREADS
from core.toyworld.data import KNOWN, WORDS

HUB_PROBE_SECONDS = 5.0
COMPONENTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
TOKENIZER_DIR = Path(__file__).resolve().parent / "clip_tokenizer"  # OpenAI CLIP's vocabulary
TOY_DIR = Path(__file__).resolve().parent / "toyworld" / "model"     # the small SD trained in this repository
SD_V1 = "CompVis/stable-diffusion-v1-4"
TOY = "toy"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which one and what to do instead."""


@dataclass(frozen=True)
class Vocabulary:
    """The words a model's training captions held (the toy world's): a prompt's other words steer it nowhere in
    particular, and a run says so."""
    words: frozenset[str]
    known: str                     # how a note names them, e.g. "shapes (circle, ...), colours (...)"


@dataclass(frozen=True)
class ModelBundle:
    """The parts of one Stable Diffusion model, on one device in one dtype, in eval mode."""

    name: str                      # what the user asked for (Hub id or folder)
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler_config: dict         # each run builds its own scheduler from this (schedulers keep state)
    device: torch.device
    dtype: torch.dtype
    defaults: ModelDefaults = field(default_factory=ModelDefaults)  # what the model's folder recommends
    source: str = ""               # where the weights load from: a Hub id, or the folder's absolute path
    vocabulary: Vocabulary | None = None  # the words it was trained on, where they are few; None: any text

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for SD v1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def native_size(self) -> int:
        """The image side the UNet was trained at (512 for SD v1)."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def max_side(self) -> int:
        """The largest image side a run may ask for: twice the native size."""
        return 2 * self.native_size

    @property
    def max_length(self) -> int:
        """Tokens the text encoder reads, start and end tokens included (77 for CLIP)."""
        return self.tokenizer.model_max_length

    def describe(self) -> str:
        params = sum(p.numel() for m in (self.text_encoder, self.vae, self.unet) for p in m.parameters())
        return (
            f"{self.name} · {params / 1e6:,.1f}M parameters · {self.device.type} {str(self.dtype).removeprefix('torch.')}"
            f" · native {self.native_size}px · latents {self.latent_channels}ch at 1/{self.vae_scale_factor}"
        )


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but this machine has no CUDA GPU (use --device cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was asked for, but Apple MPS is not available (use --device cpu)")
    return device


def serving_threads(device: torch.device, requested: int | None = None) -> int:
    """torch's CPU threads in an app that runs the model and serves the page in one process: `requested`, else
    on a CPU all the threads torch would use but one, so that the page's event loop, its PNG files and the
    clients' connections never stall torch's threads mid-operation (on 2 cores the toy's run through the HTTP
    API took 4.1 s with 2 threads, 2.2 s with 1; the engine alone 1.3 and 1.6 s), and previews decode beside
    the next step where that leaves room (`core.sampler`: 1.4 s through the API); elsewhere torch's own."""
    if requested is not None:
        return requested
    return max(1, TORCH_THREADS - 1) if device.type == "cpu" else TORCH_THREADS


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's CPU threads set to `count` inside the block, and back to what they were after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is float16 on CUDA and float32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _check_local_folder(folder: Path) -> None:
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise ModelLoadError(
            f"{folder} is not a Stable Diffusion folder in diffusers format: missing {', '.join(missing)}/ "
            f"(expected {', '.join(c + '/' for c in COMPONENTS)})"
        )


def hub_reachable() -> bool:
    """One quick connection to the Hub. Offline, huggingface_hub retries every file for minutes instead."""
    if hub_constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(hub_constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def looks_like_path(source: str) -> bool:
    """Hub ids are `owner/name`; anything with a leading ., ~ or /, or a backslash, is meant as a folder."""
    return source.startswith((".", "~", "/")) or "\\" in source or source.count("/") > 1


def load_bundle(source: str, device: str = "auto", dtype: str = "auto") -> ModelBundle:
    """Load every component of `source` (a Hub id or a local diffusers folder) onto one device."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    local = Path(source).expanduser()
    is_local = local.is_dir()
    if is_local:
        _check_local_folder(local)
    elif looks_like_path(source):
        raise ModelLoadError(f"No model folder at {local}: give a folder in diffusers format or a Hub id")
    where = str(local) if is_local else source
    online = not is_local and hub_reachable()
    cache_only = {"local_files_only": not online}  # offline, a model in the local cache still loads
    try:
        tokenizer = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **cache_only)
        text_encoder = CLIPTextModel.from_pretrained(where, subfolder="text_encoder", torch_dtype=dt, **cache_only)
        vae = AutoencoderKL.from_pretrained(where, subfolder="vae", torch_dtype=dt, **cache_only)
        unet = UNet2DConditionModel.from_pretrained(where, subfolder="unet", torch_dtype=dt, **cache_only)
        scheduler_config = dict(LMSDiscreteScheduler.load_config(where, subfolder="scheduler", **cache_only))
    except (OSError, ValueError) as err:
        if is_local:
            raise ModelLoadError(f"Could not load the model folder {local}: {err}") from err
        why = ("Check the id (gated models need `huggingface-cli login`)" if online else
               f"The Hugging Face Hub ({hub_constants.ENDPOINT}) cannot be reached and the model is not in "
               "the local cache")
        raise ModelLoadError(
            f"Could not load model {source!r}. {why}; or run offline with a local diffusers folder: "
            "--model /path/to/folder"
        ) from err
    for module in (text_encoder, vae, unet):
        module.to(dev).eval().requires_grad_(False)
    return ModelBundle(
        name=source,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler_config=scheduler_config,
        device=dev,
        dtype=dt,
        defaults=ModelDefaults.read(local) if is_local else ModelDefaults(),
        source=str(local.resolve()) if is_local else source,
    )


def auto_choice(device: torch.device) -> list[str]:
    """What `--model auto` tries, in order: real SD v1.4 where there is a GPU for it, else the toy world."""
    return [SD_V1, TOY] if device.type == "cuda" else [TOY]


def is_toy(bundle: ModelBundle) -> bool:
    """Whether the bundle is the toy world shipped here (it needs no safety checker)."""
    return Path(bundle.source).resolve() == TOY_DIR.resolve()


def load_toy(device: str = "auto", dtype: str = "auto", folder: Path = TOY_DIR) -> ModelBundle:
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"The toy world model is not in {folder}: train it with `python -m core.toyworld.train`")
    return replace(load_bundle(str(folder), device, dtype), name="toy world (a small SD trained on shapes)",
                   vocabulary=Vocabulary(WORDS, KNOWN))


def load_model(name: str, device: str = "auto", dtype: str = "auto",
               toy_folder: Path = TOY_DIR) -> tuple[ModelBundle, str | None]:
    """`toy`, `auto`, a Hub id or a folder -> (bundle, a notice when `auto` had to fall back)."""
    def load(source: str) -> ModelBundle:
        return load_toy(device, dtype, toy_folder) if source == TOY else load_bundle(source, device, dtype)

    if name != "auto":
        return load(name), None
    preferred, *fallback = auto_choice(resolve_device(device))
    try:
        return load(preferred), None
    except ModelLoadError as err:
        if not fallback:
            raise
        bundle = load(fallback[0])
        return bundle, f"{preferred} could not be loaded, so this is the {bundle.name}. ({err})"
