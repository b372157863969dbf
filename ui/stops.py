"""Stop buttons: one stop flag per browser session, so Stop ends only its own user's run, whether that run is
going or still waiting in the queue."""
from __future__ import annotations

import threading
from collections.abc import Callable


class StopFlags:
    def __init__(self, admit: Callable[[], None] = lambda: None) -> None:
        """`admit` is asked before every run starts, and refuses it by raising (e.g. while the disk is full)."""
        self._flags: dict[str, tuple[threading.Event, bool]] = {}  # session: (its flag, whether its run began)
        self._lock = threading.Lock()
        self._admit = admit

    def expect(self, session: str) -> None:
        """A run was asked for and waits in the queue: a fresh flag that Stop can set before the run begins
        (unless a run of this session is going: Stop is for that one)."""
        with self._lock:
            current = self._flags.get(session)
            if current is None or not current[1]:
                self._flags[session] = (threading.Event(), False)

    def begin(self, session: str) -> threading.Event:
        """The flag of the run this session is starting, once `admit` lets it start: the one it was expected
        with (set if Stop was pressed while it waited), or a fresh one."""
        self._admit()
        with self._lock:
            current = self._flags.get(session)
            flag = current[0] if current is not None and not current[1] else threading.Event()
            self._flags[session] = (flag, True)
        return flag

    def stop(self, session: str) -> None:
        with self._lock:
            current = self._flags.get(session)
        if current is not None:
            current[0].set()

    def end(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            current = self._flags.get(session)
            if current is not None and current[0] is flag:
                del self._flags[session]
