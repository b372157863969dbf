"""Stop buttons: one stop flag per browser session, so Stop ends only its own user's run, whether that run is
going or still waiting in the queue."""
from __future__ import annotations

import threading
from collections.abc import Callable


class StopFlags:
    """A session's flags: the run going, and the run the page last asked for, until it begins.

    A session has one run going at a time (with several runs at once allowed, Stop reaches the last begun). When
    in doubt a Stop is dropped rather than kept for later: a Stop pressed, then another run asked for before
    the first began, leaves only the second's fresh flag; no run ever begins already stopped by a Stop that was
    not meant for it.
    """

    def __init__(self, admit: Callable[[], None] = lambda: None) -> None:
        """`admit` is asked before every run starts, and refuses it by raising (e.g. while the disk is full)."""
        self._going: dict[str, threading.Event] = {}
        self._waiting: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._admit = admit

    def expect(self, session: str) -> None:
        """The page asked for a run, which waits in the queue until it begins: a fresh flag, which a Stop pressed
        meanwhile sets, so that the run ends as it begins."""
        with self._lock:
            self._waiting[session] = threading.Event()

    def forget(self, session: str) -> None:
        """The run asked for will not begin (its inputs were refused): a later Stop is not for it."""
        with self._lock:
            self._waiting.pop(session, None)

    def busy(self, session: str) -> bool:
        """Whether this session has a run going, or one asked for that has not begun."""
        with self._lock:
            return session in self._going or session in self._waiting

    def begin(self, session: str) -> threading.Event:
        """The flag of the run this session is starting, once `admit` lets it start: the one it waited with
        (set if Stop was pressed meanwhile), or a fresh one."""
        with self._lock:
            flag = self._waiting.pop(session, None) or threading.Event()
            self._going[session] = flag
        try:
            self._admit()
        except BaseException:
            self.end(session, flag)
            raise
        return flag

    def stop(self, session: str) -> None:
        """Stop this session's run going, or else the one it waits for."""
        with self._lock:
            flag = self._going.get(session) or self._waiting.get(session)
        if flag is not None:
            flag.set()

    def end(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._going.get(session) is flag:
                del self._going[session]
