"""The app as the benchmarks measure it: `python app.py ARGS` on a free port, started as a user starts it and
always stopped on leaving. Imports nothing heavy, so a measurement of the app process is not one of itself."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

APP = Path(__file__).resolve().parents[1] / "app.py"
APP_START_SECONDS = 300  # for the app to import, load its model and print its URL (minutes on a busy machine)


@dataclass(frozen=True)
class Served:
    url: str  # the app's local URL, as it printed it
    pid: int  # its process, for measuring it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(*args: str) -> Iterator[Served]:
    """`python app.py ARGS` on a free port; yields its URL and process id, and stops the app on leaving,
    whatever happened meanwhile."""
    proc = subprocess.Popen([sys.executable, str(APP), *args, "--port", str(free_port())], cwd=APP.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield Served(local_url(proc), proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def local_url(proc: subprocess.Popen) -> str:
    """The URL the app prints once it serves; its later output is drained, so that it never blocks writing."""
    killer = threading.Timer(APP_START_SECONDS, proc.kill)  # a hung start fails the caller, not the machine
    killer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if match := re.search(r"Running on local URL:\s+(\S+)", line):
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                return match.group(1)
    finally:
        killer.cancel()
    raise RuntimeError(f"the app printed no local URL (exit code {proc.wait()}, killed if it took over "
                       f"{APP_START_SECONDS} s): {''.join(lines[-1:]).strip()}\n{''.join(lines)}")
