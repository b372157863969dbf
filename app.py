"""SD Lens: watch Stable Diffusion denoise, step by step, in the browser.

    python app.py                                   # SD v1.4 on a CUDA GPU, else the toy world model
    python app.py --model /path/to/diffusers/folder # a local model, offline
    python app.py --share --auth teacher:secret     # a public link with a password

Every flag can also come from an environment variable (SDLENS_MODEL, SDLENS_DEVICE, ...), which is how
hosted demos are configured; a flag on the command line wins.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

from core import heap

# glibc's mallopt option for the number of memory arenas, and the limit the app sets
DEFAULT_MODEL = "auto"  # SD v1.4 on a CUDA GPU (the toy if the Hub fails), else the toy world
DEFAULT_CACHE_DIR = str(Path(tempfile.gettempdir()) / "sdlens")  # the system's temp folder, as TMPDIR sets it
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SDLENS_{name}", default)


def duration(text: str) -> int:
    """Whole seconds from "3600", "90s", "30m", "1h" or "2d"."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, or with m, h or d (30m, 1h), "
                                         f"got {text!r}")
    return int(number) * DURATION_UNITS[unit]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # Defaults from the environment stay strings: argparse converts them like typed flags, so a bad
    # SDLENS_PORT gets the same one-line usage error as a bad --port.
    p = argparse.ArgumentParser(description="SD Lens: look inside Stable Diffusion while it works.")
    p.add_argument("--model", default=env("MODEL", DEFAULT_MODEL),
                   help="auto (SD v1.4 on a CUDA GPU, else the toy world), toy, a Hugging Face id, or a local "
                        "folder in diffusers format (env SDLENS_MODEL)")
    p.add_argument("--device", default=env("DEVICE", "auto"),
                   help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (env SDLENS_DEVICE)")
    p.add_argument("--dtype", default=env("DTYPE", "auto"),
                   help="auto (float16 on CUDA, float32 elsewhere), float32, float16 or bfloat16 (env SDLENS_DTYPE)")
    p.add_argument("--threads", type=int, default=env("THREADS"),
                   help="torch's CPU threads for the model in this process; default on a CPU: torch's own count less "
                        "one, kept for serving the page (env SDLENS_THREADS)")
    p.add_argument("--host", default=env("HOST", "0.0.0.0" if "SPACE_ID" in os.environ else "127.0.0.1"),
                   help="address to serve on; 0.0.0.0 for every interface, the default on a Hugging Face Space "
                        "(env SDLENS_HOST)")
    p.add_argument("--port", type=int, default=env("PORT", "7860"), help="port (env SDLENS_PORT)")
    p.add_argument("--share", action="store_true", default=env("SHARE", "") in ("1", "true", "yes"),
                   help="also serve through a public gradio.live link (env SDLENS_SHARE=1)")
    p.add_argument("--no-safety-checker", action="store_true",
                   default=env("NO_SAFETY_CHECKER", "") in ("1", "true", "yes"),
                   help="no safety checker on public links (--share, or a Space) of real weights, for private use "
                        "(env SDLENS_NO_SAFETY_CHECKER=1)")
    p.add_argument("--auth", default=env("AUTH"),
                   help="user:password that protects the page and the API (env SDLENS_AUTH)")
    p.add_argument("--concurrency", type=int, default=env("CONCURRENCY"),
                   help="generations that run at once; the rest wait in the queue; default 1, or one per engine "
                        "worker (env SDLENS_CONCURRENCY)")
    p.add_argument("--workers", type=int, default=env("WORKERS", "0"),
                   help="engine workers in Ray actors, each with the model on its own device: a GPU each where "
                        "there are GPUs, a share of the CPU cores otherwise; 0: none, the app runs the model "
                        "itself (env SDLENS_WORKERS)")
    p.add_argument("--ray", default=env("RAY"), metavar="ADDRESS",
                   help="join the Ray cluster at ADDRESS (host:6379, ray://host:10001 or auto) for the engine "
                        "workers; without it --workers starts Ray on this machine (env SDLENS_RAY)")
    p.add_argument("--queue-size", type=int, default=env("QUEUE_SIZE", "20"),
                   help="requests that may wait; more are turned away with a message (env SDLENS_QUEUE_SIZE)")
    p.add_argument("--max-upload", default=env("MAX_UPLOAD", "20mb"),
                   help="largest file a user may upload, e.g. 20mb (env SDLENS_MAX_UPLOAD)")
    p.add_argument("--cache-dir", default=env("CACHE_DIR", DEFAULT_CACHE_DIR),
                   help="the folder of every file the app serves: streamed frames, results, videos, uploads "
                        "(env SDLENS_CACHE_DIR)")
    p.add_argument("--cache-max-age", type=duration, default=env("CACHE_MAX_AGE", "1h"),
                   help="how long files, a session's last run and idle sessions are kept: seconds, or 30m, 1h, 2d "
                        "(env SDLENS_CACHE_MAX_AGE)")
    p.add_argument("--max-sessions", type=int, default=env("MAX_SESSIONS", "1000"),
                   help="browser and API sessions whose state is kept (about 0.5 MB each); past that the longest "
                        "unused goes (env SDLENS_MAX_SESSIONS)")
    p.add_argument("--min-free-mb", type=int, default=env("MIN_FREE_MB", "200"),
                   help="runs are refused while the cache folder's disk has less free space; 0: never "
                        "(env SDLENS_MIN_FREE_MB)")
    return checked(p, p.parse_args(argv))


def checked(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The flags checked together (a bad one ends the start with argparse's one-line usage error), and the
    defaults that depend on others filled in."""
    if args.auth is not None and ":" not in args.auth:
        p.error(f"--auth must be user:password, got {args.auth!r}")
    if args.workers < 0:
        p.error(f"--workers must be 0 or more, got {args.workers}")
    if args.ray and args.workers == 0:
        args.workers = 1
    if args.concurrency is None:
        args.concurrency = max(1, args.workers)
    if args.concurrency < 1:
        p.error(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.threads is not None and args.workers:
        p.error("--threads is for a model run in the app's process; each Ray worker takes one thread: drop --threads "
                "or --workers")
    if args.queue_size < 1:
        p.error(f"--queue-size must be at least 1, got {args.queue_size}")
    if args.max_sessions < 1:
        p.error(f"--max-sessions must be at least 1, got {args.max_sessions}")
    if args.min_free_mb < 0:
        p.error(f"--min-free-mb must be 0 or more, got {args.min_free_mb}")
    return args


def port_taken(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def prepare_cache(folder: str) -> Path:
    """The app's cache folder, made if missing and checked writable, and gradio's (GRADIO_TEMP_DIR): some of
    gradio's modules read that when imported, so this runs before anything imports gradio."""
    path = Path(folder).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
        pass
    os.environ["GRADIO_TEMP_DIR"] = str(path)
    return path


def launch(demo, args: argparse.Namespace, upkeep) -> None:
    """Serve, sweeping the cache meanwhile; then say in one line each where: the local URL, and the public link
    or why there is none."""
    from ui import CSS

    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    chatter = io.StringIO()  # gradio's own multi-line messages; what matters is printed below
    with contextlib.redirect_stdout(chatter):
        _, local_url, _ = demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                                      max_file_size=args.max_upload, css=CSS, quiet=True,
                                      prevent_thread_lock=True, state_session_capacity=args.max_sessions,
                                      app_kwargs={"lifespan": upkeep.lifespan})
    print(f"* Running on local URL:  {local_url}", flush=True)
    if args.share and demo.share_url:
        print(f"* Running on public URL: {demo.share_url}", flush=True)
    elif args.share:
        print("* No public link: the share server cannot be reached (offline?); serving locally only.", flush=True)
    demo.block_thread()


def quiet_libraries() -> None:
    """Keep the terminal to what the user needs: no per-load progress bars or library chatter."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def log_to_terminal() -> None:
    """The app's own log lines (refused inputs, failed runs) on stderr, one line each."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("sdlens")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def wants_safety_checker(args: argparse.Namespace) -> bool:
    """Public (--share, or a Hugging Face Space, which sets SPACE_ID) and not turned off."""
    return (args.share or "SPACE_ID" in os.environ) and not args.no_safety_checker


def safety_checker(args: argparse.Namespace, bundle):
    """diffusers' safety checker where real weights are served publicly (--share, or a Hugging Face Space,
    which sets SPACE_ID) and it is not turned off; None for private use and for the toy world's shapes."""
    from core.models import is_toy
    from core.safety import load_checker

    if not wants_safety_checker(args) or is_toy(bundle):
        return None
    print("Loading the safety checker (public link of real weights; --no-safety-checker turns it off) ...", flush=True)
    return load_checker(bundle.source, bundle.device, bundle.dtype)


def load_engine(args: argparse.Namespace):
    """The engine and a notice when `auto` fell back: the model here, or in Ray actors with --workers/--ray."""
    if args.workers:
        from core.workers import WorkerSpec, Workers

        print(f"Starting {args.workers} engine worker(s) on Ray {args.ray or '(local)'} ...", flush=True)
        spec = WorkerSpec(args.model, args.device, args.dtype, threads=1, safety=wants_safety_checker(args))
        return Workers(spec, args.workers, args.ray), None
    import torch

    from core.engine import Engine
    from core.models import load_model, serving_threads

    bundle, notice = load_model(args.model, device=args.device, dtype=args.dtype)
    torch.set_num_threads(serving_threads(bundle.device, args.threads))
    print(f"torch uses {torch.get_num_threads()} CPU thread(s) (--threads)", flush=True)
    return Engine(bundle, safety_checker(args, bundle)), notice  # the Engine checks the folder's settings


def main(argv: list[str] | None = None) -> int:
    heap.limit_arenas()
    args = parse_args(argv)
    log_to_terminal()
    if port_taken(args.host, args.port):
        print(f"error: port {args.port} on {args.host} is taken; pick another with --port", file=sys.stderr)
        return 2
    try:
        cache = prepare_cache(args.cache_dir)
    except OSError as err:
        print(f"error: cannot write to the cache folder {args.cache_dir} ({err.strerror or err}); pick another "
              "with --cache-dir", file=sys.stderr)
        return 2
    if os.environ.get("SPACES_ZERO_GPU"):
        importlib.import_module("spaces")  # ZeroGPU's package goes before torch touches CUDA, as Spaces ask
    quiet_libraries()
    from core.models import ModelLoadError
    from ui import build_app
    from ui.upkeep import Upkeep

    print(f"Loading {args.model} ...", flush=True)
    try:
        engine, notice = load_engine(args)
    except (ModelLoadError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if notice:
        print(f"Notice: {notice}", flush=True)
    print(f"Loaded {engine.describe()}", flush=True)
    print(f"Cache folder: {cache} (files and idle sessions expire after {args.cache_max_age} s)", flush=True)
    upkeep = Upkeep(cache, max_age=args.cache_max_age, min_free_mb=args.min_free_mb)
    demo = build_app(engine, concurrency=args.concurrency, notice=notice, upkeep=upkeep)
    demo.queue(max_size=args.queue_size)
    try:
        launch(demo, args, upkeep)
    except OSError as err:
        print(f"error: cannot serve on {args.host}:{args.port} ({err}); pick another with --port", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
