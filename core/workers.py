"""Engine workers: the runs of an Engine in Ray actors, each holding the model on its own device.

`Workers` is an Engine: the app process keeps a copy of the model on the CPU for the quick calls (tokens,
checks, the VAE and schedule views), and every run goes to the worker with the fewest runs, whose frames
stream back through a Ray streaming generator as plain data (tensors on the CPU, PIL images). A run's Stop
reaches its worker within a poll interval, so before its next step. A worker that dies fails the run it was
running with a message saying so, and is replaced; a run that had not started yet moves to another worker.

Ray is imported here only, and this module only where the app is started with --workers or --ray.
"""
from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from core import images
from core.engine import Engine, Run
from core.models import TOY, is_toy, load_model
from core.sampler import Frame, RunFailed, Settings

ROOT = Path(__file__).resolve().parent.parent  # the project, shipped to a cluster's workers as their working dir
SHIPPED_EXCLUDES = [".venv", ".git", "tests", "ui/assets", "bench", "**/__pycache__"]
STOP_POLL_S = 0.05
PROBE_TIMEOUT_S = 10  # how long a cluster's address may take to answer
MAX_STOPPED = 1000  # Stops a worker remembers  # how often a run's Stop flag is read while its worker runs it
DIED = ("the engine worker running this stopped ({reason}); a new worker is starting in its place, "
        "so run it again in a moment")
log = logging.getLogger("sdlens")


@dataclass(frozen=True)
class WorkerSpec:
    """How each worker loads its model: the app's --model, --device and --dtype, and its share of the CPU."""

    model: str
    device: str
    dtype: str
    threads: int                   # torch's CPU threads in each worker
    safety: bool                   # diffusers' safety checker for real weights (public links); never for the toy


@dataclass(frozen=True)
class Header:
    """What a run says before its first frame (a Run without its frames)."""

    settings: object
    notes: tuple[str, ...]
    source: object


def tensors_to(value, device: torch.device):
    """A frame (or what it holds) with every tensor moved to `device`: frames cross processes on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(tensors_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: tensors_to(v, device) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return replace(value, **{f.name: tensors_to(getattr(value, f.name), device) for f in fields(value)
                                 if f.init})
    return value


class Worker:
    """One engine in one process (the body of the Ray actor): runs by name, each stoppable by its id."""

    def __init__(self, spec: WorkerSpec):
        from core.safety import load_checker

        torch.set_num_threads(spec.threads)
        self.bundle, _ = load_model(spec.model, device=spec.device, dtype=spec.dtype)
        wanted = spec.safety and not is_toy(self.bundle)
        checker = load_checker(self.bundle.source, self.bundle.device, self.bundle.dtype) if wanted else None
        self.engine = Engine(self.bundle, checker)
        self.stopped: deque[str] = deque(maxlen=MAX_STOPPED)  # a Stop may come before its run starts, or after

    def describe(self) -> str:
        return self.bundle.describe()

    def source(self) -> str:
        """The model as the app names it (what `auto` chose), for the app's own copy."""
        return TOY if is_toy(self.bundle) else self.bundle.source

    def stop(self, run_id: str) -> None:
        self.stopped.append(run_id)

    def run(self, run_id: str, method: str, part: int | None, args: tuple, kwargs: dict) -> Iterator:
        """The Engine call's run (`part` of a pair of runs), streamed: its Header, then each frame on the CPU; an
        error (bad input, out of memory, a failure) is sent as the exception itself, the stream's last item."""
        try:
            run = getattr(self.engine, method)(*args, should_stop=lambda: run_id in self.stopped, **kwargs)
            run = run if part is None else run[part]
            yield Header(run.settings, run.notes, run.source)
            for frame in run.frames:
                yield tensors_to(frame, torch.device("cpu"))
        except Exception as err:  # the app raises it again: its message, not a Ray traceback, reaches the user
            yield err

    def cfg_parts(self, frame: Frame):
        """The step taken apart, or the exception that stopped it (as `run` sends errors)."""
        try:
            return self.engine.cfg_parts(tensors_to(frame, self.bundle.device))
        except Exception as err:
            return err


class Workers(Engine):
    """An Engine whose runs go to Ray actors (`Worker`s); everything else runs on the app's own CPU copy."""

    def __init__(self, spec: WorkerSpec, count: int, address: str | None = None):
        ray = start_ray(address)
        per_worker = worker_resources(ray, spec, count)
        self.spec = replace(spec, threads=max(1, int(per_worker.get("num_cpus", 1))))
        self._actor_class = ray.remote(concurrency_groups={"control": 1, "runs": 1})(Worker).options(**per_worker)
        self._ray, self._lock, self._ids = ray, threading.Lock(), itertools.count()
        self._actors = [self._new_actor() for _ in range(count)]
        self._busy = [0] * count
        try:
            source = ray.get(self._actors[0].source.remote())  # waits for the first worker's model
        except ray.exceptions.RayActorError as err:
            raise ValueError(f"the engine workers could not load {spec.model!r}: {err}") from err
        self._described = f"{ray.get(self._actors[0].describe.remote())} · {count} engine worker(s) on Ray"
        bundle, _ = load_model(source, device="cpu", dtype="float32")
        super().__init__(bundle)

    def describe(self) -> str:
        """The model as the workers hold it (their device), and how many there are."""
        return self._described

    def _new_actor(self):
        actor = self._actor_class.remote(self.spec)
        actor.source.remote()  # loads the model now, not in the first run
        return actor

    def _pick(self) -> int:
        """The least busy worker, counted busy with one more run until `_release`."""
        with self._lock:
            index = min(range(len(self._actors)), key=self._busy.__getitem__)
            self._busy[index] += 1
            return index

    def _release(self, index: int) -> None:
        with self._lock:
            self._busy[index] -= 1

    def _replace(self, index: int, actor) -> None:
        """Put a new worker where `actor` was, once (concurrent runs may see the same death)."""
        with self._lock:
            if self._actors[index] is actor:
                log.warning("engine worker %d stopped; starting a new one in its place", index)
                self._ray.kill(actor)  # if only unreachable for a while, it must not keep its GPU
                self._actors[index] = self._new_actor()

    def _remote_run(self, method: str, part: int | None, args: tuple, kwargs: dict,
                    should_stop: Callable[[], bool]) -> Run:
        """Start the call on the least busy worker and wait for its header; a worker found dead before the run
        started is replaced and the run goes to another."""
        for _ in range(len(self._actors) + 1):
            index = self._pick()
            actor, run_id = self._actors[index], f"run-{next(self._ids)}"
            try:
                stream = actor.run.options(num_returns="streaming", concurrency_group="runs").remote(
                    run_id, method, part, args, kwargs)
                header = self._ray.get(next(stream))
            except self._ray.exceptions.RayActorError:
                self._release(index)
                self._replace(index, actor)
                continue
            except BaseException:
                self._release(index)
                raise
            if isinstance(header, Exception):  # bad input (ValueError), or the run failed before its first step
                self._release(index)
                raise header
            frames = RemoteFrames(self, index, actor, run_id, stream, should_stop)
            return Run(header.settings, header.notes, frames, header.source)
        raise RunFailed("no engine worker could take the run: each one stopped as it started; see the terminal")

    def cfg_parts(self, frame: Frame):
        """The step taken apart by the least busy worker."""
        index = self._pick()
        actor = self._actors[index]
        try:
            parts = self._ray.get(actor.cfg_parts.remote(frame))
        except self._ray.exceptions.RayActorError as err:
            self._replace(index, actor)
            raise RunFailed(DIED.format(reason=type(err).__name__)) from err
        finally:
            self._release(index)
        if isinstance(parts, Exception):
            raise parts
        return parts

    def close(self) -> None:
        """Stop every worker (their runs end with them); Ray itself stays up."""
        for actor in self._actors:
            self._ray.kill(actor)

    # the Engine's calls that make runs, each run on a worker (same arguments, same Run)

    def txt2img(self, *args, should_stop: Callable[[], bool] = lambda: False, **kwargs) -> Run:
        return self._remote_run("txt2img", None, args, kwargs, should_stop)

    def guided(self, *args, should_stop: Callable[[], bool] = lambda: False, **kwargs) -> Run:
        return self._remote_run("guided", None, args, kwargs, should_stop)

    def attention(self, *args, should_stop: Callable[[], bool] = lambda: False, **kwargs) -> Run:
        return self._remote_run("attention", None, args, kwargs, should_stop)

    def mix_prompts(self, *args, should_stop: Callable[[], bool] = lambda: False, **kwargs) -> Run:
        return self._remote_run("mix_prompts", None, args, kwargs, should_stop)

    def img2img(self, prompt: str, negative_prompt: str, image, *args,
                should_stop: Callable[[], bool] = lambda: False, **kwargs) -> Run:
        """The image is opened here and sent as pixels: a worker on another machine cannot read the app's files."""
        image = images.open_image(image)
        return self._remote_run("img2img", None, (prompt, negative_prompt, image, *args), kwargs, should_stop)

    def edit_token(self, prompt: str, negative_prompt: str, settings: Settings, *args,
                   should_stop: Callable[[], bool] = lambda: False, **kwargs) -> tuple[Run, Run]:
        """The pair of runs, each on a worker of its own when two are free, from one seed drawn here."""
        settings = self.check_txt2img(prompt, negative_prompt, settings)
        args = (prompt, negative_prompt, settings, *args)
        return tuple(self._remote_run("edit_token", part, args, kwargs, should_stop) for part in (0, 1))


@dataclass
class StopWatch:
    """Sends Stop to a run's worker the moment its flag is set, until the run ends (a thread of its own, which
    holds only this)."""

    actor: object
    run_id: str
    should_stop: Callable[[], bool]
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._watch, daemon=True, name=f"stop-{self.run_id}").start()

    def _watch(self) -> None:
        while not self.ended.wait(STOP_POLL_S):
            if self.should_stop():
                stop(self.actor, self.run_id)
                return


class RemoteFrames(Iterator[Frame]):
    """A run's frames as they arrive from its worker; like a run here, a stopped run yields no frame after Stop.
    The worker is freed at the run's last frame, at an error, at `close` (the page stopped reading), or when
    the frames are dropped unread; a run not read to its end is stopped on its worker."""

    def __init__(self, workers: Workers, index: int, actor, run_id: str, stream, should_stop: Callable[[], bool]):
        self.actor, self.run_id = actor, run_id
        self._workers, self._index, self._stream = workers, index, stream
        self._watch = StopWatch(actor, run_id, should_stop)
        self._closing = threading.Lock()
        self._watch.start()

    def __next__(self) -> Frame:
        if self._watch.ended.is_set():
            raise StopIteration
        ray = self._workers._ray
        try:
            item = ray.get(next(self._stream))
        except StopIteration:
            self.close(finished=True)
            raise
        except ray.exceptions.RayActorError as err:
            self._workers._replace(self._index, self.actor)
            self.close(finished=True)
            raise RunFailed(DIED.format(reason=type(err).__name__)) from err
        if isinstance(item, Exception):
            self.close(finished=True)
            raise item
        if self._watch.should_stop():  # frames the worker made before it heard Stop are not shown
            self.close()
            raise StopIteration
        if item.index + 1 == item.steps:  # the last step: the worker is done with this run
            self.close(finished=True)
        return item

    def close(self, finished: bool = False) -> None:
        with self._closing:
            if self._watch.ended.is_set():
                return
            self._watch.ended.set()
        if not finished:
            stop(self.actor, self.run_id)  # stopped, or nobody reads on: the worker stops too
        self._workers._release(self._index)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit Ray may be gone: nothing left to stop
            return


def stop(actor, run_id: str) -> None:
    """Tell a worker to stop a run: its own concurrency group, so it lands while the run's step computes."""
    actor.stop.options(concurrency_group="control").remote(run_id)


def start_ray(address: str | None):
    """Ray, started here (no address) or joined at `address` (a `ray start` head, `auto`, or ray://host:10001)."""
    try:
        import ray
    except ImportError as err:
        raise ValueError("engine workers need Ray, which is not installed: pip install -r requirements-ray.txt") \
            from err
    if ray.is_initialized():
        return ray
    env = {"working_dir": str(ROOT), "excludes": SHIPPED_EXCLUDES}
    try:
        if address and address != "auto":
            probe(address)  # Ray itself retries an address that does not answer for minutes
        ray.init(address=address, runtime_env=env, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    except (ConnectionError, RuntimeError, OSError) as err:
        raise ValueError(f"the Ray cluster at {address!r} cannot be reached ({err}); check the address "
                         "(ray status on the head node prints it) and, for a cluster with token authentication "
                         "(ray start's default), set RAY_AUTH_MODE=token with the head's ~/.ray/auth_token here; "
                         "or leave --ray out to start Ray here") from err
    return ray


def probe(address: str) -> None:
    """Raise OSError unless something listens at a Ray address (host:port or ray://host:port)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise OSError(f"an address is host:port, ray://host:port or auto, got {address!r}")
    socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()


def worker_resources(ray, spec: WorkerSpec, count: int) -> dict:
    """Each worker's share: one GPU when the model runs on CUDA, else an equal share of the cluster's CPUs."""
    if count < 1:
        raise ValueError(f"--workers must be at least 1, got {count}")
    cluster = ray.cluster_resources()
    if spec.device.startswith("cuda") or (spec.device == "auto" and cluster.get("GPU", 0) >= 1):
        if cluster.get("GPU", 0) < count:
            raise ValueError(f"{count} workers on CUDA need a GPU each, but the Ray cluster has "
                             f"{cluster.get('GPU', 0):g}; use fewer --workers, or --device cpu")
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": max(1, int(cluster.get("CPU", os.cpu_count() or 1)) // count)}
