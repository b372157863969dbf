"""Stop flags: Stop ends its own session's run, going or still waiting in the queue, and never a later one."""
import inspect

import pytest

from core.engine import Engine
from ui import build_app
from ui.common import GENERATE
from ui.stops import StopFlags


def test_stop_reaches_the_going_run_of_its_session_only():
    stops = StopFlags()
    mine, theirs = stops.begin("me"), stops.begin("them")
    stops.stop("me")
    assert mine.is_set() and not theirs.is_set()


def test_stop_pressed_while_the_run_waits_in_the_queue_ends_it_when_it_begins():
    stops = StopFlags()
    stops.expect("me")
    stops.stop("me")
    assert stops.begin("me").is_set()


def test_each_click_starts_its_run_with_a_fresh_flag():
    """A click that started no run (Generate pressed again while its run went), then a Stop after that run: the
    next run asked for is not stopped."""
    stops = StopFlags()
    going = stops.begin("me")
    stops.expect("me")  # the second click: the page sends no second run
    stops.end("me", going)
    stops.stop("me")
    stops.expect("me")
    assert not stops.begin("me").is_set()


def test_a_stop_pressed_while_admitting_reaches_the_run():
    stops = StopFlags(admit=lambda: stops.stop("me"))
    stops.expect("me")
    assert stops.begin("me").is_set()


def test_a_stop_with_no_run_asked_for_does_not_reach_the_next_run():
    stops = StopFlags()
    stops.stop("me")
    stops.expect("me")
    assert not stops.begin("me").is_set()


def test_a_run_refused_before_it_began_leaves_no_stop_for_the_next():
    stops = StopFlags()
    stops.expect("me")
    stops.forget("me")  # its inputs were refused
    stops.stop("me")
    stops.expect("me")
    assert not stops.begin("me").is_set()


def test_a_run_not_admitted_leaves_no_stop_for_the_next():
    refusing = True

    def admit():
        if refusing:
            raise ValueError("the disk is full")

    stops = StopFlags(admit=admit)
    stops.expect("me")
    with pytest.raises(ValueError):
        stops.begin("me")
    refusing = False
    stops.stop("me")
    stops.expect("me")
    assert not stops.begin("me").is_set()


def test_a_run_asked_for_while_another_goes_is_stopped_once_that_one_has_ended():
    stops = StopFlags()
    going = stops.begin("me")
    stops.expect("me")
    stops.stop("me")
    assert going.is_set()
    stops.end("me", going)
    stops.stop("me")
    assert stops.begin("me").is_set()


def test_an_ended_run_drops_its_flag_and_a_new_run_starts_clear():
    stops = StopFlags()
    first = stops.begin("me")
    stops.end("me", first)
    stops.stop("me")  # nothing is going: nothing to stop
    assert not first.is_set() and not stops.begin("me").is_set()


def test_ending_an_older_run_keeps_the_newer_runs_flag():
    stops = StopFlags()
    older = stops.begin("me")
    newer = stops.begin("me")
    stops.end("me", older)
    stops.stop("me")
    assert newer.is_set() and not older.is_set()


def test_every_button_that_starts_a_streamed_run_registers_its_stop_flag_first(tiny_bundle):
    """Each streamed run (the events of the one generating queue that yield frames) is started by a button whose
    click registers the run's flag before anything else of the click is sent (the page sends a click's events in
    the order they were wired); a run behind an input check drops it when the check refuses the run."""
    events = build_app(Engine(tiny_bundle)).fns
    expecting = {target: index for index, event in events.items() if event.name == "expect_run"
                 for target in event.targets}
    forgetting = {event.trigger_after for event in events.values()
                  if event.name == "forget_run" and event.trigger_only_on_failure}
    runs = [(index, event) for index, event in events.items()
            if event.concurrency_id == GENERATE and inspect.isgeneratorfunction(event.fn)]
    assert len(runs) >= 11, [event.name for _, event in runs]
    for index, run in runs:
        first = run.trigger_after if run.trigger_after is not None else index  # the input check, or the run
        assert events[first].targets, run.name
        for target in events[first].targets:
            assert expecting.get(target, first) < first, run.name
        assert run.trigger_after is None or run.trigger_after in forgetting, run.name
