"""Stop buttons: one stop flag per browser session, so Stop ends only its own user's run."""
from __future__ import annotations

import threading
from collections.abc import Callable


class StopFlags:
    def __init__(self, admit: Callable[[], None] = lambda: None) -> None:
        """`admit` is asked before every run starts, and refuses it by raising (e.g. while the disk is full)."""
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._admit = admit

    def begin(self, session: str) -> threading.Event:
        """A fresh flag for the run this session is starting, once `admit` lets it start."""
        self._admit()
        flag = threading.Event()
        with self._lock:
            self._flags[session] = flag
        return flag

    def stop(self, session: str) -> None:
        with self._lock:
            flag = self._flags.get(session)
        if flag is not None:
            flag.set()

    def end(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]
