"""The "Text to image" tab: prompt in, every step's x_t and predicted x0 streamed out."""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import gradio as gr

from core import export
from core.engine import RANDOM_SEED, Engine
from core.sampler import MAX_GUIDANCE, MAX_STEPS, MIN_SIDE, Frame
from core.schedule import SCHEDULERS
from ui.common import GENERATE, number, user_errors, whole
from ui.stops import StopFlags

PANEL = 320  # pixels of page height per image panel; small images are scaled up to fill it


def frame_caption(frame: Frame) -> str:
    return f"step {frame.index + 1} / {frame.steps} · timestep {frame.timestep:.1f} · sigma {frame.sigma:.4f}"


def build(engine: Engine, stops: StopFlags, concurrency: int) -> None:
    defaults = engine.default_settings()
    factor, max_side = engine.bundle.vae_scale_factor, engine.bundle.max_side
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", value=engine.examples("txt2img")[0][0], lines=2)
            negative_prompt = gr.Textbox(label="Negative prompt", placeholder="what to steer away from")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            steps = gr.Slider(1, MAX_STEPS, value=defaults.steps, step=1, label="Steps")
            guidance_scale = gr.Slider(0, MAX_GUIDANCE, value=defaults.guidance_scale, step=0.5,
                                       label="Guidance scale (CFG)", info="1 turns classifier-free guidance off")
            with gr.Row():
                seed = gr.Number(value=defaults.seed, precision=0, label="Seed", info="-1: a random seed")
                dice = gr.Button("Random seed", size="sm")
            with gr.Row():
                width = gr.Slider(MIN_SIDE, max_side, value=defaults.width, step=factor, label="Width")
                height = gr.Slider(MIN_SIDE, max_side, value=defaults.height, step=factor, label="Height")
            with gr.Row():
                preview_every = gr.Slider(0, MAX_STEPS, value=defaults.preview_every, step=1,
                                          label="Preview every N steps", info="0: only the final image")
                scheduler = gr.Dropdown(list(SCHEDULERS), value=defaults.scheduler, label="Sampler")
            gr.Examples(engine.examples("txt2img"), [prompt, negative_prompt, guidance_scale])
        with gr.Column(scale=3):
            with gr.Row():
                x_t_view = gr.Image(label="x_t: the noisy latents the UNet sees, decoded", format="png",
                                    height=PANEL, elem_classes="pixels", elem_id="txt2img-xt")
                x0_view = gr.Image(label="predicted x0, decoded", format="png", height=PANEL,
                                   elem_classes="pixels", elem_id="txt2img-x0")
            status = gr.Markdown("Press Generate to watch the model denoise, step by step.",
                                 elem_id="txt2img-status")
            scrub = gr.Slider(0, 1, value=0, step=1, label="Scrub through the run", visible=False)
            result = gr.Image(label="Result", format="png", height=PANEL, elem_classes="pixels",
                              elem_id="txt2img-result")
            make_video = gr.Button("Make the x0 video of this run (MP4 + GIF)", size="sm")
            with gr.Row():
                mp4 = gr.File(label="x0 video (MP4)")
                gif = gr.File(label="x0 video (GIF)")
    history = gr.State(None)  # this session's last run: (seed, [(caption, x_t image, x0 image), ...])

    def settings_of(steps, guidance_scale, seed, width, height, preview_every, scheduler):
        return replace(defaults, steps=whole(steps, "steps"), guidance_scale=number(guidance_scale, "guidance_scale"),
                       seed=whole(seed, "seed"), width=whole(width, "width"), height=whole(height, "height"),
                       preview_every=whole(preview_every, "preview_every"), scheduler=scheduler)

    def check(prompt, negative_prompt, *numbers):
        """Reject bad inputs with a message before the run starts (the outputs stay as they are)."""
        with user_errors():
            engine.check_txt2img(prompt, negative_prompt, settings_of(*numbers))

    def txt2img(prompt, negative_prompt, steps, guidance_scale, seed, width, height, preview_every,
                scheduler, request: gr.Request):
        """Generate an image from a prompt, streaming x_t and the predicted x0 of every preview step."""
        flag = stops.begin(request.session_hash)
        try:
            with user_errors():
                settings = settings_of(steps, guidance_scale, seed, width, height, preview_every, scheduler)
                run = engine.txt2img(prompt, negative_prompt, settings, should_stop=flag.is_set)
            for note in run.notes:
                gr.Warning(note)
            about = f"seed {run.settings.seed}" + "".join(f"  \n⚠️ {note}" for note in run.notes)
            frames, caption, image = [], "no step run", None
            yield {result: None, scrub: gr.update(visible=False), mp4: None, gif: None}
            with user_errors():
                for frame in run.frames:
                    caption = frame_caption(frame)
                    update = {status: f"{caption} · {about}"}
                    if frame.x0_image is not None:
                        frames.append((caption, frame.x_t_image, frame.x0_image))
                        update |= {x_t_view: frame.x_t_image, x0_view: frame.x0_image}
                    if frame.image is not None:
                        image = update[result] = frame.image
                    yield update
            ended = "done" if image is not None else "stopped"
            scrubber = gr.update(maximum=max(len(frames) - 1, 1), value=len(frames) - 1, visible=len(frames) > 1)
            yield {status: f"{caption} · **{ended}** · {about}", scrub: scrubber,
                   history: (run.settings.seed, frames) if frames else None}
        finally:
            stops.end(request.session_hash, flag)

    def export_video(last_run):
        """The last run's x_t | x0 pairs as an MP4 and a GIF: the notebook's "x0 video"."""
        if not last_run:
            raise gr.Error("There is no run to make a video of yet: press Generate first")
        seed, frames = last_run
        pairs = [export.pair(x_t, x0) for _, x_t, x0 in frames]
        with tempfile.TemporaryDirectory(prefix="sdlens-") as folder:
            stem = Path(folder) / f"sdlens-x0-seed{seed}"
            # Gradio copies both files into its own cache before it resumes this generator, which
            # then removes the folder: nothing of a run stays behind outside that expiring cache.
            yield (str(export.write_mp4(pairs, stem.with_suffix(".mp4"))),
                   str(export.write_gif(pairs, stem.with_suffix(".gif"))))

    def stop_run(request: gr.Request):
        """Stop this session's run before its next step."""
        stops.stop(request.session_hash)

    def show_frame(position, last_run):
        if not last_run:
            return gr.skip(), gr.skip(), gr.skip()
        frames = last_run[1]
        caption, x_t, x0 = frames[min(int(position), len(frames) - 1)]
        return x_t, x0, f"{caption} · scrubbing the last run"

    inputs = [prompt, negative_prompt, steps, guidance_scale, seed, width, height, preview_every, scheduler]
    outputs = [x_t_view, x0_view, status, result, scrub, mp4, gif, history]  # mp4/gif: cleared by a new run
    generate.click(check, inputs, None, api_visibility="private").success(
        txt2img, inputs, outputs, api_name="txt2img", concurrency_id=GENERATE, concurrency_limit=concurrency)
    make_video.click(export_video, history, [mp4, gif], api_name="export_video")
    stop.click(stop_run, None, None, api_name="stop", queue=False)
    dice.click(lambda: RANDOM_SEED, None, seed, api_visibility="private", queue=False)
    scrub.input(show_frame, [scrub, history], [x_t_view, x0_view, status], api_visibility="private",
                queue=False)
