"""The "Attention" tab: where each word of the prompt lands. Every step streams x_t and x0 with each token's
cross-attention map over x0, one token shown large, and how the step's attention splits across the tokens;
after the run the scrubber moves all of it, and one token's map can be made into a video."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import pandas as pd
from PIL import Image

from core import attention, export
from core.code import Scripts
from core.engine import Engine
from ui.code_panel import CodePanel, Writers
from ui.common import GENERATE, CheckboxGroup, Radio, Slider, nth, number, user_errors, whole
from ui.run_view import (EXPIRED, NO_RUN, Controls, RunView, check_kept, checked_first, idle_after, reveal,
                         run_buttons, video_outputs)
from ui.stops import StopFlags

OPACITY = 0.6  # how strongly a map covers x0 at first
OWN, ONE = "own", "one"  # the map scales: each map stretched on its own, or all on one scale
SCALES = [("each map on its own: where each token lands", OWN), ("one scale for all: how much each token takes", ONE)]


def opened(image: Image.Image | str | None) -> Image.Image | None:
    """An image, or the file of one kept in the cache."""
    return Image.open(image) if isinstance(image, str) else image


def word(token: str) -> str:
    """A token as this tab names it: without the tokenizer's end-of-word mark ("red</w>" -> "red")."""
    return token.removesuffix(attention.END_OF_WORD)


class StepView(NamedTuple):
    """One step's maps as the tab keeps them."""
    grays: list                    # each map in grayscale, stretched on its own (images, or their cached files)
    shares: tuple[float, ...]      # each token's share of the step's attention
    tokens: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]  # each map's (min, max), what its gray levels stretch

    def scaled(self, scale: str) -> list:
        """The grayscale maps on the chosen scale (gradio's radio lets through only its choices): as the run drew
        them, each on its own, or redrawn on one scale."""
        return [self.map_of(k, scale) for k in range(len(self.grays))]

    def map_of(self, token: int, scale: str):
        """One token's grayscale map on the chosen scale (on one scale, only its own file is read)."""
        if scale == OWN:
            return self.grays[token]
        top = attention.one_scale(self.ranges, self.tokens)
        return attention.on_scale(opened(self.grays[token]), self.ranges[token], top)


def panels(x0, step: StepView, opacity: float, token: int, scale: str) -> list:
    """One step's maps for the page: each over x0 in the grid, captioned with its token and share; the chosen one
    large; the shares as a chart; the maps in grayscale on the chosen scale, captioned with their tokens (each
    with its position: a prompt can hold a word twice)."""
    shares, tokens, grays = step.shares, step.tokens, step.scaled(scale)
    over = [attention.overlay(opened(x0), opened(gray), opacity) for gray in grays]
    names = [f"{i} {word(name)}" for i, name in enumerate(tokens)]
    return [[(image, f"{name} · {share:.1%}") for image, name, share in zip(over, names, shares)], over[token],
            pd.DataFrame({"token": names, "share": shares}), list(zip(grays, names))]


def kept_frames(last_run, last_maps) -> list[tuple[str, str, StepView]]:
    """The last run's previewed steps: (video caption, x0 file, its maps); ValueError when there is none or its
    files have expired from the cache."""
    if not last_run or not last_maps:
        raise ValueError(NO_RUN)
    check_kept(last_run[1])
    if not all(os.path.exists(gray) for step in last_maps for gray in step.grays):
        raise ValueError(EXPIRED)
    return [(caption, x0, maps) for (_, caption, _, x0), maps in zip(last_run[1], last_maps)]


@dataclass
class Form:
    """The tab's inputs: the prompts, the buttons, which layers the maps are summed over, and the settings."""
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    generate: gr.Button
    stop: gr.Button
    parts: gr.CheckboxGroup
    cells: gr.CheckboxGroup
    controls: Controls


@dataclass
class Maps:
    """The tab's own panels: how the maps are drawn, the grid, the chosen token large (RunView's `beside`), the
    split of attention, the grayscale maps, and the chosen token's video."""
    opacity: Slider
    scale: gr.Radio
    token: gr.Number
    grid: gr.Gallery
    mass: gr.BarPlot
    grays: gr.Gallery
    make_video: gr.Button
    mp4: gr.File
    gif: gr.Image


def form_column(engine: Engine) -> Form:
    layers = engine.attention_layers()
    places = [place for place in attention.PLACES if any(layer.place == place for layer in layers)]
    cells = sorted({layer.cell for layer in layers})
    prompt = gr.Textbox(label="Prompt", value=engine.examples("txt2img")[0][0], lines=2)
    negative_prompt = gr.Textbox("", label="Negative prompt", placeholder="what to steer away from")
    generate, stop = run_buttons()
    first = [place for place in attention.DEFAULT_PLACES if place in places] or places
    parts = CheckboxGroup(places, value=first, label="UNet parts the maps are summed over",
                          info="the up blocks place the words best; DAAM sums all three (from the next Generate)")
    cell_choice = CheckboxGroup([(f"{cell} px cells", cell) for cell in cells], value=cells,
                                label="Map resolutions summed over",
                                info="image pixels per cell of a layer's map (SD at 512 px: 8, 16, 32, 64; "
                                     "from the next Generate)")
    examples = gr.Column()  # under the buttons, above the long generation settings
    controls = Controls(engine)
    with examples:
        gr.Examples(engine.examples("txt2img"), [prompt, negative_prompt, controls.guidance_scale])
    return Form(prompt, negative_prompt, generate, stop, parts, cell_choice, controls)


def maps_panels(first_token: int) -> Maps:
    """The panels, with the map of the token at `first_token` shown large at first."""
    with gr.Row():
        opacity = Slider(0, 1, value=OPACITY, step=0.05, label="Map opacity over x0")
        scale = Radio(SCALES, value=OWN, label="Map scale",
                      info="on one scale black is no attention and white the most any word takes at a pixel")
        token = gr.Number(value=first_token, label="Token shown large",
                          info="its position in the grid (0: the start token), or click its map")
    grid = gr.Gallery(label="Every token's map over x0 at this step (click one to show it large)", columns=5,
                      format="png", allow_preview=False, elem_classes=["pixels", "columns-5", "all-rows"],
                      elem_id="attention-grid",
                      interactive=False)
    # sort=[]: no order of its own, so the bars keep the prompt's order (Vega-Lite puts values it is not given
    # after those it is, in the data's order)
    mass = gr.BarPlot(x="token", y="share", sort=[], label="Attention share by token", show_label=False,
                      x_label_angle=-45, height=300, title="How this step's attention splits across the tokens",
                      elem_id="attention-mass")
    gr.Markdown("The last bar sums the padding: every position after the end token, up to CLIP's 77. There are "
                "many of them, so together they take a large share even where each one takes less than a word.",
                elem_id="attention-padding")
    grays = gr.Gallery(label="The maps in grayscale, on the map scale chosen", columns=5, format="png",
                       elem_classes=["pixels", "columns-5", "all-rows"], elem_id="attention-maps", interactive=False)
    make_video = gr.Button("Make the video of the chosen token's map (MP4 + GIF)", size="sm")
    mp4, gif = video_outputs("map video", "attention-map-video")
    return Maps(opacity, scale, token, grid, mass, grays, make_video, mp4, gif)


def build(engine: Engine, stops: StopFlags, concurrency: int, writers: Writers) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            form = form_column(engine)
        with gr.Column(scale=3):
            view = RunView("attention", stops, "Press Generate to watch where each token's attention lands.",
                           beside_result="The chosen token's map over x0")
            maps = maps_panels(attention.first_word(engine.attention_tokens(form.prompt.value)))
            view.videos += [maps.mp4, maps.gif]
            code = CodePanel(writers, "attention", ("attention",))
    history = gr.State(None)  # the last run's maps, step for step with view.history: [StepView]
    wire_run(engine, form, view, maps, history, concurrency, code)
    wire_after_run(view, maps, history)


def read_layers(parts, cells) -> attention.Layers:
    return attention.Layers(tuple(parts or ()), tuple(whole(cell, "cells") for cell in cells or ()))


def wire_run(engine: Engine, form: Form, view: RunView, maps: Maps, history: gr.State, concurrency: int,
             code: CodePanel) -> None:
    """Generate: the inputs checked before the run starts, then the run streamed with every token's map, then
    its script."""
    controls = form.controls
    shown = [maps.grid, view.beside, maps.mass, maps.grays]

    def check(prompt, negative_prompt, parts, cells, opacity, scale, token, *numbers):
        """Reject bad inputs with a message before the run starts (the outputs stay as they are)."""
        with user_errors():
            engine.check_attention(prompt, negative_prompt, controls.settings(*numbers), read_layers(parts, cells))
            attention.check_entry(engine.attention_tokens(prompt), whole(token, "token"))
            attention.check_opacity(number(opacity, "opacity"))

    def attend(prompt, negative_prompt, parts, cells, opacity, scale, token, steps, guidance_scale, seed, width,
               height, preview_every, previews, scheduler, request: gr.Request):
        """Generate from a prompt, streaming x_t, x0 and every prompt token's cross-attention map at each step;
        the last message has the result and each token's final map in grayscale, captioned with the token."""
        with view.stop_flag(request) as flag:
            with user_errors():
                settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every,
                                             previews, scheduler)
                opacity = attention.check_opacity(number(opacity, "opacity"))
                token = attention.check_entry(engine.attention_tokens(prompt), whole(token, "token"))
                run = engine.attention(prompt, negative_prompt, settings, layers=read_layers(parts, cells),
                                       should_stop=flag.is_set)
            kept, latest, base = [], {}, [None]  # base: the picture the maps lie over (the latest x0)

            def step_panels(frame):
                base[0] = frame.x0_image or frame.image or base[0]
                step = frame.observed["attention"]
                drawn = StepView(step.images, step.mass, step.tokens, step.ranges)
                if frame.x0_image is not None:  # kept for the scrubber, step for step with the x0 history
                    drawn = drawn._replace(grays=[view.cached(gray) for gray in step.images])
                    kept.append(drawn)
                latest.update(zip(shown, panels(base[0], drawn, opacity, token, scale)))
                return latest

            def final():
                return {**dict.fromkeys(shown), **latest, history: kept or None}

            yield from view.stream(run, flag, extra=step_panels, final=final)

    def attention_code(prompt, negative_prompt, parts, cells, opacity, scale, token, steps, guidance_scale, seed,
                       width, height, preview_every, previews, scheduler):
        """The run as a script that also writes the last step's maps (the opacity, scale and token only choose
        what the page shows)."""
        settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every, previews, scheduler)
        return Scripts(engine).attention(prompt, negative_prompt, settings, layers=read_layers(parts, cells))

    inputs = [form.prompt, form.negative_prompt, form.parts, form.cells, maps.opacity, maps.scale, maps.token,
              *controls.inputs]
    checked = checked_first(form.generate, check, inputs, view.stops, form.stop)
    run = checked.success(attend, inputs, [*view.outputs, *shown, maps.mp4, maps.gif, history], api_name="attention",
                          concurrency_id=GENERATE, concurrency_limit=concurrency)
    idle_after(form.stop, (run,), view.stops)
    code.after(run, attention_code, inputs, view)
    view.wire(form.stop, stop_api=None)


def wire_after_run(view: RunView, maps: Maps, history: gr.State) -> None:
    """The scrubber, the opacity, the scale and the chosen token redraw the last run's maps; the chosen token's
    video."""
    shown = [maps.grid, view.beside, maps.mass, maps.grays]

    def show(position, opacity, scale, token, last_run, last_maps):
        """The last run's maps at the scrubber's step, with the opacity, scale and chosen token as they are now."""
        if not last_run or not last_maps:
            return [gr.skip()] * len(shown)
        with user_errors():
            _, x0, step = nth(kept_frames(last_run, last_maps), position)
            token = attention.check_entry(step.tokens, whole(token, "token"))
            return panels(x0, step, attention.check_opacity(number(opacity, "opacity")), token, scale)

    def export_video(last_run, last_maps, token, opacity, scale, fps):
        """The chosen token's map over x0 at every previewed step of the last run, on the chosen scale, as an MP4
        and a GIF."""
        with user_errors():
            steps = kept_frames(last_run, last_maps)
            token = attention.check_entry(steps[0][2].tokens, whole(token, "token"))
            opacity = attention.check_opacity(number(opacity, "opacity"))
            fps = export.check_fps(number(fps, "frames per second"))
            pairs = [(opened(x0), opened(step.map_of(token, scale))) for _, x0, step in steps]
            frames = [export.video_frame([x0, attention.overlay(x0, gray, opacity)], f"{word(step.tokens[token])} · "
                                         f"{caption}") for (x0, gray), (caption, _, step) in zip(pairs, steps)]
        with tempfile.TemporaryDirectory(prefix="sdlens-") as folder:
            stem = Path(folder) / f"sdlens-attention-token{token}-seed{last_run[0]}"
            yield (str(export.write_mp4(frames, stem.with_suffix(".mp4"), fps)),
                   str(export.write_gif(frames, stem.with_suffix(".gif"), fps)))

    def choose(selected: gr.SelectData):
        """A click on a map in the grid shows that token large."""
        return selected.index

    for event in (view.scrub.input, maps.opacity.change, maps.scale.change, maps.token.change):
        event(show, [view.scrub, maps.opacity, maps.scale, maps.token, view.history, history], shown,
              api_visibility="private", show_progress="hidden")
    maps.grid.select(choose, None, maps.token, api_visibility="private", queue=False)
    reveal(maps.make_video.click(export_video, [view.history, history, maps.token, maps.opacity, maps.scale,
                                                view.fps], [maps.mp4, maps.gif], api_name="attention_map_video"),
           maps.mp4, maps.gif)
