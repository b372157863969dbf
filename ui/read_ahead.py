"""Streaming a run while gradio sends it: the next step is computed while the page's last message goes out."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

_END = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def read_ahead(items: Iterable, depth: int = 2) -> Iterator:
    """`items`, produced by a thread of its own at most `depth` items ahead of the reader.

    Gradio handles a streamed message (its images copied into the cache, the message sent) before it asks
    the generator for the next one; reading ahead lets the model's next step run meanwhile. An exception in
    `items` is raised to the reader at the point it came; a reader that stops early (a run's last frame, a
    page closed) ends the thread, which closes `items` on its own side.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    left = threading.Event()

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not _offer(ready, item, left):
                    return
            _offer(ready, _END, left)
        except BaseException as err:  # handed to the reader, which raises it
            _offer(ready, _Raised(err), left)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="sdlens-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        left.set()


def _offer(ready: queue.Queue, item, left: threading.Event) -> bool:
    """Puts `item` once there is room; False when the reader has left meanwhile."""
    while not left.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
