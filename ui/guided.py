"""The "Guidance" tab: steer a run with a loss on the decoded predicted x0 and watch the loss as it acts."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import gradio as gr
import pandas as pd

from core.code import Scripts
from core.engine import Engine
from core.guidance import LOSSES, MAX_EVERY, MODES, TARGET_OF, Guidance, Target
from ui.code_panel import CodePanel, Writers
from ui.common import GENERATE, Dropdown, Radio, Slider, StepSlider, number, user_errors, whole, within_steps
from ui.run_view import Controls, RunView, checked_first, idle_after, run_buttons
from ui.send import Prompted
from ui.stops import StopFlags

SCALE_SLIDER_MAX = 1000  # the engine takes up to core.guidance.MAX_SCALE through the API
LOSS_HELP = "  \n".join(f"**{name}**: {loss.__doc__}" for name, loss in LOSSES.items())
MODE_HELP = "  \n".join(f"**{name}**: {about}" for name, about in MODES.items())


def parse_color(value: str) -> tuple[float, float, float]:
    """A color picker's value ("#rrggbb" or "rgb(a)(r, g, b[, a])") -> RGB in [0, 1]."""
    if match := re.fullmatch(r"#?([0-9a-fA-F]{6})", value.strip()):
        digits = match.group(1)
        return tuple(int(digits[i : i + 2], 16) / 255 for i in (0, 2, 4))
    if match := re.fullmatch(r"rgba?\(([^)]*)\)", value.strip()):
        parts = [float(p) for p in match.group(1).split(",")[:3]]
        return tuple(min(max(p / 255, 0.0), 1.0) for p in parts)
    raise ValueError(f"target color must be like #3366ff, got {value!r}")


@dataclass(frozen=True)
class LossForm:
    """The loss, its target, its scale, how often it acts and its gradient."""
    loss: gr.Dropdown
    loss_scale: Slider
    color: gr.ColorPicker
    level: Slider
    every: Slider
    start: Slider
    mode: gr.Radio

    @property
    def inputs(self) -> list:
        """In the order of the endpoint's parameters."""
        return [self.loss, self.color, self.level, self.loss_scale, self.every, self.start, self.mode]


def loss_form(first: Guidance, steps: int, mode_note: str | None = None) -> LossForm:
    """The loss's controls, starting from `first`; the unguided steps offered are those of a run of `steps`;
    `mode_note`: what the model's folder says about the gradient."""
    with gr.Row():
        loss = Dropdown(list(LOSSES), value=first.loss, label="Loss on the decoded x0")
        loss_scale = Slider(0, SCALE_SLIDER_MAX, value=first.scale, step=1, label="Loss scale", info="0: unguided")
        color = gr.ColorPicker(value="#0000ff", label="Target color", info="every pixel is pulled toward it",
                               visible=TARGET_OF.get(first.loss) == "color")
        level = Slider(0, 1, value=first.target.level, step=0.05, label="Target level",
                       info="the level the loss pulls toward", visible=TARGET_OF.get(first.loss) == "level")
    loss.change(lambda name: (gr.update(visible=TARGET_OF.get(name) == "color"),
                              gr.update(visible=TARGET_OF.get(name) == "level")),
                loss, [color, level], api_visibility="private", queue=False, show_progress="hidden")
    with gr.Row():
        every = Slider(1, MAX_EVERY, value=first.every, step=1, label="Guide every N steps",
                       info="the notebook: every 5")
        start = StepSlider(0, max(steps - 1, 1), value=first.start, step=1, label="Leave the first N steps unguided",
                       info="the notebook: 0; the first steps set the layout, and guidance after them "
                            "mostly keeps it")
    with gr.Row():
        mode = Radio(list(MODES), value=first.mode, label="Gradient", info=mode_note)
    with gr.Accordion("What the losses and gradients do", open=False):
        gr.Markdown(f"{LOSS_HELP}\n\n{MODE_HELP}\n\nThe update on a guided step is "
                    "latents -= gradient x sigma², as in the notebook.")
    return LossForm(loss, loss_scale, color, level, every, start, mode)


def guidance_of(loss, color, level, loss_scale, every, start, mode) -> Guidance:
    return Guidance(loss=loss, scale=number(loss_scale, "loss scale"), every=whole(every, "every"),
                    start=whole(start, "start"), mode=mode,
                    target=Target(parse_color(color), number(level, "target level")))


def example_label(prompt: str, loss: str, scale: float, target: str, start: int) -> str:
    """What an example does, e.g. "a yellow triangle, brown background: blue loss x 50 after 15" (the first 15 steps
    unguided); its CFG names the block it is shown in (example_blocks), as Gradio cuts a label at 60 characters."""
    what = f"color → {target}" if loss == "color" else f"{loss} loss"
    return f"{prompt}: {what} x {scale:g}" + (f" after {start}" if start else "")


def example_blocks(rows: list[list], tab_cfg: float) -> list[tuple[str, list[list]]]:
    """The examples grouped by their CFG, in the order of each CFG's first example: "Examples" for the tab's CFG,
    "Examples at CFG 3" for another."""
    blocks: dict[float, list[list]] = {}
    for row in rows:  # a row ends with its CFG (core.defaults.EXAMPLE_FIELDS)
        blocks.setdefault(row[-1], []).append(row)
    return [("Examples" if cfg == tab_cfg else f"Examples at CFG {cfg:g}", group) for cfg, group in blocks.items()]


def build(engine: Engine, stops: StopFlags, concurrency: int, writers: Writers) -> Prompted:
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", value=engine.examples("guided")[0][0], lines=2)
            negative_prompt = gr.Textbox("", label="Negative prompt", placeholder="what to steer away from")
            generate, stop = run_buttons()  # under the prompts, as on every tab: in a projector's first 720 lines
            form = loss_form(engine.default_guidance(), engine.default_settings("guided").steps,
                             engine.setting_note("mode", "guided"))
            examples = gr.Column()  # the notebook's demos under the loss, above the long generation settings
            controls = Controls(engine, tab="guided")
            with examples:
                for label, rows in example_blocks(engine.examples("guided"), controls.defaults.guidance_scale):
                    gr.Examples(rows, [prompt, form.loss, form.loss_scale, form.color, form.start,
                                       controls.guidance_scale],
                                label=label, example_labels=[example_label(*row[:-1]) for row in rows])
        with gr.Column(scale=3):
            plot = gr.LinePlot(pd.DataFrame({"step": [], "loss": []}), x="step", y="loss", label="Loss by step",
                               show_label=False, height=220, title="loss on the guided steps", elem_id="guided-plot")
            view = RunView("guided", stops, "Press Generate: the loss steers the run on every N-th step.",
                           beside_result="Unguided: the same seed and settings", sendable=True)
            code = CodePanel(writers, "guided", ("guided",))
    within_steps(controls.steps, form.start)
    inputs = [prompt, negative_prompt, *form.inputs, *controls.inputs]
    run = wire_run(engine, controls, view, plot, (generate, stop), inputs, concurrency)

    def guided_code(prompt, negative_prompt, loss, color, level, loss_scale, every, start, mode, steps,
                    guidance_scale, seed, width, height, preview_every, previews, scheduler):
        """The run as a script."""
        settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every, previews, scheduler)
        return Scripts(engine).guided(prompt, negative_prompt, settings,
                                      guidance_of(loss, color, level, loss_scale, every, start, mode))

    code.after(run, guided_code, inputs, view)
    view.wire(stop, stop_api=None)
    return Prompted(view, prompt, negative_prompt, controls)


def wire_run(engine: Engine, controls: Controls, view: RunView, plot: gr.LinePlot,
             buttons: tuple[gr.Button, gr.Button], inputs: list, concurrency: int) -> gr.events.Dependency:
    """Generate: the inputs checked before the run starts, then the guided run and the unguided one; Stop
    (`buttons`: Generate, Stop) is live while they go."""
    generate, stop = buttons
    unguided = view.beside

    def check(prompt, negative_prompt, loss, color, level, loss_scale, every, start, mode, *numbers):
        """Reject bad inputs with a message before the run starts (the outputs stay as they are)."""
        with user_errors():
            engine.check_guided(prompt, negative_prompt, controls.settings(*numbers),
                                guidance_of(loss, color, level, loss_scale, every, start, mode))

    def guided(prompt, negative_prompt, loss, color, level, loss_scale, every, start, mode, steps, guidance_scale,
               seed, width, height, preview_every, previews, scheduler, request: gr.Request):
        """Generate with loss guidance, streaming x0 and the loss of each guided step; then the same run
        unguided, for comparison."""
        with view.stop_flag(request) as flag:
            with user_errors():
                settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every,
                                             previews, scheduler)
                run = engine.guided(prompt, negative_prompt, settings,
                                    guidance_of(loss, color, level, loss_scale, every, start, mode),
                                    should_stop=flag.is_set)
            losses = []

            def plot_loss(frame):
                if frame.loss is None:
                    return {}
                losses.append((frame.index + 1, frame.loss))
                return {plot: pd.DataFrame(losses, columns=["step", "loss"])}

            def unguided_image():
                """The same seed and settings without the loss, for comparison (none when stopped)."""
                if flag.is_set():
                    return None
                with user_errors():
                    plain = engine.txt2img(prompt, negative_prompt, replace(run.settings, preview_every=0))
                    return list(plain.frames)[-1].image

            yield {plot: None, unguided: None}
            yield from view.stream(run, flag, extra=plot_loss, final=lambda: {
                plot: pd.DataFrame(losses, columns=["step", "loss"]) if losses else None,
                unguided: unguided_image()})

    checked = checked_first(generate, check, inputs, view.stops, stop)
    run = checked.success(guided, inputs, [plot, unguided, *view.outputs], api_name="guided",
                          concurrency_id=GENERATE, concurrency_limit=concurrency)
    idle_after(stop, (run,), view.stops)
    return run
