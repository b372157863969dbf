"""What every tab shares: turning engine errors into messages on the page, reading number widgets, and the
example images."""
from __future__ import annotations

import html
import logging
import math
from contextlib import contextmanager
from pathlib import Path

import gradio as gr

from core.sampler import RunFailed
from core.schedule import SAMPLER_NOTES, SCHEDULERS

GENERATE = "generate"  # the concurrency group of every event that runs the UNet: one queue for the device
GPU_SECONDS = 120  # what each such event asks ZeroGPU for: a 12-image sweep of SD at 50 steps fits
log = logging.getLogger("sdlens")
SAMPLER_CHOICES = [(f"{name}: {SAMPLER_NOTES[name]}", name) for name in SCHEDULERS]  # a menu: its words, its value
# Drawn by core.toyworld.data; any model takes them (they are scaled to its native size).
EXAMPLE_IMAGES = sorted((Path(__file__).parent / "assets" / "examples").glob("*.png"))


def on_zero_gpu(demo: gr.Blocks) -> None:
    """On ZeroGPU hardware every event that runs the model asks for the GPU for its call, through the `spaces`
    package's decorator, which changes nothing elsewhere; without the package (off Spaces) nothing to do."""
    try:
        import spaces
    except ImportError:
        return
    for event in demo.fns.values():
        if event.concurrency_id == GENERATE:
            event.fn = spaces.GPU(event.fn, duration=GPU_SECONDS)


def given(image: str | None, what: str = "image") -> str:
    """An image input's file; ValueError saying what to do when it is empty."""
    if image is None:
        raise ValueError(f"There is no {what}: upload one or pick an example")
    return image


@contextmanager
def user_errors():
    """Bad input and failed runs become a message for this user; the app goes on serving everyone.

    The terminal gets one line for a refused input or a run that broke off, and the full traceback only for
    an error nobody anticipated.
    """
    try:
        yield
    except (ValueError, RunFailed) as err:
        log.warning("%s: %s", "refused" if isinstance(err, ValueError) else "run failed", err)
        # the page shows it as HTML: <teal> stays
        raise gr.Error(html.escape(str(err), quote=False), print_exception=False) from err
    except gr.Error:
        raise
    except Exception as err:
        log.exception("a run failed")
        raise gr.Error(f"This run failed ({type(err).__name__}: {err}). The app is still running: "
                       "try again, or change the settings.", print_exception=False) from err


def number(value, name: str) -> float:
    """A widget's number (a script may send it as text, "7.5"); an emptied box arrives as None."""
    if value is None:
        raise ValueError(f"{name} is empty: enter a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def whole(value, name: str) -> int:
    """A widget's whole number; ValueError naming a fraction (1.5 is not run as 1 or 2)."""
    amount = number(value, name)
    if not amount.is_integer():  # also false for inf and NaN
        raise ValueError(f"{name} must be a whole number, got {amount!r}")
    return int(amount)


class ImageFile(gr.Image):
    """An image input (use type="filepath") that hands the uploaded file's path on unopened, so the engine's
    checks say what is wrong with a bad file (gr.Image opens uploads itself and fails on them with a generic
    error)."""

    is_template = True  # drawn by gr.Image's front end (which reads its props from gr.Image's signature)

    def preprocess(self, payload):
        if payload is None or payload.path is None:  # nothing, or a pasted data URL: gradio decodes it
            return super().preprocess(payload)
        return payload.path


def nth(items: list, position):
    """The item at a slider's 1-based position, clamped into the list: the page counts previews and steps from 1,
    as the status line does."""
    return items[min(max(int(position), 1), len(items)) - 1]


def counter(count: int) -> dict:
    """A 1-based slider over `count` kept things, on the last one; hidden when there are fewer than two."""
    return gr.update(maximum=max(count, 2), value=max(count, 1), visible=count > 1)


def within_steps(steps: gr.Slider, step: StepSlider, first: int = 0, keep_place: bool = False) -> gr.events.Dependency:
    """`step`, a step of the run counted from `first` (or a count of steps, from 0), offers only the steps that
    `steps` makes; at one step, the only choice, it greys out. With `keep_place` a new count puts it at the place
    in the schedule the user last chose (step 16 of 30 -> 8 of 15, whatever counts the Steps box passed through
    as it was typed), else only into the new range; a tab whose link sets both must not keep the place. Returns
    the event, for what must follow `step` once it is within the new count."""
    place = [gr.State((step.value - first) / max(steps.value - 1, 1))] if keep_place else []  # 0: first, 1: last

    def chosen_place(count, chosen):
        with user_errors():
            return (whole(chosen, "step") - first) / max(whole(count, "steps") - 1, 1)

    def follow(count, chosen, *kept):
        with user_errors():
            count, chosen = whole(count, "steps"), whole(chosen, "step")
            chosen = first + round(kept[0] * (count - 1)) if kept else chosen
            last = count - 1 + first
            return gr.update(maximum=max(last, first + 1), value=min(chosen, last), interactive=last > first)

    if keep_place:
        step.input(chosen_place, [steps, step], place, api_visibility="private", queue=False, show_progress="hidden")
    return steps.change(follow, [steps, step, *place], step, api_visibility="private", show_progress="hidden")


class Slider(gr.Slider):
    """A slider that refuses a value typed outside its range with a message naming the slider and its range
    (gr.Slider's own says "Value 1.5 is greater than maximum value 1." and names neither)."""

    is_template = True  # drawn by gr.Slider's front end

    top = property(lambda self: self.maximum)  # the largest value this slider lets through

    def preprocess(self, payload):
        """The number (gr.Slider's own check of its range left out: this one's speaks for itself)."""
        if payload is None:
            return None
        value = self.read(payload)
        if not self.minimum <= value <= self.top:  # NaN is refused too
            refuse(f"{self.label} takes {self.span()}, got {value:g}")
        return gr.Number.round_to_precision(value if isinstance(payload, str) else payload, self.precision)

    def read(self, payload) -> float:
        """The payload as a number (a script may send it as text, "30"), or a message naming the slider."""
        try:
            return float(payload)
        except (TypeError, ValueError):
            refuse(f"{self.label} takes a number from {self.span()}, got {payload!r}")

    def span(self) -> str:
        return f"{self.minimum:g} to {self.maximum:g}"


class StepSlider(Slider):
    """A slider over a run's steps, whose end follows the Steps slider on the page (`within_steps`). A script's
    call does not move that end, so a value past it is left to the run's check, which knows the run's steps."""

    is_template = True  # drawn by gr.Slider's front end
    top = math.inf

    def span(self) -> str:
        return f"{self.minimum:g} to the run's last step"


def choice_values(widget: gr.components.Component) -> list | None:
    """The values a choice widget offers; None for one that also takes a value typed in (a token picker, whose
    words the engine checks)."""
    return None if getattr(widget, "allow_custom_value", False) else [value for _, value in widget.choices]


def offered(widget: gr.components.Component, payload):
    """A choice widget's payload, or a gr.Error naming the widget, the value and its choices, each as Python
    writes it (so that 2 and '2' differ): gradio's own message names neither the widget nor, on the page, the
    value, which it follows with its Python type as a tag. Checkboxes take a list."""
    values = choice_values(widget)
    if values is None or payload is None:
        return payload
    if isinstance(widget, gr.CheckboxGroup) and not isinstance(payload, list):
        refuse(f"{widget.label} takes a list of {', '.join(map(repr, values))}, got {payload!r}")
    for value in payload if isinstance(payload, list) else [payload]:
        if value not in values:
            refuse(f"{widget.label} takes one of {', '.join(map(repr, values))}, got {value!r}")
    return payload


def refuse(message: str):
    """A message for the page (shown as HTML: a value such as <teal> stays as written)."""
    raise gr.Error(html.escape(message, quote=False), print_exception=False)


class Radio(gr.Radio):
    """A radio that refuses a value it does not offer with a message naming it and its choices."""

    is_template = True  # drawn by gr.Radio's front end

    def preprocess(self, payload):
        return super().preprocess(offered(self, payload))


class Dropdown(gr.Dropdown):
    """A menu that refuses a value it does not offer with a message naming it and its choices; one that takes
    custom values (a token picker: a word or a position typed in) is described to scripts as any text, not as its
    first choices."""

    is_template = True  # drawn by gr.Dropdown's front end

    def preprocess(self, payload):
        return super().preprocess(offered(self, payload))

    def api_info(self) -> dict:
        return {"type": "string"} if self.allow_custom_value and not self.multiselect else super().api_info()


class CheckboxGroup(gr.CheckboxGroup):
    """Checkboxes that refuse a value they do not offer with a message naming them and their choices."""

    is_template = True  # drawn by gr.CheckboxGroup's front end

    def preprocess(self, payload):
        return super().preprocess(offered(self, payload))


class Scrubber(Slider):
    """A slider over what a finished run kept: a value typed past either end shows that end, as the page's box
    then reads, where a setting's slider refuses it."""

    is_template = True  # drawn by gr.Slider's front end

    def preprocess(self, payload):
        if payload is not None:
            payload = min(max(self.read(payload), self.minimum), self.maximum)
        return super().preprocess(payload)
