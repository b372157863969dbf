"""The "Image to image" tab: an image's latents noised to a start step, then denoised toward a prompt."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from core.code import Scripts
from core.engine import Engine
from ui.code_panel import CodePanel, Writers
from ui.common import EXAMPLE_IMAGES, GENERATE, ImageFile, Radio, Slider, given, number, user_errors, whole
from ui.run_view import PANEL, Controls, RunView, checked_first, image_panel, idle_after, run_buttons
from ui.send import Prompted
from ui.stops import StopFlags

START_NOTE = ("Decoded, a noised start can look like plain noise while the UNet still finds the picture in it: the "
              "first step's predicted x0 shows what it sees.")


def _inputs(engine: Engine) -> tuple:
    """The run's own inputs: the image, the prompts, the Generate and Stop buttons (under the prompts, as on every
    tab: in a projector's first 720 lines), and the strength."""
    image = ImageFile(label="Input image", type="filepath", sources=["upload", "clipboard"], elem_classes="pixels",
                      height=PANEL // 2, elem_id="img2img-input", value=str(EXAMPLE_IMAGES[0]))
    first_prompt, first_strength = engine.examples("img2img")[0]  # the tab opens on its first example
    prompt = gr.Textbox(label="Prompt", value=first_prompt, lines=2)
    negative_prompt = gr.Textbox("", label="Negative prompt", placeholder="what to steer away from")
    buttons = run_buttons()
    strength = Slider(0, 1, value=first_strength, step=0.05, label="Strength",
                      info="0 keeps the image, 1 ignores it")
    return image, prompt, negative_prompt, buttons, strength


def _lms_order(scheduler: str) -> gr.Radio:
    """How LMS counts its order on a mid-schedule start; shown while the sampler is LMS."""
    return Radio([("from the run's start (this app)", "run"),
                  ("from the schedule's start (as diffusers)", "diffusers")], value="run",
                 label="LMS counts its order", elem_id="img2img-lms-order", visible=scheduler == "lms",
                 info="diffusers' LMS applies order 4 from the first step of a mid-schedule start, with one "
                      "derivative stored: compare the two")


def build(engine: Engine, stops: StopFlags, concurrency: int, writers: Writers) -> Prompted:
    defaults = engine.default_settings("img2img")
    with gr.Row():
        with gr.Column(scale=2):
            image, prompt, negative_prompt, (generate, stop), strength = _inputs(engine)
            plan = gr.Markdown(engine.img2img_plan(strength.value, defaults.steps, defaults.scheduler).describe(),
                               elem_id="img2img-plan")
            examples = [[str(path), prompt_, "", strength_]  # an example has no negative prompt: it clears one
                        for path, (prompt_, strength_) in zip(EXAMPLE_IMAGES, engine.examples("img2img"))]
            gr.Examples(examples, [image, prompt, negative_prompt, strength])  # above the long generation settings
            controls = Controls(engine, sized=False, tab="img2img")
            lms_order = _lms_order(defaults.scheduler)
        with gr.Column(scale=3):
            with gr.Row():
                fitted = image_panel("The input as the model takes it", "img2img-fitted")
                begin = image_panel("The noised latents the run starts from, decoded", "img2img-start")
            about = gr.Markdown("", elem_id="img2img-about", line_breaks=True, label="About the start")
            view = RunView("img2img", stops, "Press Generate: the image is noised to the start step, then denoised.",
                           sendable=True)
            code = CodePanel(writers, "img2img", ("img2img",))

    def check(image, prompt, negative_prompt, strength, lms_order, *numbers):
        """Reject bad inputs with a message before the run starts (the outputs stay as they are)."""
        with user_errors():
            engine.fit_image(given(image, "input image"))
            settings = engine.check_txt2img(prompt, negative_prompt, controls.settings(*numbers))
            engine.img2img_plan(number(strength, "strength"), settings.steps, settings.scheduler, lms_order)

    def img2img(image, prompt, negative_prompt, strength, lms_order, steps, guidance_scale, seed, preview_every,
                previews, scheduler, request: gr.Request):
        """Noise the image's latents to the step the strength gives, then denoise them toward the prompt,
        streaming x_t and the predicted x0 of every preview step."""
        with view.stop_flag(request) as flag:
            with user_errors():
                settings = controls.settings(steps, guidance_scale, seed, preview_every,
                                             previews, scheduler)
                run = engine.img2img(prompt, negative_prompt, given(image, "input image"), number(strength, "strength"),
                                     settings, lms_order=lms_order, should_stop=flag.is_set)
            source = run.source
            mid_schedule = 0 < source.plan.first < run.settings.steps
            told = f"{source.plan.describe()}\nInput: {source.note}" + (f"\n{START_NOTE}" if mid_schedule else "")
            shown = {fitted: source.image, begin: source.start, about: told}
            yield shown
            round_trip = source.start if source.plan.first == run.settings.steps else None  # strength 0: no step
            yield from view.stream(run, flag, final=lambda: shown, result=round_trip)

    inputs = [image, prompt, negative_prompt, strength, lms_order, *controls.inputs]
    checked = checked_first(generate, check, inputs, view.stops, stop)
    run = checked.success(img2img, inputs, [fitted, begin, about, *view.outputs], api_name="img2img",
                          concurrency_id=GENERATE, concurrency_limit=concurrency)
    idle_after(stop, (run,), view.stops)
    code.after(run, code_writer(engine, controls), inputs, view)
    wire_plan(engine, (strength, lms_order), controls, plan)
    view.wire(stop, stop_api=None)
    return Prompted(view, prompt, negative_prompt, controls, image)


def code_writer(engine: Engine, controls: Controls):
    def img2img_code(image, prompt, negative_prompt, strength, lms_order, steps, guidance_scale, seed, preview_every,
                     previews, scheduler):
        """The run as a script (it reads the image from the path the app used)."""
        settings = controls.settings(steps, guidance_scale, seed, preview_every, previews, scheduler)
        return Scripts(engine).img2img(prompt, negative_prompt, shipped_example(given(image, "input image")),
                                       number(strength, "strength"), settings, lms_order=lms_order)

    return img2img_code


def shipped_example(path: str) -> str:
    """An example image's own file in the repository, for the app's copy of it (gradio serves examples from its
    cache); any other image's path as it is."""
    for example in EXAMPLE_IMAGES:
        if Path(path).name == example.name and Path(path).read_bytes() == example.read_bytes():
            return str(example)
    return path


def wire_plan(engine: Engine, start: tuple[Slider, gr.Radio], controls: Controls, plan: gr.Markdown) -> None:
    """The plan follows the strength, the LMS order, the steps and the sampler; the LMS order shows only with LMS."""
    strength, lms_order = start

    def describe_plan(strength, lms_order, steps, scheduler):
        """What the strength means for these settings, in words (cheap: no model runs)."""
        with user_errors():
            return engine.img2img_plan(number(strength, "strength"), whole(steps, "steps"), scheduler,
                                       lms_order).describe()

    gr.on([strength.change, lms_order.change, controls.steps.change, controls.scheduler.change], describe_plan,
          [strength, lms_order, controls.steps, controls.scheduler], plan, api_visibility="private",
          show_progress="hidden")
    controls.scheduler.change(lambda scheduler: gr.update(visible=scheduler == "lms"), controls.scheduler, lms_order,
                              api_visibility="private", queue=False)
