"""The "Inside a step" tab: classifier-free guidance taken apart into the UNet's two predictions, and the same
prompt and seed compared across guidance scales, samplers and seeds (AUTOMATIC1111's X/Y plot, streamed).

Every run here is the text-to-image run with the settings shown, through the one sampling loop."""
from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from core import export
from core.code import Scripts
from core.engine import Engine, Run
from core.sampler import Settings
from ui.code_panel import CodePanel, Writers
from ui.common import GENERATE, SAMPLER_CHOICES, Scrubber, counter, nth, user_errors
from ui.run_view import (EXPIRED, Controls, cached, checked_by_script, ended, frame_caption, idle_after,
                         image_panel, progress, run_buttons, status_line, stop_flag)
from ui.stops import StopFlags

PART_CAPTIONS = ("unconditional x0", "text x0", "guided x0", "noise prediction")
SHOWN = "Shown, where the two predictions differ most (the slider takes any other step apart)"
SWEEP_FPS = 2
SAMPLERS_ABOUT = "\n".join(f"- {label}" for label, _ in SAMPLER_CHOICES)


def gallery(label: str, elem_id: str, columns: int) -> gr.Gallery:
    """Pictures `columns` a row, however few there are (the page's columns-N style), in as many rows as they
    take."""
    return gr.Gallery(label=label, columns=columns, height="auto", format="png",
                      elem_classes=["pixels", f"columns-{columns}", "all-rows"], elem_id=elem_id, object_fit="contain",
                      interactive=False)


def prompts_and_buttons(engine: Engine, stops: StopFlags, label: str):
    """A prompt, a negative prompt, and a run button beside Stop; returns (prompt, negative, (button, Stop))."""
    prompt = gr.Textbox(label="Prompt", value=engine.examples("txt2img")[0][0])
    negative_prompt = gr.Textbox("", label="Negative prompt", placeholder="what to steer away from")
    go, stop = run_buttons(label, stops)
    return prompt, negative_prompt, (go, stop)


def build(engine: Engine, stops: StopFlags, concurrency: int, writers: Writers) -> gr.Tabs:
    """The tab's experiments; returns their tabs (a link or the history opens one of them)."""
    with gr.Accordion("Generation settings for every experiment on this tab", open=False):
        controls = Controls(engine)
    options = {"concurrency_id": GENERATE, "concurrency_limit": concurrency}
    with gr.Tabs() as tabs:
        with gr.Tab("Guidance taken apart", id="compare-parts", elem_id="compare-parts"):
            build_parts(engine, stops, controls, options, writers)
        for kind, default, about in (
                ("scales", "1,3,5,7.5,10,15", "One seed across guidance scales (they replace the generation "
                                              "settings' guidance scale)."),
                ("samplers", "lms,euler,ddim,dpm++,optim", "The same seed through each sampler (they replace the "
                                                          "generation settings' sampler); `euler:15` gives one its "
                                                          "own step count.\n\n" + SAMPLERS_ABOUT),
                ("seeds", "1,2,3,4", "Several images for one prompt, one per seed (they replace the generation "
                                     "settings' seed).")):
            with gr.Tab(kind.capitalize(), id=f"compare-{kind}", elem_id=f"compare-{kind}"):
                build_comparison(engine, stops, controls, options, ComparisonTab(kind, default, about), writers)
    return tabs


def build_parts(engine: Engine, stops: StopFlags, controls: Controls, options: dict, writers: Writers) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            gr.Markdown("Each step, the UNet predicts the noise twice in one batch: without the prompt and with it. "
                        "The sampler steps with uncond + scale x (text - uncond). Here are the three as x0, and the "
                        "guided noise prediction decoded.")
            prompt, negative_prompt, (go, stop) = prompts_and_buttons(engine, stops, "Generate")
        with gr.Column(scale=3):
            parts = gallery("This step: the two predictions, their mix, and the noise", "parts-gallery", 4)
            pick = Scrubber(1, 2, value=1, step=1, label="Step to take apart", visible=False, elem_id="parts-pick",
                          info="the steps the run streamed, first to last: the two predictions differ most in "
                               "the early steps, and by the last one all three x0 agree")
            status = gr.Markdown("Press Generate.", elem_id="parts-status", line_breaks=True, label="Status")
            plot = gr.LinePlot(x="step", y="distance", label="Distance by step", show_label=False, height=220,
                               elem_id="parts-plot",
                               title="how far apart the two predictions' x0 are (RMS over the latents)")
            run_progress = gr.JSON(visible=False, label="Run progress")
            code = CodePanel(writers, "cfg_parts", ("compare", "compare-parts"))
    kept = gr.State(None)  # the last run's steps taken apart: [(step caption, [(file, caption) x 4], distance), ...]
    cfg_parts, cfg_parts_code = parts_handlers(engine, stops, controls, parts)
    inputs = [prompt, negative_prompt, *controls.inputs]
    go.click(lambda: gr.update(visible=False), None, pick, queue=False, api_visibility="private")
    run = checked_by_script(go, cfg_parts_code, inputs, stops, stop).success(
        cfg_parts, inputs, [parts, status, plot, run_progress, kept], api_name="cfg_parts", **options)
    idle_after(stop, (run,), stops)
    run.then(step_picker, kept, pick, queue=False, api_visibility="private")
    pick.input(show_step, [pick, kept], [parts, status], api_visibility="private", show_progress="hidden")
    code.after(run, cfg_parts_code, inputs, StripView(parts, run_progress))


def parts_handlers(engine: Engine, stops: StopFlags, controls: Controls, parts: gr.Gallery):
    """The run that takes every preview step apart, and its script."""

    def cfg_parts(prompt, negative_prompt, steps, guidance_scale, seed, width, height, preview_every, previews,
                  scheduler, request: gr.Request):
        """Generate, showing every preview step's unconditional, text and guided x0 and the noise prediction."""
        with stop_flag(stops, request) as flag:
            with user_errors():
                run = engine.txt2img(prompt, negative_prompt, controls.settings(
                    steps, guidance_scale, seed, width, height, preview_every, previews, scheduler),
                    should_stop=flag.is_set)
            distances, kept, frame, seed_note = [], [], None, f"seed {run.settings.seed}"
            notes = list(run.notes)
            with user_errors():
                for frame in run.frames:
                    if frame.x0_image is None:
                        continue
                    split = engine.cfg_parts(frame)
                    distances.append((frame.index + 1, split.distance))
                    norms = ", ".join(f"{n:.2f}" for n in split.noise_norms)
                    pictures = (split.uncond, split.text, split.guided, split.noise)
                    kept.append((f"{frame_caption(frame)} · noise RMS per channel {norms}",
                                 [(cached(picture, parts), caption)
                                  for picture, caption in zip(pictures, PART_CAPTIONS)], split.distance))
                    about = f"{seed_note} · noise RMS per channel {norms}"
                    yield (kept[-1][1], status_line(frame, "running", about, notes), distance_table(distances),
                           progress(frame, "running", run.settings.seed, notes), None)
            state = ended(frame.image if frame else None, flag)
            line, pictures = status_line(frame, state, seed_note, notes), None
            if kept:  # the last step shows little (by then all three x0 agree): the widest apart instead
                about, pictures, _ = kept[widest_position(kept) - 1]
                line += f"\n{SHOWN}: {about}"
            yield (pictures, line, distance_table(distances), progress(frame, state, run.settings.seed, notes),
                   kept or None)

    def cfg_parts_code(prompt, negative_prompt, steps, guidance_scale, seed, width, height, preview_every, previews,
                       scheduler):
        """The run as a script that also takes its last step apart."""
        settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every, previews, scheduler)
        return Scripts(engine).cfg_parts(prompt, negative_prompt, settings)

    return cfg_parts, cfg_parts_code


def distance_table(distances: list[tuple[int, float]]) -> pd.DataFrame:
    return pd.DataFrame(distances, columns=["step", "distance"])


def widest_position(kept) -> int:
    """The 1-based position of the kept step whose two predictions lie furthest apart."""
    return 1 + max(range(len(kept)), key=lambda k: kept[k][2])


def step_picker(kept):
    """The slider over the last run's steps, on the step shown at the end; hidden when it kept fewer than two."""
    update = counter(len(kept or []))
    if kept:
        update["value"] = widest_position(kept)
    return update


def show_step(position, kept):
    """One kept step's four pictures, and its step and noise on the status line."""
    if not kept:
        return gr.skip(), gr.skip()
    line, pictures, _ = nth(kept, position)
    if not all(os.path.exists(path) for path, _ in pictures):
        return gr.skip(), EXPIRED
    return pictures, f"{line} · taken apart from the last run"


@dataclass(frozen=True)
class ComparisonTab:
    """One kind of comparison: what varies, its entries at first, and what the tab says about it."""

    kind: str                      # scales, samplers or seeds
    default: str
    about: str

    @property
    def api_name(self) -> str:
        return "cfg_sweep" if self.kind == "scales" else f"compare_{self.kind}"


class StripView:
    """A gallery's last images as the code panel keeps them: a comparison's results, or a step's parts."""

    def __init__(self, strip: gr.Gallery, run_progress: gr.JSON):
        self.progress, self.kept = run_progress, [strip]

    @staticmethod
    def thumbnail(strip):
        """The images side by side, as the history shows them."""
        images = [np.asarray(Image.open(path).convert("RGB")) for path, _ in strip or []]  # the gallery's files
        return np.concatenate(images, axis=1) if images and len({i.shape for i in images}) == 1 else None

    @staticmethod
    def files(strip) -> list[tuple[str, object]]:
        """A download: each image, named by its caption."""
        return [(f"{k + 1:02d}-{caption}.png".replace(":", "-"), image) for k, (image, caption) in
                enumerate(strip or [])]


def build_comparison(engine: Engine, stops: StopFlags, controls: Controls, options: dict, comparison: ComparisonTab,
                     writers: Writers) -> None:
    kind = comparison.kind
    parse = {"scales": engine.parse_scales, "samplers": engine.parse_samplers, "seeds": engine.parse_seeds}[kind]
    with gr.Row():
        with gr.Column(scale=2):
            said = engine.setting_note("guidance_scale") if kind == "scales" else None  # the model's own scales
            entries = gr.Textbox(label=kind.capitalize(), value=comparison.default,
                                 info=" · ".join(filter(None, ["comma-separated, at most 12", said])))
            prompt, negative_prompt, (go, stop) = prompts_and_buttons(engine, stops, "Compare")
            gr.Markdown(comparison.about)  # under the buttons: Compare in a projector's first 720 lines
        with gr.Column(scale=3):
            strip = gallery(f"Predicted x0 of each run as it forms, then the results, by {kind[:-1]}",
                            f"{kind}-strip", 3 if kind != "seeds" else 4)
            status = gr.Markdown("Press Compare: the runs go step by step, side by side.", label="Status",
                                 elem_id=f"{kind}-status", line_breaks=True)
            plots = ([gr.LinePlot(x="step", y="x0 movement", color="sampler", height=220, elem_id="samplers-movement",
                                  label="x0 movement by step", show_label=False,
                                  title="how far x0 moves in each step (RMS)"),
                      gr.LinePlot(x="step", y="sigma", color="sampler", height=220, elem_id="samplers-sigmas",
                                  label="Sigmas", show_label=False,
                                  title="the sigma schedules (samplers on one schedule draw one line)")]
                     if kind == "samplers" else [])
            gif = image_panel("The runs as a GIF", "scales-gif", type="filepath") if kind == "scales" else None
            run_progress = gr.JSON(visible=False, label="Run progress")
            code = CodePanel(writers, comparison.api_name, ("compare", f"compare-{kind}"))

    def compare(prompt, negative_prompt, entries, steps, guidance_scale, seed, width, height, preview_every,
                previews, scheduler, request: gr.Request):
        """The prompt run once per entry, all streamed step by step side by side; the last message carries
        every final image, captioned with its entry."""
        with stop_flag(stops, request) as flag:
            with user_errors():
                changes = parse(entries)
                runs = engine.compare_runs(prompt, negative_prompt, controls.settings(
                    steps, guidance_scale, seed, width, height, preview_every, previews, scheduler), changes,
                    should_stop=flag.is_set)
            labels = [label_of(change, run.settings) for change, run in zip(changes, runs)]
            for update in stream_side_by_side(engine, runs, labels, flag, CAPTIONS[kind]):
                values = [update.strip, update.status, *(update.plots if plots else [])]
                if gif is None or update.state != "done":
                    yield [*values, *([None] if gif else []), update.progress]
                    continue
                with tempfile.TemporaryDirectory(prefix="sdlens-") as folder:  # gradio copies it into its cache
                    yield [*values, sweep_gif(update.strip, Path(folder)), update.progress]

    def compare_code(prompt, negative_prompt, entries, steps, guidance_scale, seed, width, height, preview_every,
                     previews, scheduler):
        """The comparison as a script."""
        settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every, previews, scheduler)
        return Scripts(engine).compare(prompt, negative_prompt, settings, parse(entries))

    outputs = [strip, status, *plots, *([gif] if gif else []), run_progress]
    inputs = [prompt, negative_prompt, entries, *controls.inputs]
    run = checked_by_script(go, compare_code, inputs, stops, stop).success(
        compare, inputs, outputs, api_name=comparison.api_name, **options)
    idle_after(stop, (run,), stops)
    code.after(run, compare_code, inputs, StripView(strip, run_progress))


CAPTIONS = {"scales": "CFG {}", "samplers": "{}", "seeds": "seed {}"}  # an entry's picture, by its label


def label_of(change: dict, settings: Settings) -> str:
    """An entry's label, as the status line and the link give it: the scale, the sampler key (with its steps when
    given) or the seed its run used (a random one drawn for -1); CAPTIONS make its picture's caption."""
    if "guidance_scale" in change:
        scale = change["guidance_scale"]
        return f"{scale:g}" if float(f"{scale:g}") == scale else repr(scale)  # short, yet the very scale run
    if "scheduler" in change:
        return change["scheduler"] + (f":{change['steps']}" if "steps" in change else "")
    return str(settings.seed)


@dataclass(frozen=True)
class Round:
    """What the page shows after every run has taken one more step."""

    strip: list                    # (image, caption): each run's latest x0, its result once done
    status: str
    plots: list                    # x0 movement per step, and the sigma schedules, by entry
    state: str                     # running, done or stopped
    progress: dict                 # the same, as plain fields for scripts


def run_notes(runs: list[Run], labels: list[str]) -> list[str]:
    """What the runs say before their first step: a note every run gives once, any other with its entry's label."""
    shared = [note for note in runs[0].notes if all(note in run.notes for run in runs)]
    return shared + [f"{label}: {note}" for label, run in zip(labels, runs) for note in run.notes if note not in shared]


def stream_side_by_side(engine: Engine, runs: list[Run], labels: list[str], flag: threading.Event,
                        caption: str = "{}") -> Iterator[Round]:
    """Each round advances every run one step; the last round carries every result, each image captioned with
    `caption` of its entry's label."""
    sigmas = pd.DataFrame([(label, i + 1, sigma) for label, run in zip(labels, runs) for i, sigma in
                           enumerate(engine.views.schedule_table(run.settings.steps, run.settings.scheduler).sigmas)],
                          columns=["sampler", "step", "sigma"])
    seeds = {run.settings.seed for run in runs}
    about = f"seed {seeds.pop()}" if len(seeds) == 1 else "seeds " + ", ".join(labels)
    shown, last, movement, said = [None] * len(runs), [None] * len(runs), [], []  # said: notes from the runs' steps
    told = run_notes(runs, labels)  # before the first step

    def round_(state: str) -> Round:
        lead = max((frame for frame in last if frame), key=lambda f: (f.index + 1) / f.steps, default=None)
        counts = [(label, frame.index + 1 if frame else 0, run.settings.steps)
                  for label, frame, run in zip(labels, last, runs)]
        steps = "" if len({count[1:] for count in counts}) == 1 else " · steps run: " + ", ".join(
            f"{label} {done} / {total}" for label, done, total in counts)  # optim's early stop, an entry's own count
        notes = [*told, *said]
        return Round([(image, caption.format(label)) for image, label in zip(shown, labels) if image is not None],
                     status_line(lead, state, about + steps, notes),
                     [pd.DataFrame(movement, columns=["sampler", "step", "x0 movement"]), sigmas], state,
                     {"state": state, "entries": labels, "steps": [done for _, done, _ in counts],
                      "totals": [total for *_, total in counts], "notes": notes,
                      "seeds": [run.settings.seed for run in runs], "seed": runs[0].settings.seed})

    with user_errors():
        for frames in zip_longest(*(run.frames for run in runs)):
            for i, frame in enumerate(frames):
                if frame is not None:
                    movement.append((labels[i], frame.index + 1, engine.x0_movement(last[i], frame)))
                    last[i], shown[i] = frame, frame.image or frame.x0_image or shown[i]
                    if frame.note:
                        said.append(f"{labels[i]}: {frame.note}")
            yield round_("running")
    yield round_(ended(None if any(f is None or f.image is None for f in last) else True, flag))


def sweep_gif(strip: list, folder: Path) -> str:
    """The scales' results as a GIF, scaled up, each frame captioned as on the page."""
    frames = [export.video_frame([image], caption) for image, caption in strip]
    return str(export.write_gif(frames, folder / "sdlens-cfg-sweep.gif", SWEEP_FPS))
