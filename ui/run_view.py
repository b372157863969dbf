"""The panels every generating tab shares: x_t and predicted x0 streamed per step, the status line, the
result, a scrubber over the finished run, its x0 video, and Stop."""
from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

import gradio as gr
from gradio import image_utils
from PIL import Image

from core import export
from core.code import Unscriptable
from core.engine import Engine, Run
from core.sampler import MAX_GUIDANCE, MAX_STEPS, MIN_SIDE, PREVIEWS, RANDOM_SEED, Frame, RunFailed, Settings
from ui.common import SAMPLER_CHOICES, Dropdown, Radio, Scrubber, Slider, counter, nth, number, user_errors, whole
from ui.read_ahead import read_ahead
from ui.stops import StopFlags

PANEL = 320  # pixels of page height per image panel; small images are scaled up to fill it
CFG_NOTE = "how hard the prompt pulls: each step takes uncond + CFG x (text - uncond); 1 turns guidance off"
EXPIRED = "This run's frames have expired from the cache (--cache-max-age): generate it again"
NO_RUN = "There is no run to make a video of yet: press Generate first"


def frame_caption(frame: Frame) -> str:
    return f"step {frame.index + 1} / {frame.steps} · timestep {frame.timestep:.1f} · sigma {frame.sigma:.4f}"


def video_caption(frame: Frame) -> str:
    """What a video frame has burnt in."""
    return f"step {frame.index + 1}/{frame.steps} · sigma {frame.sigma:.2f}"


def image_panel(label: str, elem_id: str, **options) -> gr.Image:
    """An image shown scaled up to the panel height (pixelated or smooth, as the page is set); never an upload
    box, even where an event reads it (Send to ...)."""
    return gr.Image(label=label, format="png", height=PANEL, elem_classes="pixels", elem_id=elem_id,
                    interactive=False, **options)


def video_outputs(what: str, elem_id: str) -> tuple[gr.File, gr.Image]:
    """Where a video made of a run arrives, both hidden until there is one (see `reveal`): the MP4 to download,
    and the GIF playing on the page."""
    mp4 = gr.File(label=f"{what} (MP4)", elem_id=f"{elem_id}-mp4", visible=False)
    gif = image_panel(f"{what} (GIF), playing", f"{elem_id}-gif", type="filepath", visible=False)
    return mp4, gif


def reveal(made: gr.events.Dependency, mp4: gr.File, gif: gr.Image) -> None:
    """Show a video's panels once `made` has filled them (a step of its own, so that the API answers the files'
    paths)."""
    made.success(lambda: (gr.update(visible=True),) * 2, None, [mp4, gif], api_visibility="private", queue=False)


@contextmanager
def stop_flag(stops: StopFlags, request: gr.Request) -> Iterator[threading.Event]:
    """The flag this session's Stop button sets, for the run about to start."""
    flag = stops.begin(request.session_hash)
    try:
        yield flag
    finally:
        stops.end(request.session_hash, flag)


def stop_button() -> gr.Button:
    """Stop, greyed out while this session has no run going or waiting: a click on a run button turns it live
    (`expect_on`), and it greys out again when the run ends (`idle_after`) or its check refuses it
    (`checked_first`)."""
    return gr.Button("Stop", variant="stop", interactive=False)


def run_buttons(label: str = "Generate", stops: StopFlags | None = None) -> tuple[gr.Button, gr.Button]:
    """A tab's run button beside its Stop button (`stop_button`), in a row under the prompts; with `stops`,
    Stop is wired to stop this session's run (tabs whose RunView wires it leave it out)."""
    with gr.Row():
        go, stop = gr.Button(label, variant="primary"), stop_button()
    if stops is not None:
        wire_stop(stop, stops)
    return go, stop


def idle_after(stop: gr.Button, runs: tuple[gr.events.Dependency, ...], stops: StopFlags) -> None:
    """Stop greys out when one of `runs` ends, done or refused, unless the session has another run going or
    waiting."""

    def after_run(request: gr.Request):
        return gr.Button(interactive=stops.busy(request.session_hash))

    for run in runs:
        for ended in (run.success, run.failure):
            ended(after_run, None, stop, queue=False, api_visibility="private")


def wire_stop(button: gr.Button, stops: StopFlags, starts: tuple[gr.Button, ...] = (),
              api_name: str | None = None) -> None:
    """Stop ends this session's run before its next step, or, pressed while a run that one of `starts` asked
    for waits in the queue, before its first (wire it before their runs); only one button publishes the
    `/stop` endpoint."""

    def stop_run(request: gr.Request):
        """Stop this session's run before its next step."""
        stops.stop(request.session_hash)

    visibility = {"api_name": api_name} if api_name else {"api_visibility": "private"}
    button.click(stop_run, None, None, queue=False, **visibility)
    for start in starts:
        expect_on(start, stops, button)


def expect_on(button: gr.Button, stops: StopFlags, stop: gr.Button) -> None:
    """The button's click registers its run's stop flag at once and turns `stop` live; the page sends a click's
    events one after another in the order they were wired, so wire this before the run."""

    def expect_run(request: gr.Request):
        stops.expect(request.session_hash)
        return gr.Button(interactive=True)

    button.click(expect_run, None, stop, queue=False, api_visibility="private")


def checked_first(button: gr.Button, check: Callable, inputs: list, stops: StopFlags, stop: gr.Button):
    """The button's click registers its run's stop flag, then checks the inputs before the run joins the queue
    (returns that check, for the run to follow on `.success`); a run refused there will not begin, so a later
    Stop is not for it, and `stop` greys out again."""

    def forget_run(request: gr.Request):
        stops.forget(request.session_hash)
        return gr.Button(interactive=stops.busy(request.session_hash))

    expect_on(button, stops, stop)
    checked = button.click(check, inputs, None, api_visibility="private")
    checked.failure(forget_run, None, stop, queue=False, api_visibility="private")
    return checked


def checked_by_script(button: gr.Button, writer: Callable, inputs: list, stops: StopFlags, stop: gr.Button):
    """`checked_first` with the run's script writer as the check: a writer checks its inputs as its run does,
    without running the model (a run it cannot write as a script still goes)."""

    def check(*values):
        """Reject bad inputs with a message before the run starts (the outputs stay as they are)."""
        with user_errors():
            with suppress(Unscriptable):
                writer(*values)

    return checked_first(button, check, inputs, stops, stop)


class Controls:
    """The settings every generating tab offers, starting from the `tab`'s defaults; `sized` adds width and height
    (image to image takes the image's size instead)."""

    def __init__(self, engine: Engine, sized: bool = True, tab: str | None = None):
        self.defaults = defaults = engine.default_settings(tab)
        factor, max_side = engine.bundle.vae_scale_factor, engine.bundle.max_side

        def about(setting: str, general: str | None = None) -> str | None:
            """A control's info line: what the setting does, then what this model's folder notes on it."""
            return " · ".join(filter(None, [general, engine.setting_note(setting, tab)])) or None

        self.steps = Slider(1, MAX_STEPS, value=defaults.steps, step=1, label="Steps", info=about("steps"))
        self.guidance_scale = Slider(0, MAX_GUIDANCE, value=defaults.guidance_scale, step=0.5,
                                     label="Guidance scale (CFG)",
                                     info=about("guidance_scale", CFG_NOTE))
        with gr.Row():
            self.seed = gr.Number(value=defaults.seed, label="Seed",
                                  info=about("seed", "-1: a random seed"))
            dice = gr.Button("Random seed", size="sm")
        self.size = []
        if sized:
            with gr.Row():
                self.size = [Slider(MIN_SIDE, max_side, value=getattr(defaults, side), step=factor,
                                    label=side.capitalize(), info=about(side, f"a multiple of {factor}"))
                             for side in ("width", "height")]
        with gr.Row():
            self.preview_every = Slider(0, MAX_STEPS, value=defaults.preview_every, step=1,
                                        label="Preview every N steps",
                                        info=about("preview_every", "0: only the final image"))
            self.previews = Radio(list(PREVIEWS), value=defaults.previews, label="Previews decoded by",
                                  info=about("previews", " · ".join(f"{name}: {text}"
                                                                    for name, text in PREVIEWS.items())))
        self.scheduler = Dropdown(SAMPLER_CHOICES, value=defaults.scheduler, label="Sampler",
                                  info=about("scheduler"))
        dice.click(lambda: RANDOM_SEED, None, self.seed, api_visibility="private", queue=False)

    @property
    def inputs(self) -> list:
        """In the order `settings` takes them."""
        return [self.steps, self.guidance_scale, self.seed, *self.size, self.preview_every, self.previews,
                self.scheduler]

    def settings(self, steps, guidance_scale, seed, *rest) -> Settings:
        """Widget values (in the order of `inputs`) -> Settings; size from the defaults when not offered."""
        *size, preview_every, previews, scheduler = rest
        width, height = size or (self.defaults.width, self.defaults.height)
        return replace(self.defaults, steps=whole(steps, "steps"),
                       guidance_scale=number(guidance_scale, "guidance_scale"), seed=whole(seed, "seed"),
                       width=whole(width, "width"), height=whole(height, "height"),
                       preview_every=whole(preview_every, "preview_every"), previews=previews, scheduler=scheduler)


def progress(frame: Frame | None, state: str, seed: int, notes: Iterable[str]) -> dict:
    """Where a run stands, as plain fields for scripts (the page shows the same as one line)."""
    return {"step": frame.index + 1 if frame else 0, "steps": frame.steps if frame else None,
            "timestep": frame.timestep if frame else None, "sigma": frame.sigma if frame else None,
            "state": state, "seed": seed, "notes": list(notes)}


def status_line(frame: Frame | None, state: str, about: str, notes: Iterable[str]) -> str:
    """The status line: "step 3 / 30 · timestep 899.0 · sigma 8.1 · running · seed 32", then any notes."""
    head = frame_caption(frame) if frame else "no step run"
    return with_notes(f"{head} · {state} · {about}", notes)


def with_notes(line: str, notes: Iterable[str]) -> str:
    """A status line with a warning line under it for each note."""
    return "\n".join([line, *(f"⚠️ {note}" for note in notes)])


def ended(image, flag: threading.Event) -> str:
    return "done" if image is not None or not flag.is_set() else "stopped"


def check_kept(frames: list[tuple]) -> None:
    """Refuses (ValueError) frames whose files the cache has expired."""
    if not all(os.path.exists(x0) and os.path.exists(x_t) for _, _, x_t, x0 in frames):
        raise ValueError(EXPIRED)


def cached(image: Image.Image | None, panel: gr.components.Component) -> str | None:
    """The image as the PNG file gradio would make of it in the panel's cache, which expires with the cache: a
    session keeps this path rather than the pixels (at 512 px, 1.5 MB a step)."""
    try:
        return None if image is None else image_utils.save_image(image, panel.GRADIO_CACHE, format="png")
    except OSError as err:  # a disk that filled up during the run
        raise RunFailed(f"Cannot write to the cache folder {panel.GRADIO_CACHE} ({err.strerror or err}): free "
                        "some space there and run again; the app is still running") from err


class RunView:
    """Lays out the panels of one tab (element ids start with `name`) and streams a run into them."""

    def __init__(self, name: str, stops: StopFlags, idle: str, beside_result: str | None = None,
                 sendable: bool = False):
        """`beside_result` labels an extra image panel in the result's row (`self.beside`); `sendable` adds
        buttons that send the result on to image to image and to the VAE (wired by ui.send)."""
        self.name, self.stops = name, stops
        with gr.Row():
            self.x_t = image_panel("x_t: the noisy latents the UNet sees, decoded", f"{name}-xt")
            self.x0 = image_panel("predicted x0, decoded", f"{name}-x0")
        self.status = gr.Markdown(idle, elem_id=f"{name}-status", line_breaks=True, label="Status")
        self.progress = gr.JSON(visible=False, label="Run progress")  # for scripts: step, sigma, state, seed
        self.scrub = Scrubber(1, 2, value=1, step=1, label="Scrub through the run", visible=False,
                            info="the previews it streamed, first to last: the status line names each one's step")
        with gr.Row():
            self.result = image_panel("Result", f"{name}-result")
            self.beside = image_panel(beside_result, f"{name}-beside") if beside_result else None
        if sendable:
            with gr.Row():
                self.send_img2img = gr.Button("Send to image to image", size="sm", elem_id=f"{name}-send-img2img")
                self.send_vae = gr.Button("Send to VAE", size="sm", elem_id=f"{name}-send-vae")
        with gr.Row():
            self.make_video = gr.Button("Make the x0 video of this run (MP4 + GIF)", size="sm", scale=2)
            self.fps = Slider(1, export.MAX_FPS, value=export.DEFAULT_FPS, step=1, label="Video frames per second",
                              scale=1)
        self.mp4, self.gif = video_outputs("x0 video", f"{name}-video")
        self.videos = [self.mp4, self.gif]  # every video panel of the tab: a new run empties and hides them
        # this session's last run: (seed, [(caption, video caption, x_t file, x0 file), ...])
        self.history = gr.State(None)

    @property
    def outputs(self) -> list:
        """What a run writes (mp4 and gif: cleared by a new run)."""
        return [self.x_t, self.x0, self.status, self.result, self.scrub, self.mp4, self.gif, self.history,
                self.progress]

    def stop_flag(self, request: gr.Request):
        return stop_flag(self.stops, request)

    @staticmethod
    def thumbnail(result, last_run):
        """The run's result, as the history shows it."""
        return result

    @property
    def kept(self) -> list:
        """What a run's download is made of (read by `files`)."""
        return [self.result, self.history]

    @staticmethod
    def files(result, last_run) -> list[tuple[str, object]]:
        """A run's download: the result, and each preview step's x_t and x0 while they are in the cache."""
        frames = last_run[1] if last_run else []
        return [("result.png", result)] + [
            (f"steps/{k + 1:03d}-{part}.png", path) for k, (_, _, x_t, x0) in enumerate(frames)
            for part, path in (("x_t", x_t), ("x0", x0))]

    def cached(self, image: Image.Image | None) -> str | None:
        return cached(image, self.x0)

    def saved(self, frames: Iterator[Frame]) -> Iterator[tuple[Frame, tuple[str, str] | None]]:
        """Each frame with the cache files of its x_t and x0 previews (None without previews)."""
        for frame in frames:
            previews = frame.x0_image is not None
            yield frame, (self.cached(frame.x_t_image), self.cached(frame.x0_image)) if previews else None

    def stream(self, run: Run, flag: threading.Event, about: str = "",
               extra: Callable[[Frame], dict] = lambda frame: {}, final: Callable[[], dict] = dict,
               result=None) -> Iterator[dict]:
        """Page updates for each frame of `run` (with what `extra` adds for it). The last message carries every
        final output: the last previews, the result (`result` when the run makes none), the scrubber and what
        `final` adds, because API clients get only the last message.

        Each step gives every panel a value (an image, or None to clear it): gradio handles an output left
        unchanged as a component update, which costs more than the step of a small model. The run is read
        ahead (the next step computed and its previews saved while gradio sends this one).
        """
        about, notes = f"seed {run.settings.seed}{about}", list(run.notes)  # shown on the status line
        shown, frame, image = [], None, result  # shown: what `history` keeps of every preview step
        # the last run's frames and videos, hidden by the first message; later ones keep the videos empty
        clear = {self.x_t: None, self.x0: None, self.scrub: gr.update(visible=False)} | self.hidden_videos()
        with user_errors():
            for frame, files in read_ahead(self.saved(run.frames)):
                if frame.note:
                    notes.append(frame.note)
                if files is not None:
                    x_t, x0 = files
                    shown.append((frame_caption(frame), video_caption(frame), x_t, x0))
                    clear |= {self.x_t: x_t, self.x0: x0}
                image = frame.image or image
                if frame.image is not None:  # the last step: its images go out with the final message
                    break
                yield {self.status: status_line(frame, "running", about, notes), self.result: None,
                       self.scrub: 1, self.progress: progress(frame, "running", run.settings.seed, notes)
                       } | dict.fromkeys(self.videos) | clear | extra(frame)
                clear = {}
        state = ended(image, flag)
        last = shown[-1] if shown else (None,) * 4
        yield ({self.x_t: last[2], self.x0: last[3], self.result: image, **self.hidden_videos(),
                self.status: status_line(frame, state, about, notes), self.scrub: counter(len(shown)),
                self.progress: progress(frame, state, run.settings.seed, notes),
                self.history: (run.settings.seed, shown) if shown else None}
               | (extra(frame) if frame is not None and frame.image is not None else {}) | final())

    def hidden_videos(self) -> dict:
        """Every video panel emptied and hidden (until `reveal` shows the next video made)."""
        return {panel: gr.update(value=None, visible=False) for panel in self.videos}

    def wire(self, stop: gr.Button, stop_api: str | None, starts: tuple[gr.Button, ...] = ()) -> None:
        """Stop (also for the runs `starts` ask for, see `wire_stop`), the scrubber and the video; `stop_api`
        names the Stop endpoint (one tab publishes it)."""

        def export_video(last_run, fps):
            """The last run's x_t | x0 pairs as an MP4 and a GIF: the notebook's "x0 video", scaled up with
            each frame's step and sigma burnt in."""
            with user_errors():
                if not last_run:
                    raise ValueError(NO_RUN)
                fps = export.check_fps(number(fps, "frames per second"))
                seed, frames = last_run
                check_kept(frames)
            pairs = [export.video_frame([Image.open(x_t), Image.open(x0)], label) for _, label, x_t, x0 in frames]
            with tempfile.TemporaryDirectory(prefix="sdlens-") as folder:
                stem = Path(folder) / f"sdlens-{self.name}-x0-seed{seed}"
                # Gradio copies both files into its own cache before it resumes this generator, which
                # then removes the folder: nothing of a run stays behind outside that expiring cache.
                yield (str(export.write_mp4(pairs, stem.with_suffix(".mp4"), fps)),
                       str(export.write_gif(pairs, stem.with_suffix(".gif"), fps)))

        def show_frame(position, last_run):
            if not last_run:
                return gr.skip(), gr.skip(), gr.skip()
            caption, _, x_t, x0 = nth(last_run[1], position)
            if not os.path.exists(x0):
                return gr.skip(), gr.skip(), EXPIRED
            return x_t, x0, f"{caption} · scrubbing the last run"

        reveal(self.make_video.click(export_video, [self.history, self.fps], [self.mp4, self.gif],
                                     api_name=f"{self.name}_video"), self.mp4, self.gif)
        wire_stop(stop, self.stops, starts, stop_api)
        self.scrub.input(show_frame, [self.scrub, self.history], [self.x_t, self.x0, self.status],
                         api_visibility="private", show_progress="hidden")


class PairView:
    """Two runs of the same seed side by side (the prompt as written, and edited), streamed step by step."""

    def __init__(self, name: str, stops: StopFlags, left: str, right: str):
        self.stops = stops
        self.names = tuple(re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") for label in (left, right))
        with gr.Row():
            self.left = image_panel(f"{left}: predicted x0", f"{name}-left")
            self.right = image_panel(f"{right}: predicted x0", f"{name}-right")
        self.status = gr.Markdown("Press Generate both: the two run from the same noise.", label="Status",
                                  elem_id=f"{name}-status",
                                  line_breaks=True)
        self.progress = gr.JSON(visible=False, label="Run progress")

    @property
    def outputs(self) -> list:
        return [self.left, self.right, self.status, self.progress]

    @staticmethod
    def thumbnail(left, right):
        """The edited run's image, as the history shows it."""
        return right

    @property
    def kept(self) -> list:
        return [self.left, self.right]

    def files(self, left, right) -> list[tuple[str, object]]:
        """A pair's download: both final images."""
        return [(f"{self.names[0]}.png", left), (f"{self.names[1]}.png", right)]

    def stream(self, runs: tuple[Run, Run], flag: threading.Event, about: str) -> Iterator[dict]:
        """Both runs a step at a time; the final images replace the previews on the last step, and the last
        message carries both."""
        first, second = runs
        about, seed = f"seed {first.settings.seed} · {about}", first.settings.seed
        notes = dict.fromkeys([*first.notes, *second.notes])  # the two runs' notes, each once, in order
        frame, images = None, (None, None)
        update = {self.left: None, self.right: None}  # the first message clears the last run's images
        with user_errors():
            for frame, other in zip(first.frames, second.frames):
                notes |= dict.fromkeys(note for note in (frame.note, other.note) if note)
                update |= {self.status: status_line(frame, "running", about, notes),
                           self.progress: progress(frame, "running", seed, notes)}
                if frame.x0_image is not None or frame.image is not None:  # the last step, previewed or not
                    images = (frame.image or frame.x0_image, other.image or other.x0_image)
                    update |= {self.left: images[0], self.right: images[1]}
                if frame.image is not None:
                    break
                yield update
                update = {}
        state = ended(frame.image if frame else None, flag)
        yield {self.left: images[0], self.right: images[1], self.status: status_line(frame, state, about, notes),
               self.progress: progress(frame, state, seed, notes)}
