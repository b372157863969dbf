"""`python -m bench.soak`: does a server that runs for weeks stay within its disk and memory?

Starts its own `python app.py --model toy --concurrency 2` on a cache folder of its own (stopped and removed on
leaving, whatever happens), then N clients at once send M text-to-image runs through gradio_client, as scripts
and pages do: every step previewed, a new session (a new Client) every run or every few, the x0 video of every tenth
run. Every `--every` runs it prints a row: the app's peak RSS in that stretch (read every half second: one reading
depends on how many runs are in flight), the files, folders and megabytes in its cache folder, the age of the
oldest file made since the start, and the median seconds of a run in that stretch (so a slowdown shows). Rows
print as they come, so a pass cut short still says what it saw.

It fails (exit code 1) when a run fails, when the peak RSS grew by more than `--max-rss-growth` MB from the row
after `--warmup` runs to the last row, or when a file made since the start outlived the cache age by more than
`--age-slack` seconds (files the app had at the start, such as the examples' images, stay by design).

    python -m bench.soak --clients 8 --runs 1000                        # the long pass, for bench/RESULTS.md
    python -m bench.soak --runs 80 --every 20 --warmup 40 --steps 10 --clients 4 --cache-max-age 20   # CI's pass
"""
from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from gradio_client import Client

from bench.serve import served

PROMPTS = ["a red circle on a white background", "a blue square on a black background",
           "a green triangle on a yellow background", "a white star on a blue background"]
# gradio_client's requests time out after httpx's 5 s; a machine busy with 8 clients can take longer to answer,
# which is slowness (the run time column), not a failed run
HTTP_TIMEOUT = 60
HEAD = ("runs", "peak RSS MB", "cache files", "folders", "cache MB", "oldest file s", "median run s", "failed")


@dataclass
class Tally:
    """What the clients report, shared between their threads."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    seconds: list[float] = field(default_factory=list)  # each finished run's wall time, in finishing order
    failures: list[str] = field(default_factory=list)

    def add(self, seconds: float | None, failure: str | None = None) -> None:
        with self.lock:
            if failure is None:
                self.seconds.append(seconds)
            else:
                self.failures.append(failure)

    @property
    def done(self) -> int:
        with self.lock:
            return len(self.seconds) + len(self.failures)


def one_run(client: Client, number: int, steps: int, video: bool) -> None:
    """A text-to-image run with every step previewed, read to its last message like a script reads it."""
    job = client.submit(prompt=PROMPTS[number % len(PROMPTS)], negative_prompt="", steps=steps, seed=number,
                        preview_every=1, api_name="/txt2img")
    frames = sum(1 for out in job if isinstance(out[1], dict))
    if job.result()[-1]["state"] != "done" or frames < steps:  # result() raises the app's error, if any
        raise RuntimeError(f"run {number} streamed {frames} x0 images for {steps} steps")
    if video:
        client.predict(fps=8, api_name="/txt2img_video")


def client_loop(url: str, numbers, tally: Tally, args: argparse.Namespace) -> None:
    """One client: takes run numbers until none are left, opening a new session every `session_runs` runs."""
    client, used = None, 0
    try:
        for number in numbers:
            started = time.perf_counter()
            try:
                if client is None or used == args.session_runs:
                    if client is not None:
                        client.close()
                    client, used = Client(url, verbose=False, download_files=False, analytics_enabled=False,
                                          httpx_kwargs={"timeout": HTTP_TIMEOUT}), 0
                used += 1
                one_run(client, number, args.steps, video=number % 10 == 9)
                tally.add(time.perf_counter() - started)
            except Exception as err:  # a failed run is counted and reported; the soak goes on, in a new session
                tally.add(None, f"run {number}: {type(err).__name__}: {err}".splitlines()[0])
                used = args.session_runs
    finally:
        if client is not None:
            client.close()


def cache_figures(folder: Path, at_start: set[Path]) -> tuple[int, int, float, float]:
    """Files, folders, megabytes, and the age in seconds of the oldest file not there at the start. Files and
    folders that expire while it looks are passed over (os.walk skips a folder it can no longer open)."""
    files = folders = size = 0
    oldest = time.time()
    for root, subfolders, names in os.walk(folder):
        folders += len(subfolders)
        for name in names:
            path = Path(root, name)
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            files += 1
            size += stat.st_size
            if path not in at_start:
                oldest = min(oldest, stat.st_mtime)
    return files, folders, size / 2**20, time.time() - oldest


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def row(runs: int, rss: float, folder: Path, at_start: set[Path], seconds: list[float], failed: int) -> tuple:
    files, folders, megabytes, oldest = cache_figures(folder, at_start)
    return (runs, rss, files, folders, megabytes, oldest, statistics.median(seconds) if seconds else float("nan"),
            failed)


def show(values: tuple) -> str:
    runs, rss, files, folders, megabytes, oldest, median, failed = values
    cells = (f"{runs}", f"{rss:.0f}", f"{files:,}", f"{folders:,}", f"{megabytes:.1f}", f"{oldest:.0f}",
             f"{median:.2f}", f"{failed}")
    return "  ".join(cell.rjust(len(name)) for cell, name in zip(cells, HEAD))


def soak(args: argparse.Namespace, folder: Path) -> list[tuple]:
    """Serves the app, runs the clients, and returns the printed rows."""
    rows, tally = [], Tally()
    with served("--model", "toy", "--concurrency", str(args.concurrency), "--cache-dir", str(folder),
                "--cache-max-age", str(args.cache_max_age)) as app:
        at_start = set(folder.rglob("*"))
        numbers = iter(range(args.runs))
        lock = threading.Lock()

        def take():
            while True:
                with lock:
                    number = next(numbers, None)
                if number is None:
                    return
                yield number

        threads = [threading.Thread(target=client_loop, args=(app.url, take(), tally, args), daemon=True)
                   for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        print("  ".join(HEAD), flush=True)
        for mark in itertools.count(args.every, args.every):
            peak = rss_mb(app.pid)
            while tally.done < min(mark, args.runs) and any(thread.is_alive() for thread in threads):
                time.sleep(0.5)  # polling the clients' progress and the app's RSS, not synchronising with them
                peak = max(peak, rss_mb(app.pid))
            with tally.lock:
                window = tally.seconds[-args.every:]
                failed = len(tally.failures)
            rows.append(row(min(mark, tally.done), peak, folder, at_start, window, failed))
            print(show(rows[-1]), flush=True)
            if mark >= args.runs or not any(thread.is_alive() for thread in threads):
                break
    for failure in tally.failures[:10]:
        print(f"failed: {failure}", file=sys.stderr)
    return rows


def verdict(rows: list[tuple], args: argparse.Namespace) -> list[str]:
    """What was not bounded, one line each; empty when the soak passed."""
    problems = []
    if rows[-1][-1]:
        problems.append(f"{rows[-1][-1]} runs failed")
    after_warmup = [r for r in rows if r[0] >= args.warmup]
    if len(after_warmup) >= 2 and (growth := after_warmup[-1][1] - after_warmup[0][1]) > args.max_rss_growth:
        problems.append(f"peak RSS grew by {growth:.0f} MB after {after_warmup[0][0]} runs (limit {args.max_rss_growth} MB)")
    limit = args.cache_max_age + args.age_slack
    if (oldest := max(r[5] for r in rows)) > limit:
        problems.append(f"a cache file lived {oldest:.0f} s: longer than the cache age {args.cache_max_age} s "
                        f"plus {args.age_slack} s")
    return problems


COUNTS = (  # the whole-number options, each at least 1: (flag, default, help)
    ("--clients", 8, "clients sending runs at once"),
    ("--runs", 1000, "text-to-image runs in all"),
    ("--every", 100, "a row every this many runs"),
    ("--steps", 30, "steps a run, each previewed"),
    ("--session-runs", 1, "runs a session makes before its client leaves (1: every run a new visitor)"),
    ("--concurrency", 2, "the app's --concurrency"),
    ("--cache-max-age", 120, "the app's --cache-max-age, in seconds"),
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default, about in COUNTS:
        p.add_argument(flag, type=int, default=default, help=about)
    p.add_argument("--warmup", type=int, default=100, help="runs before the RSS it is measured against")
    p.add_argument("--max-rss-growth", type=float, default=50, help="MB the RSS may grow after the warm-up")
    p.add_argument("--age-slack", type=float, default=60,
                   help="seconds a file may outlive the cache age (the sweep's interval and a slow machine)")
    args = p.parse_args()
    for flag, _, _ in COUNTS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    return args


def main() -> int:
    args = parse_args()
    print(f"# python -m bench.soak · {time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} cores · load "
          f"{os.getloadavg()[0]:.1f} · {args.clients} clients, {args.runs} runs of {args.steps} steps, a new "
          f"session every {args.session_runs}, app --concurrency {args.concurrency} --cache-max-age "
          f"{args.cache_max_age}", flush=True)
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="sdlens-soak-"))
    try:
        rows = soak(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    problems = verdict(rows, args)
    print(f"# {time.perf_counter() - started:.0f} s · " + ("; ".join(problems) if problems else "bounded"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
