"""`python -m bench`: how fast the one sampling loop, its previews and the app's API are, measured in one run.

For each model: our loop without previews against diffusers' StableDiffusionPipeline on the same parts,
steps and seed; previews every step (fast and full VAE) against none; peak memory. For the toy model also
the HTTP API of an app this benchmark starts (`python app.py --model toy`) and stops, driven by
gradio_client: time to the first frame, frames delivered per step, and the whole run against the engine
alone; and 8 runs sent at once to 1 and to 2 engine workers in Ray actors. Times are medians over repeats;
every row ends with its ratio. A measurement that fails becomes a row that says why, the others still run,
the table is always printed, and the exit code is then 1.

    python -m bench                       # CPU: the toy model and a tiny random SD at 512 px
    python -m bench --quick               # one run each of the toy model's, the API's and the workers' rows
    python -m bench --device cuda         # adds an SD-v1-shaped model with random weights, float16, 512 px
"""
from __future__ import annotations

import argparse
import functools
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from bench import pipeline_of
from bench.serve import served
from core import attention
from core.engine import Engine
from core.models import load_bundle, load_toy, serving_threads, torch_threads
from core.sampler import Settings
from core.sd_folder import SD_V1, TINY, Shape, build_random_sd

PROMPT = "a red circle on a white background"
STEPS = 30
SIDE = 512               # image side of the random models' rows
API_WHERE = "toy, 64 px, HTTP API"
Measurement = tuple[str, str, Callable[[], list[tuple]]]  # (what, which model, a function returning its rows)


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
    """The toy model served by `python app.py`, driven through gradio_client as a script would, against the
    same engine alone in this process with the app's threads; the two take turns."""
    from gradio_client import Client

    settings = replace(engine.default_settings(), steps=STEPS, seed=1, preview_every=1, previews="auto")
    firsts, delivered = [], []

    def alone() -> None:
        with torch_threads(serving_threads(engine.bundle.device)):
            list(engine.txt2img(PROMPT, "", settings).frames)

    def through(client: Client) -> None:
        started, first, frames = time.perf_counter(), None, set()
        for out in client.submit(prompt=PROMPT, negative_prompt="", steps=STEPS, guidance_scale=settings.guidance_scale,
                                 seed=1, width=settings.width, height=settings.height, preview_every=1,
                                 previews="auto", scheduler=settings.scheduler, api_name="/txt2img"):
            if isinstance(out[1], dict) and "path" in out[1]:  # an x0 image (else: an unchanged output)
                first = first or time.perf_counter() - started
                frames.add(out[1]["path"])
        firsts.append(first)
        delivered.append(len(frames))

    with served("--model", "toy") as app:
        # Like the page, the client gets each frame's images as file references and fetches none of them.
        client = Client(app.url, verbose=False, download_files=False)
        timed = median_seconds({"alone": alone, "api": lambda: through(client)}, repeats)
    if None in firsts:
        raise RuntimeError(f"a run through the API delivered no x0 image (images per run: {delivered})")
    first, total = statistics.median(firsts[1:]), timed["api"]
    return [
        ("first frame after submitting (s)", API_WHERE, f"{first:.3f} s", "0.3 s goal", first / 0.3),
        ("frames delivered / steps", API_WHERE, f"{min(delivered)}", f"{STEPS}", min(delivered) / STEPS),
        ("API run / engine alone", API_WHERE, f"{total:.3f} s", f"{timed['alone']:.3f} s", total / timed["alone"]),
    ]


def attention_rows(engine: Engine, repeats: int) -> list[tuple]:
    """The Attention tab's work on every step (cross-attention maps recorded, each drawn over x0) against the
    same run without it."""
    settings = replace(engine.default_settings(), steps=STEPS, seed=1, preview_every=1)

    def plain():
        list(engine.txt2img(PROMPT, "", settings).frames)

    def mapped():
        x0 = None
        for frame in engine.attention(PROMPT, "", settings).frames:
            x0 = frame.x0_image or x0
            for image in frame.observed["attention"].images:  # as the tab draws each map over x0
                attention.overlay(x0, image, 0.6)

    timed = median_seconds({"none": plain, "maps": mapped}, repeats)
    where = f"toy, {settings.width} px, {settings.previews} previews"
    return [("attention maps, shown every step / none", where, f"{timed['maps']:.3f} s", f"{timed['none']:.3f} s",
             timed["maps"] / timed["none"])]


def workers_rows(repeats: int) -> list[tuple]:
    """8 toy runs sent at once to 1 and to 2 engine workers in Ray actors on this machine's CPUs (each worker
    gets an equal share of the threads), and whether each image equals the same run alone."""
    from core.workers import WorkerSpec, Workers

    spec = WorkerSpec("toy", "cpu", "float32", threads=1, safety=False)
    seeds = range(1, 9)
    timed, equal = {}, 0
    for count in (1, 2):
        pool = Workers(spec, count)
        try:
            settings = replace(pool.default_settings(), steps=STEPS, preview_every=1)

            def final(seed: int):
                return list(pool.txt2img(PROMPT, "", replace(settings, seed=seed)).frames)[-1].image

            def together() -> list:
                with ThreadPoolExecutor(len(seeds)) as runs:
                    return list(runs.map(final, seeds))

            timed[count] = median_seconds({"together": together}, repeats)["together"]
            if count == 2:
                equal = sum(a.tobytes() == b.tobytes() for a, b in zip(together(), map(final, seeds)))
        finally:
            pool.close()
    where = "toy, Ray CPU workers"
    return [("8 runs at once: 1 worker / 2 workers (goal 1.4)", where, f"{timed[1]:.2f} s", f"{timed[2]:.2f} s",
             timed[1] / timed[2]),
            ("images equal to the run alone, 2 workers", where, f"{equal}", f"{len(seeds)}", equal / len(seeds))]


def random_sd_rows(name: str, shape: Shape, folder: Path, device: str, dtype: str, repeats: int) -> list[tuple]:
    """A model of this shape with random weights, built into `folder`, measured at 512 px."""
    model = build_random_sd(folder, shape, latent_size=SIDE // shape.vae_scale_factor)
    return loop_rows(name, Engine(load_bundle(str(model), device=device, dtype=dtype)), SIDE, 7.5, repeats)


def table(rows: list[tuple]) -> str:
    """The rows in aligned columns; a failed measurement's reason stands in the last one, the ratio's."""
    head = ("figure", "model", "ours", "reference", "ratio")
    cells = [head] + [(f, m, o, r, x if isinstance(x, str) else "" if x is None else f"{x:.2f}")
                      for f, m, o, r, x in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head) - 1)] + [len(head[-1])]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def measurements(args: argparse.Namespace, folder: Path) -> Iterator[Measurement]:
    """What this run measures, in order. Each model loads when its first measurement runs."""
    device = torch.device(args.device)
    toy = functools.cache(lambda: Engine(load_toy(device=args.device,
                                                  dtype="float32" if device.type == "cpu" else "float16")))
    yield ("loop and previews", "toy", lambda: loop_rows("toy", toy(), toy().bundle.native_size,
                                                         toy().default_settings().guidance_scale, args.repeats))
    yield "attention maps", "toy", lambda: attention_rows(toy(), args.repeats)
    if not args.quick:
        yield ("loop and previews", f"tiny random SD, {SIDE} px",
               lambda: random_sd_rows("tiny random SD", TINY, folder / "tiny", args.device, "float32", args.repeats))
    if not args.quick and device.type == "cuda":
        name = "SD v1-shaped, random weights, float16"
        yield ("loop and previews", f"{name}, {SIDE} px",
               lambda: random_sd_rows(name, SD_V1, folder / "sd", args.device, "float16", args.repeats))
    if device.type == "cpu":
        yield "HTTP API", API_WHERE, lambda: api_rows(toy(), args.repeats)
        yield "Ray workers", "toy, Ray CPU workers", lambda: workers_rows(args.repeats)


def measure(measurement: Measurement) -> tuple[list[tuple], bool]:
    """The measurement's rows and True; or, when it fails, one row with the reason and False."""
    what, where, rows_of = measurement
    try:
        return rows_of(), True
    except Exception as err:  # one broken measurement must not hide the others' numbers
        traceback.print_exc()
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        return [(f"FAILED: {what}", where, "", "", reason)], False


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, help="timed runs of each figure (default 5, or 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="only the toy model's, the API's and the workers' rows, one timed run each unless "
                             "--repeats")
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    print(f"# python -m bench{' --quick' if args.quick else ''} · {time.strftime('%Y-%m-%d')} · {device.type}"
          f"{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''} · torch {torch.__version__}"
          f" · {torch.get_num_threads()} threads · load {os.getloadavg()[0]:.1f} · {STEPS} steps, LMS, medians of "
          f"{args.repeats}", flush=True)  # a load above the thread count slows every figure, unevenly
    signal.signal(signal.SIGTERM, stopped)
    rows, all_ran = [], True
    try:
        with tempfile.TemporaryDirectory() as folder:
            for measurement in measurements(args, Path(folder)):
                new_rows, ran = measure(measurement)
                rows += new_rows
                all_ran = all_ran and ran
    finally:  # stopped early (Ctrl-C, SIGTERM), it still prints what it measured
        print(table(rows))
    return 0 if all_ran else 1


def stopped(signum: int, frame) -> None:
    """SIGTERM ends the benchmark as Ctrl-C does: through every `finally`, so that the app it started stops too."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
