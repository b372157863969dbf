"""Keeping a server that runs for weeks within its disk and memory.

Gradio writes every streamed frame, result, video and upload as a file in the app's cache folder (the
GRADIO_TEMP_DIR that app.py sets before gradio is imported), and keeps each session's state in memory until
10,000 sessions have come. Upkeep bounds both by one age: a sweep deletes files older than that and forgets
sessions idle for longer. Runs are refused, with a message naming the folder, while its disk has too little
space left.

Each sweep also hands the memory that runs freed back to the system: glibc keeps freed memory for reuse,
and under many clients its heaps fill with holes that count in the RSS long after a burst of runs.

Gradio's own expiry (Blocks' delete_cache) is not enough: in gradio 6.31 its task dies for good of "Set changed
size during iteration" as soon as a run adds a file while it looks, which concurrent runs soon do. It still
deletes the app's files when the app stops.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
import gradio as gr

from core import heap

log = logging.getLogger("sdlens")
MAX_SWEEP_INTERVAL = 300  # seconds; a file outlives the cache age by at most one interval


@dataclass(frozen=True)
class Upkeep:
    folder: Path            # the app's cache folder: every file it serves
    max_age: int = 3600     # seconds a file, and a session idle that long, is kept
    min_free_mb: int = 200  # runs are refused while the folder's disk has less free space; 0: never

    @property
    def interval(self) -> int:
        """Seconds between two sweeps."""
        return max(1, min(self.max_age // 4, MAX_SWEEP_INTERVAL))

    @property
    def delete_cache(self) -> tuple[int, int]:
        """gradio's own expiry, Blocks(delete_cache=(every, age)): what it deletes on stopping counts most."""
        return self.interval, self.max_age

    def check_space(self) -> None:
        """Refuses a run (gr.Error) while the cache folder cannot be written or its disk is nearly full."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)  # a temp cleaner may have removed it
            free_mb = shutil.disk_usage(self.folder).free / 2**20
        except OSError as err:
            log.warning("refused: cache folder %s: %s", self.folder, err)
            raise gr.Error(f"The cache folder {self.folder} cannot be written ({err}). Runs start again once it "
                           "can; the app is still running.", print_exception=False) from err
        if free_mb < self.min_free_mb:
            log.warning("refused: %.0f MB free in %s (need %d)", free_mb, self.folder, self.min_free_mb)
            raise gr.Error(f"The disk is full: the cache folder {self.folder} has {free_mb:.0f} MB free and a run "
                           f"needs {self.min_free_mb} MB. Runs start again once space is freed (files there expire "
                           f"after {self.max_age} s); the app is still running.", print_exception=False)

    def sweep(self, blocks: gr.Blocks, now: float | None = None) -> int:
        """Deletes the files in the cache folder older than the cache age, but those gradio keeps for the page
        (the examples' images), then folders left empty for a sweep interval; returns how many files went."""
        now = time.time() if now is None else now
        kept = set().union(*(set(getattr(block, "keep_in_cache", ())) for block in blocks.blocks.values()))
        deleted = set()
        for folder, _, files in os.walk(self.folder, topdown=False):
            for name in files:
                path = os.path.join(folder, name)
                if path not in kept and _remove_if_older(path, now - self.max_age, os.remove):
                    deleted.add(path)
            if folder != str(self.folder):
                _remove_if_older(folder, now - self.interval, os.rmdir)  # fails while the folder has files
        for files in list(blocks.temp_file_sets):  # gradio's record of its files, which would grow forever
            files.difference_update(deleted)  # one step under the GIL, beside runs adding files
        return len(deleted)

    def forget_idle_sessions(self, blocks: gr.Blocks, now: datetime | None = None) -> int:
        """Forgets sessions that started nothing for longer than the cache age and have nothing waiting or
        running (pages closed long ago, scripts that ended); returns how many went. Gradio keeps each session's
        state (with its own copy of the page's config, about 0.5 MB) until 10,000 sessions have come, and its
        queue an emptied set of event ids per session forever."""
        now = now or datetime.now()
        sessions, events = blocks.state_holder, blocks._queue.pending_event_ids_session
        idle = [session for session, used in list(sessions.time_last_used.items())
                if (now - used).total_seconds() > self.max_age and not events.get(session)]
        for session in idle:
            sessions.delete_state(session)  # runs each gr.State's delete callback
            with sessions.lock:
                sessions.session_data.pop(session, None)
                sessions.time_last_used.pop(session, None)
            events.pop(session, None)
        return len(idle)

    @asynccontextmanager
    async def lifespan(self, app):
        """Sweeps every interval while the app serves: launch(app_kwargs={"lifespan": upkeep.lifespan})."""
        task = asyncio.create_task(self._sweep_forever(app))
        try:
            yield
        finally:
            task.cancel()

    async def _sweep_forever(self, app) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                files = await anyio.to_thread.run_sync(self.sweep, app.get_blocks())
                sessions = self.forget_idle_sessions(app.get_blocks())  # on the event loop, as gradio uses them
                await anyio.to_thread.run_sync(heap.release_freed)
            except Exception:  # a failed sweep must not end the sweeping, nor the app
                log.exception("cache sweep failed")
                continue
            if files or sessions:
                log.info("swept %d files and %d idle sessions", files, sessions)


def _remove_if_older(path: str, cutoff: float, remove) -> bool:
    """`remove(path)` if it was last changed before `cutoff`; False when it is newer, gone or in use."""
    try:
        if os.lstat(path).st_mtime >= cutoff:
            return False
        remove(path)
    except OSError:
        return False
    return True
