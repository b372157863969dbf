"""The "Noise schedule" tab: timesteps and sigmas of a schedule, and an image noised along it."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from core.engine import Engine
from core.sampler import MAX_STEPS
from ui.common import (EXAMPLE_IMAGES, GENERATE, SAMPLER_CHOICES, Dropdown, ImageFile, Slider, StepSlider, given,
                       user_errors, whole, within_steps)
from ui.run_view import PANEL, image_panel

EXPLAIN = """**init_noise_sigma = {init:.4f}.** Text to image starts from noise of standard deviation 1 multiplied
by this, so the first latents carry the first step's noise level (for LMS and Euler the latents are
x0 + sigma * noise, so they grow with sigma; DDIM and DPM-Solver++ keep them at unit variance and use 1).
Before each UNet call `scale_model_input` multiplies the latents by the last column, the input scale: for LMS,
Euler and optim (this app's own sampler: SGD with momentum on the latents, on Euler's sigmas) 1/sqrt(sigma² + 1),
bringing them back to unit variance; for DDIM and DPM-Solver++ 1, as they are there already."""


def build(engine: Engine, concurrency: int) -> None:
    defaults = engine.default_settings()

    def schedule(steps, scheduler):
        """The schedule as a table (step, counted from 1 as a run counts them; timestep, sigma, scale_model_input
        factor) and a plot of sigma."""
        with user_errors():
            numbers = engine.views.schedule_table(whole(steps, "steps"), scheduler)
        frame = pd.DataFrame({"step": range(1, len(numbers.timesteps) + 1), "timestep": numbers.timesteps,
                              "sigma": numbers.sigmas, "input scale": numbers.input_scales})
        explained = EXPLAIN.format(init=numbers.init_noise_sigma)
        explained = f"⚠️ {numbers.note}\n\n{explained}" if numbers.note else explained
        return frame.round(4), frame[["step", "sigma"]], explained

    first_table, first_plot, first_explain = schedule(defaults.steps, defaults.scheduler)
    with gr.Row():
        steps = Slider(1, MAX_STEPS, value=defaults.steps, step=1, label="Steps")
        scheduler = Dropdown(SAMPLER_CHOICES, value=defaults.scheduler, label="Sampler")
    with gr.Row():
        with gr.Column():
            plot = gr.LinePlot(first_plot, x="step", y="sigma", label="Sigma by step", show_label=False,
                               title="sigma at each step", height=280, elem_id="schedule-plot")
            explain = gr.Markdown(first_explain, elem_id="schedule-explain", label="About the schedule")
        table = gr.Dataframe(first_table, label="The schedule", elem_id="schedule-table", max_height=380)
    gr.on([steps.change, scheduler.change], schedule, [steps, scheduler], [table, plot, explain],
          api_name="schedule", show_progress="hidden")
    build_add_noise(engine, concurrency, steps, scheduler)


NOISED_NOTE = ("Decoded, noised latents can look like plain noise while the UNet still finds the picture in them: "
               "image to image started at this step shows what it sees in its first predicted x0.")


def build_add_noise(engine: Engine, concurrency: int, steps: gr.Slider, scheduler: gr.Dropdown) -> None:
    """add_noise at work: an image noised to a step of the schedule above, and the same noise across it."""
    defaults = engine.default_settings()
    gr.Markdown("### add_noise: an image noised to a step")
    with gr.Row():
        with gr.Column(scale=2):
            image = ImageFile(label="Image", type="filepath", sources=["upload", "clipboard"], elem_classes="pixels",
                              height=PANEL // 2, elem_id="noise-input", value=str(EXAMPLE_IMAGES[-1]))
            gr.Examples([[str(path)] for path in EXAMPLE_IMAGES], [image])
            with gr.Row():
                step = StepSlider(1, defaults.steps, value=defaults.steps // 2 + 1, step=1,
                              label="Step (1 = the noisiest)", info="counted as a run counts them")
                seed = gr.Number(value=defaults.seed, label="Seed of the noise", info="-1: a random seed")
            add = gr.Button("Add noise", variant="primary")
        with gr.Column(scale=3):
            noised = image_panel("Noised to the step, decoded", "noise-chosen")
            about = gr.Markdown(elem_id="noise-about", label="About the noised step")
            row = gr.Gallery(label="The same noise at steps across the schedule (step: sigma)", columns=6, format="png",
                             height=PANEL // 2 + 60, elem_classes=["pixels", "columns-6"], elem_id="noise-row",
                             object_fit="contain", interactive=False)

    def read(image, steps, scheduler, step, seed) -> tuple:
        """The inputs as the engine takes them: its steps are counted from 0."""
        steps, step = whole(steps, "steps"), whole(step, "step")
        if steps >= 1 and not 1 <= step <= steps:  # the page counts from 1 (fewer than 1 step: the engine says)
            raise ValueError(f"step must be from 1 to {steps} (the steps; 1 = the noisiest), got {step}")
        return given(image), steps, scheduler, step - 1, whole(seed, "seed")

    def check(*inputs):
        """Refuse bad inputs with a message before the run, leaving the last run's panels as they are."""
        with user_errors():
            engine.views.check_noise_row(*read(*inputs))

    def add_noise(image, steps, scheduler, step, seed):
        """An image's latents noised with the scheduler's add_noise to a step, decoded; and a row of steps."""
        with user_errors():
            result = engine.views.noise_row(*read(image, steps, scheduler, step, seed))
        index, timestep, sigma, picture = result.chosen
        gallery = [(pic, f"{i + 1}: σ {s:.2f}") for i, _, s, pic in result.row]
        text = (f"step {index + 1} · timestep {timestep:.1f} · sigma {sigma:.4f} · seed {result.seed}  \n"
                f"Input: {result.note}  \n{NOISED_NOTE}")
        return picture, text, gallery

    def follow(image, steps, scheduler, step, seed, shown):
        """Once an image has been noised, a new schedule or step noises it again, so that what is shown is what
        the controls say."""
        return add_noise(image, steps, scheduler, step, seed) if shown else (gr.skip(),) * 3

    placed = within_steps(steps, step, first=1, keep_place=True)
    inputs = [image, steps, scheduler, step, seed]
    options = {"concurrency_id": GENERATE, "concurrency_limit": concurrency}
    add.click(check, inputs, None, api_visibility="private").success(
        add_noise, inputs, [noised, about, row], api_name="add_noise", **options)
    # once per change: a new step count after the step is put at its place in it (not again for that move's own
    # change), a new sampler, a step the user moves
    following = {"inputs": [*inputs, about], "outputs": [noised, about, row], "api_visibility": "private",
                 "trigger_mode": "always_last", "show_progress": "hidden", **options}
    placed.then(follow, **following)
    gr.on([scheduler.change, step.input], follow, **following)
