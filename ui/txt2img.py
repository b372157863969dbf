"""The "Text to image" tab: prompt in, every step's x_t and predicted x0 streamed out."""
from __future__ import annotations

import gradio as gr

from core.code import Scripts
from core.engine import Engine
from ui.code_panel import CodePanel, Writers
from ui.common import GENERATE, user_errors
from ui.run_view import Controls, RunView, checked_first, idle_after, run_buttons
from ui.send import Prompted
from ui.stops import StopFlags


def build(engine: Engine, stops: StopFlags, concurrency: int, writers: Writers) -> Prompted:
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", value=engine.examples("txt2img")[0][0], lines=2)
            negative_prompt = gr.Textbox("", label="Negative prompt", placeholder="what to steer away from")
            generate, stop = run_buttons()
            examples = gr.Column()  # under the buttons, above the long generation settings
            controls = Controls(engine)
            with examples:
                gr.Examples(engine.examples("txt2img"), [prompt, negative_prompt, controls.guidance_scale])
        with gr.Column(scale=3):
            view = RunView("txt2img", stops, "Press Generate to watch the model denoise, step by step.", sendable=True)
            code = CodePanel(writers, "txt2img", ("txt2img",))

    def check(prompt, negative_prompt, *numbers):
        """Reject bad inputs with a message before the run starts (the outputs stay as they are)."""
        with user_errors():
            engine.check_txt2img(prompt, negative_prompt, controls.settings(*numbers))

    def txt2img(prompt, negative_prompt, steps, guidance_scale, seed, width, height, preview_every,
                previews, scheduler, request: gr.Request):
        """Generate an image from a prompt, streaming x_t and the predicted x0 of every preview step."""
        with view.stop_flag(request) as flag:
            with user_errors():
                settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every,
                                             previews, scheduler)
                run = engine.txt2img(prompt, negative_prompt, settings, should_stop=flag.is_set)
            yield from view.stream(run, flag)

    def txt2img_code(prompt, negative_prompt, steps, guidance_scale, seed, width, height, preview_every, previews,
                     scheduler):
        """The run as a script."""
        settings = controls.settings(steps, guidance_scale, seed, width, height, preview_every, previews, scheduler)
        return Scripts(engine).txt2img(prompt, negative_prompt, settings)

    inputs = [prompt, negative_prompt, *controls.inputs]
    checked = checked_first(generate, check, inputs, view.stops, stop)
    run = checked.success(txt2img, inputs, view.outputs, api_name="txt2img", concurrency_id=GENERATE,
                          concurrency_limit=concurrency)
    idle_after(stop, (run,), view.stops)
    code.after(run, txt2img_code, inputs, view)
    view.wire(stop, stop_api="stop")
    return Prompted(view, prompt, negative_prompt, controls)
