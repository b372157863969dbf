"""A run read ahead while gradio sends the last step: same items, same errors, and nothing left running."""
import threading

import pytest

from ui.read_ahead import read_ahead


def test_items_come_in_order_and_the_next_is_made_while_the_reader_holds_one():
    made = {2: threading.Event()}

    def source():
        for i in range(5):
            if i in made:
                made[i].set()
            yield i

    reader = read_ahead(source(), depth=2)
    assert next(reader) == 0
    assert made[2].wait(timeout=30)  # made while the reader still holds item 0
    assert list(reader) == [1, 2, 3, 4]


def test_an_error_reaches_the_reader_after_the_items_before_it():
    def source():
        yield "a"
        yield "b"
        raise ValueError("steps must be from 1 to 500, got 0")

    got = []
    with pytest.raises(ValueError, match="steps must be from 1 to 500, got 0"):
        for item in read_ahead(source()):
            got.append(item)
    assert got == ["a", "b"]


def test_a_reader_that_stops_early_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            for i in range(1000):
                yield i
        finally:
            closed.set()

    reader = read_ahead(source(), depth=1)
    assert next(reader) == 0
    reader.close()  # as gradio closes a stream whose page has gone
    assert closed.wait(timeout=30)
