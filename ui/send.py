"""Send to: a result goes on to another tab as its input, with the prompt, seed and settings it was made with
(AUTOMATIC1111's send-to buttons), and that tab opens."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ui.common import user_errors
from ui.run_view import Controls, RunView

CARRIED = ("steps", "guidance_scale", "seed", "preview_every", "previews", "scheduler")  # every tab has these


@dataclass(frozen=True)
class Prompted:
    """A generating tab's prompt, settings and panels; `image` is its input image where it takes one."""

    view: RunView
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    controls: Controls
    image: gr.Image | None = None


def wire(tabs: gr.Tabs, sources: list[Prompted], img2img: Prompted, vae_image: gr.Image) -> None:
    """Each source's "Send to image to image" and "Send to VAE" buttons."""
    targets = [img2img.image, img2img.prompt, img2img.negative_prompt,
               *(getattr(img2img.controls, name) for name in CARRIED), tabs]

    def to_img2img(result, last_run, prompt, negative_prompt, *settings):
        """The result as image to image's input, with the prompt and the settings it was made with (the seed
        the run used, when it drew one)."""
        seed = last_run[0] if last_run else settings[CARRIED.index("seed")]
        settings = [seed if name == "seed" else value for name, value in zip(CARRIED, settings)]
        return result, prompt, negative_prompt, *settings, gr.Tabs(selected="img2img")

    def to_vae(result):
        """The result as the VAE tab's input."""
        return result, gr.Tabs(selected="vae")

    for source in sources:
        view = source.view
        inputs = [view.result, view.history, source.prompt, source.negative_prompt,
                  *(getattr(source.controls, name) for name in CARRIED)]
        # checked first, through the queue, whose errors the page shows as a message: a send refused there
        # leaves the other tab's inputs as they are
        view.send_img2img.click(check_result, view.result, None, api_visibility="private").success(
            to_img2img, inputs, targets, api_visibility="private", queue=False)
        view.send_vae.click(check_result, view.result, None, api_visibility="private").success(
            to_vae, view.result, [vae_image, tabs], api_visibility="private", queue=False)


def check_result(result) -> None:
    """Refuse to send before there is a result."""
    if result is None:
        with user_errors():
            raise ValueError("There is no result to send yet: press Generate first")
