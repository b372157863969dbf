"""`python -m bench`: how fast the one sampling loop, its previews and the app's API are, measured in one run.

For each model: our loop without previews against diffusers' StableDiffusionPipeline on the same parts,
steps and seed; previews every step (fast and full VAE) against none; peak memory. For the toy model also
the HTTP API of a local app (gradio_client): time to the first frame, frames delivered per step, and the
whole run against the engine alone. Times are medians over repeats; every row ends with its ratio.

    python -m bench                       # CPU: the toy model and a tiny random SD at 512 px
    python -m bench --device cuda         # adds an SD-v1-shaped model with random weights, float16, 512 px
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, LMSDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core.engine import Engine
from core.models import TOKENIZER_DIR, load_bundle, load_toy
from core.sampler import Settings
from tests.conftest import SD_SCHEDULER, build_tiny_sd, free_port, start_app

PROMPT = "a red circle on a white background"
STEPS = 30


def median_seconds(runs: dict, repeats: int) -> dict[str, float]:
    """Median wall time of each run; the runs take turns, so a slow spell of the machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats + 1):  # round 0 warms up: first calls allocate and fill caches
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            if round_:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pipeline_of(bundle) -> StableDiffusionPipeline:
    """diffusers' pipeline on the very same parts, with stock LMS."""
    return StableDiffusionPipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer, unet=bundle.unet,
        scheduler=LMSDiscreteScheduler.from_config(bundle.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def loop_rows(name: str, engine: Engine, size: int, guidance: float, repeats: int) -> list[tuple]:
    bundle, device = engine.bundle, engine.bundle.device
    settings = replace(Settings(steps=STEPS, guidance_scale=guidance, seed=1, height=size, width=size),
                       preview_every=0)
    pipe = pipeline_of(bundle)

    def ours(**change):
        def go():
            list(engine.txt2img(PROMPT, "", replace(settings, **change)).frames)
            sync(device)
        return go

    def theirs():
        pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=guidance, height=size, width=size,
             generator=torch.Generator("cpu").manual_seed(1), output_type="pil")
        sync(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed = median_seconds({"none": ours(), "pipeline": theirs, "fast": ours(preview_every=1, previews="fast"),
                            "full": ours(preview_every=1, previews="full")}, repeats)
    none, reference, fast, full = timed["none"], timed["pipeline"], timed["fast"], timed["full"]
    memory = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    where = f"{name}, {size} px"
    return [
        ("loop / pipeline (no previews)", where, f"{none:.3f} s", f"{reference:.3f} s", none / reference),
        ("fast previews / none (every step)", where, f"{fast:.3f} s", f"{none:.3f} s", fast / none),
        ("full VAE previews / none (every step)", where, f"{full:.3f} s", f"{none:.3f} s", full / none),
        ("peak memory (MB, " + ("CUDA allocated" if device.type == "cuda" else "process RSS") + ")", where,
         f"{memory:,.0f}", "", None),
    ]


def api_rows(engine: Engine, repeats: int) -> list[tuple]:
    """The toy model served by `python app.py`, driven through gradio_client as a script would."""
    from gradio_client import Client

    settings = replace(engine.default_settings(), steps=STEPS, seed=1, preview_every=1, previews="auto")
    alone = median_seconds({"alone": lambda: list(engine.txt2img(PROMPT, "", settings).frames)}, repeats)["alone"]
    proc, url = start_app("--model", "toy", "--port", str(free_port()))
    try:
        # Like the page, the client gets each frame's images as file references and fetches none of them.
        client = Client(url, verbose=False, download_files=False)
        firsts, totals, delivered = [], [], []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            first, frames = None, set()
            for out in client.submit(prompt=PROMPT, negative_prompt="", steps=STEPS,
                                     guidance_scale=settings.guidance_scale, seed=1, width=settings.width,
                                     height=settings.height, preview_every=1, previews="auto",
                                     scheduler=settings.scheduler, api_name="/txt2img"):
                if isinstance(out[1], dict) and "path" in out[1]:  # an x0 image (else: an unchanged output)
                    first = first or time.perf_counter() - started
                    frames.add(out[1]["path"])
            firsts.append(first)
            totals.append(time.perf_counter() - started)
            delivered.append(len(frames))
        first, total = statistics.median(firsts[1:]), statistics.median(totals[1:])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    where = "toy, 64 px, HTTP API"
    return [
        ("first frame after submitting (s)", where, f"{first:.3f} s", "0.3 s goal", first / 0.3),
        ("frames delivered / steps", where, f"{min(delivered)}", f"{STEPS}", min(delivered) / STEPS),
        ("API run / engine alone", where, f"{total:.3f} s", f"{alone:.3f} s", total / alone),
    ]


def sd_shaped(folder: Path) -> Path:
    """An SD v1-shaped model (CLIP ViT-L text encoder, SD's VAE and UNet sizes) with random weights."""
    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                                num_hidden_layers=12, num_attention_heads=12,
                                                max_position_embeddings=77, hidden_act="quick_gelu"))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=512, scaling_factor=0.18215)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                            scheduler=LMSDiscreteScheduler(**SD_SCHEDULER), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)
    return folder


def table(rows: list[tuple]) -> str:
    head = ("figure", "model", "ours", "reference", "ratio")
    cells = [head] + [(f, m, o, r, "" if x is None else f"{x:.2f}") for f, m, o, r, x in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"# python -m bench · {time.strftime('%Y-%m-%d')} · {device.type}"
          f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''} · torch {torch.__version__}"
          f" · {torch.get_num_threads()} threads · {STEPS} steps, LMS, medians of {args.repeats}", flush=True)
    rows = []
    toy = Engine(load_toy(device=args.device, dtype="float32" if device.type == "cpu" else "float16"))
    rows += loop_rows("toy", toy, toy.bundle.native_size, toy.default_settings().guidance_scale, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        tiny = Engine(load_bundle(str(build_tiny_sd(Path(folder) / "tiny", latent_size=64)), device=args.device, dtype="float32"))
        rows += loop_rows("tiny random SD", tiny, 512, 7.5, args.repeats)
        if device.type == "cuda":
            sd = Engine(load_bundle(str(sd_shaped(Path(folder) / "sd")), device=args.device, dtype="float16"))
            rows += loop_rows("SD v1-shaped, random weights, float16", sd, 512, 7.5, args.repeats)
    if device.type == "cpu":
        rows += api_rows(toy, args.repeats)
    print(table(rows))


if __name__ == "__main__":
    sys.exit(main())
