"""A link's values as the inputs take them (ui.code_panel.linked_value): a link carries text, a name once for
each checkbox; a value an input cannot take is left as it was, with a message."""
import re

import gradio as gr
import pytest

from ui.code_panel import linked_value
from ui.common import CheckboxGroup, Dropdown, Slider

SKIPPED = gr.skip()


@pytest.fixture(scope="module")
def inputs():
    with gr.Blocks():
        return (CheckboxGroup([("8 px cells", 8), ("16 px cells", 16)], value=[8], label="cells"),
                Dropdown([("lms: four steps of memory", "lms"), ("euler: one step", "euler")], value="lms",
                         label="Sampler"),
                Slider(1, 200, value=30, step=1, label="Steps"),
                gr.Number(value=32, label="Seed"))


def test_checkboxes_take_every_value_as_they_offer_it(inputs):
    cells, *_ = inputs
    assert linked_value(cells, "cells", ["8", "16"]) == [8, 16]  # text in the link, numbers on the page
    assert linked_value(cells, "cells", ["16"]) == [16]
    assert linked_value(cells, "cells", [8, 16]) == [8, 16]  # a run in the history keeps its numbers


def test_any_other_input_takes_the_last_value_of_a_name_given_twice(inputs):
    _, sampler, steps, _ = inputs
    assert linked_value(sampler, "scheduler", ["lms", "euler"]) == "euler"
    assert linked_value(steps, "steps", ["9", "12"]) == 12.0


@pytest.mark.parametrize("which, name, value, message", [
    (0, "cells", ["16", "99"], "The link's cells='99' is not a choice (cells takes one of 8, 16): cells is left as"),
    (1, "scheduler", ["heun"], "The link's scheduler='heun' is not a choice (Sampler takes one of lms, euler)"),
    (2, "steps", ["9999"], "The link's steps=9999 is out of range (Steps takes 1 to 200): steps is left as it was"),
    (2, "steps", ["abc"], "The link's steps='abc' is not a number: steps is left as it was"),
    (2, "steps", ["2.5"], "The link's steps=2.5 is not a whole number: steps is left as it was"),
    (3, "seed", ["1.5"], "The link's seed=1.5 is not a whole number: seed is left as it was"),
    (3, "seed", ["-7"], "The link's seed=-7 is not a seed (-1: a random one, or 0 to 9007199254740991): seed is left"),
    (3, "seed", ["99999999999999999999"], "The link's seed=99999999999999999999 is not a seed"),
])
def test_a_value_the_input_cannot_take_is_left_as_it_was_with_a_message(inputs, which, name, value, message):
    with pytest.warns(UserWarning, match=re.escape(message)):
        assert linked_value(inputs[which], name, value) == SKIPPED


def test_a_seed_the_run_takes_is_taken(inputs):
    seed = inputs[3]
    assert [linked_value(seed, "seed", [text]) for text in ("-1", "0", "9007199254740991")] == [-1, 0, 2**53 - 1]
