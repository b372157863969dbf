"""Engine workers in Ray actors: the same runs as the engine alone, Stop, a worker killed mid-run, and the app's
--workers flag. Ray runs on this machine, with two CPU workers of the tiny model."""
from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import ray
import torch
from gradio_client import Client
from PIL import Image

from core.engine import Engine
from core.guidance import Guidance
from core.sampler import RunFailed, Settings
from core.workers import WorkerSpec, Workers, stop, worker_resources
from tests.conftest import ROOT, free_port, start_app

PROMPT = "a red circle on a white background"
SMALL = Settings(steps=6, guidance_scale=7.5, seed=5, height=64, width=64, preview_every=2)
LONG = replace(SMALL, steps=200, height=128, width=128, preview_every=1)


@pytest.fixture(scope="module")
def workers(tiny_sd_dir):
    pool = Workers(WorkerSpec(str(tiny_sd_dir), "cpu", "float32", threads=1, safety=False), 2)
    yield pool
    pool.close()


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def result(run) -> np.ndarray:
    return pixels(list(run.frames)[-1].image)


def test_every_kind_of_run_gives_the_engines_own_frames(workers, tiny_bundle):
    """Each run-making call of the Engine through the workers: the same number of frames, previews on the same
    steps, and the result within one level of the engine run here (the workers use one CPU thread)."""
    local = Engine(tiny_bundle)
    image = Engine(tiny_bundle).txt2img(PROMPT, "", SMALL).frames
    start = list(image)[-1].image
    width = tiny_bundle.text_encoder.config.hidden_size
    learned = {"<x>": torch.randn(1, width, generator=torch.Generator().manual_seed(0))}  # one session's token
    calls = {
        "txt2img": lambda e: e.txt2img(PROMPT, "", SMALL),
        "txt2img, a learned token": lambda e: e.txt2img("a <x> circle", "", SMALL, learned=learned),
        "guided": lambda e: e.guided(PROMPT, "", SMALL, Guidance("blue", 20.0, every=2)),
        "attention": lambda e: e.attention(PROMPT, "", SMALL),
        "mix_prompts": lambda e: e.mix_prompts(PROMPT, "a blue square", 0.5, "", SMALL),
        "img2img": lambda e: e.img2img("a blue square", "", start, 0.6, SMALL),
        "edit_token": lambda e: e.edit_token(PROMPT, "", SMALL, 2, [("blue", 1.0)])[1],
    }
    for name, call in calls.items():
        theirs, ours = list(call(workers).frames), list(call(local).frames)
        assert [f.index for f in theirs] == [f.index for f in ours], name
        assert [f.x0_image is None for f in theirs] == [f.x0_image is None for f in ours], name
        assert np.abs(pixels(theirs[-1].image) - pixels(ours[-1].image)).max() <= 1, name
    assert workers.describe() == f"{tiny_bundle.describe()} · 2 engine worker(s) on Ray"  # the page's model line
    maps = list(workers.attention(PROMPT, "", SMALL).frames)[-1].observed["attention"]
    assert maps.maps.shape[1:] == (SMALL.height, SMALL.width) and maps.maps.device.type == "cpu"


def test_concurrent_runs_each_equal_the_run_alone(workers):
    seeds = [1, 2, 3, 4, 5, 6]
    alone = {seed: result(workers.txt2img(PROMPT, "", replace(SMALL, seed=seed))) for seed in seeds}
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = dict(zip(seeds, pool.map(lambda s: result(workers.txt2img(PROMPT, "", replace(SMALL, seed=s))),
                                            seeds)))
    for seed in seeds:
        assert np.array_equal(together[seed], alone[seed]), seed
    assert len({arr.tobytes() for arr in alone.values()}) == len(seeds)  # the seeds made different images


def test_bad_input_raises_the_engines_message(workers, tiny_bundle):
    bad = replace(SMALL, steps=0)
    with pytest.raises(ValueError) as local:
        Engine(tiny_bundle).txt2img(PROMPT, "", bad)
    with pytest.raises(ValueError) as remote:
        workers.txt2img(PROMPT, "", bad)
    assert str(remote.value) == str(local.value) == "steps must be a whole number from 1 to 200, got 0"
    assert len(list(workers.txt2img(PROMPT, "", SMALL).frames)) == SMALL.steps  # and the workers go on


def test_stop_reaches_the_worker_without_the_page_reading_on(workers, monkeypatch):
    """Stop set while nobody reads: the watcher tells the worker at once; the page gets no frame after it."""
    told = threading.Event()
    monkeypatch.setattr("core.workers.stop", lambda actor, run_id: (told.set(), stop(actor, run_id)))
    flag = threading.Event()
    frames = workers.txt2img(PROMPT, "", LONG, should_stop=flag.is_set).frames
    first = next(frames)
    flag.set()
    assert told.wait(timeout=5)
    assert first.index == 0 and list(frames) == []
    assert workers._busy == [0, 0]


def test_a_stopped_worker_makes_no_more_steps(workers):
    """The worker's own stream of a 200-step run ends soon after Stop: the header, the frames read, the step
    computing when the Stop came, and any it had made ahead of the reader."""
    actor = workers._actors[0]
    stream = actor.run.options(num_returns="streaming", concurrency_group="runs").remote(
        "direct", "txt2img", None, (PROMPT, "", LONG), {})
    made = 0
    for ref in stream:
        made += 1
        if made == 3:  # the header and two frames
            stop(actor, "direct")
        ray.get(ref)
    assert made - 1 < LONG.steps // 2


def test_a_run_read_to_its_last_frame_frees_its_worker(workers):
    """As the page reads: up to the frame with the result, then no further (the stream's end is never asked)."""
    for frame in workers.txt2img(PROMPT, "", SMALL).frames:
        if frame.image is not None:
            break
    assert workers._busy == [0, 0]
    unread = workers.edit_token(PROMPT, "", SMALL, 2, [("blue", 1.0)])  # a pair, dropped unread
    del unread
    assert workers._busy == [0, 0]


def test_a_pair_and_a_comparison_share_one_seed_drawn_once(workers):
    pair = workers.edit_token(PROMPT, "", replace(SMALL, seed=-1), 2, [("blue", 1.0)])
    assert pair[0].settings.seed == pair[1].settings.seed != -1
    runs = workers.compare_runs(PROMPT, "", replace(SMALL, seed=-1), [{"guidance_scale": g} for g in (1.0, 7.5)])
    assert runs[0].settings.seed == runs[1].settings.seed != -1
    assert [len(list(run.frames)) for run in (*pair, *runs)] == [SMALL.steps] * 4


def test_a_step_taken_apart_by_a_worker(workers, tiny_bundle):
    """cfg_parts on a worker equals the engine's here, and its refusal (scale 1) is the engine's message."""
    frame = list(workers.txt2img(PROMPT, "", SMALL).frames)[-1]
    theirs, ours = workers.cfg_parts(frame), Engine(tiny_bundle).cfg_parts(frame)
    assert np.abs(pixels(theirs.guided) - pixels(ours.guided)).max() <= 1
    plain = list(workers.txt2img(PROMPT, "", replace(SMALL, guidance_scale=1.0)).frames)[-1]
    with pytest.raises(ValueError, match="^guidance scale 1 runs the UNet on the prompt alone"):
        workers.cfg_parts(plain)


def test_a_worker_killed_mid_run_fails_that_run_and_is_replaced(workers):
    other = {}

    def run_beside():
        other["frames"] = list(workers.txt2img(PROMPT, "", replace(LONG, steps=60, seed=9)).frames)

    doomed = workers.txt2img(PROMPT, "", LONG).frames
    beside = threading.Thread(target=run_beside)
    beside.start()
    next(doomed)
    victim = doomed.actor
    ray.kill(victim)
    with pytest.raises(RunFailed, match="engine worker running this stopped"):
        list(doomed)
    beside.join()
    assert len(other["frames"]) == 60 and other["frames"][-1].image is not None
    assert victim not in workers._actors and len(workers._actors) == 2
    assert len(list(workers.txt2img(PROMPT, "", SMALL).frames)) == SMALL.steps


def test_a_dead_idle_worker_is_never_handed_a_run(workers):
    for actor in list(workers._actors):
        ray.kill(actor)
    runs = [workers.txt2img(PROMPT, "", replace(SMALL, seed=s)) for s in (1, 2)]
    assert [len(list(run.frames)) for run in runs] == [SMALL.steps] * 2


def test_a_gpu_per_worker_without_gpus_says_what_to_do(workers):
    with pytest.raises(ValueError, match=r"2 workers on CUDA need a GPU each, but the Ray cluster has 0"):
        worker_resources(ray, WorkerSpec("toy", "cuda", "auto", 1, False), 2)


def test_without_workers_ray_is_not_imported():
    code = ("import sys, app; args = app.parse_args(['--model', 'toy']); engine, _ = app.load_engine(args); "
            "import ui; ui.build_app(engine); print('ray' in sys.modules, args.workers, args.concurrency)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-3:] == ["False", "0", "1"]


def test_an_unreachable_cluster_stops_the_start_with_what_to_do():
    out = subprocess.run([sys.executable, "app.py", "--model", "toy", "--ray", "127.0.0.1:1", "--port",
                          str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "the Ray cluster at '127.0.0.1:1' cannot be reached" in out.stderr


def test_the_app_with_workers_serves_the_engines_image(tiny_sd_dir, tiny_bundle):
    proc, url, _ = start_app("--model", str(tiny_sd_dir), "--workers", "2", "--port", str(free_port()),
                             timeout=300)
    try:
        client = Client(url, verbose=False)
        out = client.predict(prompt=PROMPT, negative_prompt="", steps=6, guidance_scale=7.5, seed=5, width=64,
                             height=64, preview_every=2, scheduler="lms", api_name="/txt2img")
        image, progress = out[3], out[-1]  # the result, where the run stands
    finally:
        proc.kill()
        proc.wait()
    alone = result(Engine(tiny_bundle).txt2img(PROMPT, "", replace(SMALL, scheduler="lms")))
    assert progress["state"] == "done" and progress["step"] == 6
    assert np.abs(pixels(Image.open(image)) - alone).max() <= 1


def test_workers_without_ray_installed_say_how_to_install_it():
    code = (f"import sys; sys.modules['ray'] = None; import app; "
            f"sys.exit(app.main(['--model', 'toy', '--workers', '1', '--port', '{free_port()}']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "engine workers need Ray, which is not installed: pip install -r requirements-ray.txt" in out.stderr
