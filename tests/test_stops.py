"""Stop flags: Stop ends its own session's run, going or still waiting in the queue, and never a later one."""
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


def test_a_stop_with_no_run_asked_for_does_not_reach_the_next_run():
    stops = StopFlags()
    stops.stop("me")
    stops.expect("me")
    assert not stops.begin("me").is_set()


def test_a_run_that_never_began_leaves_no_stop_for_the_next():
    """A run refused before it began (its inputs checked), then Stop pressed, then a new run asked for."""
    stops = StopFlags()
    stops.expect("me")
    stops.stop("me")
    stops.expect("me")
    assert not stops.begin("me").is_set()


def test_asking_for_another_run_while_one_goes_keeps_stop_on_the_going_one():
    stops = StopFlags()
    going = stops.begin("me")
    stops.expect("me")
    stops.stop("me")
    assert going.is_set()


def test_an_ended_run_leaves_its_flag_behind_and_a_new_run_starts_clear():
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
