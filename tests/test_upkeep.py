"""A server that runs for weeks: its cache folder and age flags, files and idle sessions expiring, runs keeping
file paths instead of pixels, and a full disk or an unwritable folder said in one line."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import gradio as gr
import psutil
import pytest
from gradio.state_holder import StateHolder
from gradio_client import Client

import app
from core.heap import release_freed
from tests.conftest import ROOT, free_port, toy_app
from tests.test_api import X0, txt2img
from ui import build_app
from ui.upkeep import Upkeep


def test_cache_flags_and_their_environment_variables(monkeypatch):
    args = app.parse_args([])
    assert args.cache_dir == str(Path(tempfile.gettempdir()) / "sdlens") and args.cache_max_age == 3600
    assert (args.min_free_mb, args.max_sessions) == (200, 1000)
    args = app.parse_args(["--cache-dir", "/srv/cache", "--cache-max-age", "30m", "--min-free-mb", "0",
                           "--max-sessions", "50"])
    assert (args.cache_dir, args.cache_max_age, args.min_free_mb, args.max_sessions) == ("/srv/cache", 1800, 0, 50)
    monkeypatch.setenv("SDLENS_CACHE_DIR", "/data/sdlens")
    monkeypatch.setenv("SDLENS_CACHE_MAX_AGE", "2d")
    args = app.parse_args([])
    assert (args.cache_dir, args.cache_max_age) == ("/data/sdlens", 2 * 86400)
    assert app.parse_args(["--cache-max-age", "90"]).cache_max_age == 90  # a flag wins over the environment


@pytest.mark.parametrize("flags, message", [
    (["--cache-max-age", "soon"], "argument --cache-max-age: must be a whole number of seconds, or with m, h or d "
                                  "(30m, 1h), got 'soon'"),
    (["--cache-max-age", "0"], "got '0'"),
    (["--min-free-mb", "-1"], "--min-free-mb must be 0 or more, got -1"),
    (["--max-sessions", "0"], "--max-sessions must be at least 1, got 0"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--threads", "2", "--workers", "2"], "--threads is for a model run in the app's process; each Ray worker "
                                           "takes one thread: drop --threads or --workers"),
])
def test_bad_server_settings_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        app.parse_args(flags)
    assert exit_.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


def test_an_unwritable_cache_folder_stops_the_app_in_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # root may write anywhere, but nobody can make a folder inside a file
    proc = subprocess.run([sys.executable, "app.py", "--model", "toy", "--port", str(free_port()), "--cache-dir",
                           str(blocker / "cache")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: cannot write to the cache folder {blocker / 'cache'} (Not a directory); "
                                   "pick another with --cache-dir")
    assert "Loading" not in proc.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="malloc_trim is glibc's")
def test_memory_freed_between_live_blocks_goes_back_to_the_system():
    """Freed memory in holes between blocks still in use counts in the RSS until the sweep releases it."""
    process = psutil.Process()
    blocks = [bytes(4096) for _ in range(50_000)]  # 200 MB, each block from malloc
    kept = blocks[::50]  # a live block every 200 KB keeps glibc from returning the rest on its own
    del blocks
    before = process.memory_info().rss
    assert release_freed()
    assert (before - process.memory_info().rss) / 2**20 > 100
    assert len(kept) == 1000


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def empty_folders(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_dir() and not any(path.iterdir())]


def test_the_sweep_deletes_old_files_then_emptied_folders(tmp_path):
    with gr.Blocks() as blocks:
        image = gr.Image()
    upkeep = Upkeep(tmp_path, max_age=60)
    old, served, example, new = (tmp_path / name / "image.png" for name in ("old", "served", "example", "new"))
    for path in (old, served, example, new):
        path.parent.mkdir()
        path.write_bytes(b"png")
    an_hour_ago = time.time() - 3600
    for path in (old, served, example):
        os.utime(path, (an_hour_ago, an_hour_ago))
    image.temp_files.update({str(served), str(new)})  # files gradio served, in its record of them
    image.keep_in_cache.add(str(example))  # a file of the page itself, which gradio keeps while it serves
    assert upkeep.sweep(blocks) == 2
    assert files_under(tmp_path) == {example, new}
    assert image.temp_files == {str(new)}  # gradio's record forgets what went
    assert old.parent.is_dir()  # emptied just now: it goes a sweep interval later
    upkeep.sweep(blocks, now=time.time() + upkeep.interval + 1)
    assert not old.parent.exists() and not served.parent.exists() and new.exists()


def test_idle_sessions_are_forgotten():
    with gr.Blocks() as blocks:
        gr.State([1, 2, 3])
    blocks.queue()
    sessions = StateHolder()
    sessions.set_blocks(blocks)
    events = blocks._queue.pending_event_ids_session
    for session in ("gone", "here", "running"):
        sessions[session]
        events[session] = set()  # as the queue leaves a session once its events have finished
    events["running"].add("a run started long ago, still going")
    for session in ("gone", "running"):
        sessions.time_last_used[session] -= timedelta(seconds=61)
    assert Upkeep(Path("."), max_age=60).forget_idle_sessions(blocks) == 1
    assert list(sessions.session_data) == list(sessions.time_last_used) == list(events) == ["here", "running"]


def test_a_sessions_last_run_keeps_file_paths_not_pixels(toy_engine, tmp_path):
    demo = build_app(toy_engine, upkeep=Upkeep(tmp_path)).queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=False)
        list(txt2img(client, steps=4, width=64, height=64))
        histories = [value for key, value in demo.state_holder[client.session_hash].state_data.items()
                     if value and isinstance(value, tuple)]
        assert len(histories) == 1
        seed, frames = histories[0]
        assert seed == 7 and len(frames) == 4
        assert all(isinstance(path, str) and Path(path).is_file() for _, _, *paths in frames for path in paths)
    finally:
        demo.close()


def served_files(job) -> list[str]:
    """The app's own paths of the x0 images a job streamed (a client that downloads nothing gets these)."""
    return [out[X0]["path"] for out in job if isinstance(out[X0], dict)]


def poll(condition, seconds: float = 60) -> bool:
    """Whether `condition()` came true before the deadline (the app sweeps on its own clock)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True



def test_files_expire_and_an_expired_run_says_so(tmp_path):
    cache = tmp_path / "cache"
    with toy_app("--cache-dir", str(cache), "--cache-max-age", "2") as client:
        at_start = files_under(cache)  # the page's own, such as the examples' images: kept while it serves
        frames = served_files(txt2img(client, steps=3))
        assert len(frames) == 3 and all(Path(path).parent.parent == cache for path in frames)

        def expired() -> bool:
            client.predict(prompt="a red circle", api_name="/tokenize")  # keeps the session in use meanwhile
            return not any(Path(path).exists() for path in frames)

        assert poll(expired)
        with pytest.raises(Exception, match="This run's frames have expired from the cache"):
            client.predict(fps=4, api_name="/txt2img_video")
        # every file the run made, and the folders they were in
        assert poll(lambda: files_under(cache) <= at_start and not empty_folders(cache))
        assert len(served_files(txt2img(client, steps=3))) == 3


def free_bytes(folder: Path) -> int:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def test_a_full_disk_refuses_runs_naming_the_folder_until_space_is_back(tmp_path):
    """The free space of the cache folder's disk falls below --min-free-mb while a ballast file is there."""
    cache, ballast = tmp_path / "cache", tmp_path / "ballast"
    cache.mkdir()
    margin = 1024  # MB of room above the limit at the start (others may write meanwhile); the ballast takes twice
    limit = free_bytes(cache) // 2**20 - margin
    if limit < 2 * margin:
        pytest.skip(f"needs {3 * margin} MB free on the disk of {tmp_path}")
    with toy_app("--cache-dir", str(cache), "--min-free-mb", str(limit)) as client:
        assert len(served_files(txt2img(client, steps=2))) == 2
        try:
            with open(ballast, "wb") as file:
                os.posix_fallocate(file.fileno(), 0, 2 * margin * 2**20)
            folder = re.escape(str(cache))
            refusal = rf"The disk is full: the cache folder {folder} has \d+ MB free and a run needs {limit} MB"
            with pytest.raises(Exception, match=refusal):
                txt2img(client, steps=2).result()
        finally:
            ballast.unlink()
        assert len(served_files(txt2img(client, steps=2))) == 2


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MB tmpfs, where the machine lets the tests mount one (root with CAP_SYS_ADMIN)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)]
    if not shutil.which("mount") or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_disk_that_fills_up_mid_run_says_so_and_the_next_run_works(tiny_disk):
    cache, ballast = tiny_disk / "cache", tiny_disk / "ballast"
    with toy_app("--cache-dir", str(cache), "--min-free-mb", "0") as client:
        ballast.write_bytes(bytes(free_bytes(cache) - 20_000))  # room for a few small files, not a run's
        with pytest.raises(Exception, match=rf"Cannot write to the cache folder {re.escape(str(cache))} "
                                            rf"\(No space left on device\)"):
            txt2img(client, steps=30).result()
        ballast.unlink()
        assert len(served_files(txt2img(client, steps=3))) == 3
