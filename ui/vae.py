"""The "VAE" tab: an image to 4 latent channels and back, what is lost, and what each channel carries."""
from __future__ import annotations

import gradio as gr

from core.engine import Engine
from core.views import MAX_CHANNEL_SCALE
from ui.common import EXAMPLE_IMAGES, GENERATE, Dropdown, ImageFile, Slider, given, number, user_errors
from ui.run_view import PANEL, image_panel

NO_EDIT = "none"


def build(engine: Engine, concurrency: int) -> gr.Image:
    """The tab; returns its input image (results of other tabs are sent there)."""
    channels = [NO_EDIT, *map(str, range(engine.bundle.latent_channels))]
    with gr.Row():
        with gr.Column(scale=2):
            image = ImageFile(label="Image", type="filepath", sources=["upload", "clipboard"], elem_classes="pixels",
                              height=PANEL // 2, elem_id="vae-input", value=str(EXAMPLE_IMAGES[0]))
            gr.Examples([[str(path)] for path in EXAMPLE_IMAGES], [image])
            with gr.Row():
                channel = Dropdown(channels, value=NO_EDIT, label="Decode again with channel ...",
                                   info="to see what one channel carries")
                scale = Slider(-MAX_CHANNEL_SCALE, MAX_CHANNEL_SCALE, value=0, step=0.25, interactive=False,
                               label="... multiplied by", info="0 removes the channel")
            run = gr.Button("Encode and decode", variant="primary")
        with gr.Column(scale=3):
            with gr.Row():
                fitted = image_panel("Input, as the VAE takes it", "vae-fitted")
                reconstruction = image_panel("Decoded again: the reconstruction", "vae-reconstruction")
            about = gr.Markdown("Press Encode and decode.", elem_id="vae-about", label="About the round trip")
            latent_channels = gr.Gallery(label="Latent channels, each stretched from its min to its max (below it)",
                                         columns=engine.bundle.latent_channels, height=PANEL // 2 + 60, format="png",
                                         elem_classes="pixels", elem_id="vae-channels", object_fit="contain",
                                         interactive=False)
            with gr.Row():
                difference = image_panel("Difference |input - reconstruction|, x4", "vae-difference")
                edited = image_panel("Decoded with the channel changed", "vae-edited")

    def read(image, channel, scale) -> tuple:
        return given(image), None if channel == NO_EDIT else int(channel), number(scale, "scale")

    def vae(image, channel, scale):
        """Encode an image to latents and decode it back: its channels, the reconstruction, the error."""
        with user_errors():
            view = engine.views.vae_view(*read(image, channel, scale))
        gallery = [(picture, f"ch {i}: {low:.2f} … {high:.2f}")
                   for i, (picture, low, high) in enumerate(view.channels)]
        text = f"**{view.compression}** · PSNR {view.psnr:.2f} dB  \nInput: {view.note}"
        if view.edited is not None:
            text += f"  \nBottom right: decoded with channel {channel} multiplied by {number(scale, 'scale'):g}"
        return view.image, view.reconstruction, text, gallery, view.difference, view.edited

    def check(image, channel, scale):
        """Refuse bad inputs with a message before the run, leaving the last run's panels as they are."""
        with user_errors():
            image, channel, scale = read(image, channel, scale)
            engine.fit_image(image)
            engine.views.check_channel_edit(channel, scale)

    channel.change(lambda chosen: gr.update(interactive=chosen != NO_EDIT), channel, scale,  # no channel: no factor
                   api_visibility="private", queue=False, show_progress="hidden")
    # a new channel or multiplier decodes again at once, as the button does (a slider dragged: once, at its last value)
    checked = gr.on([run.click, channel.change, scale.change], check, [image, channel, scale], None,
                    api_visibility="private", trigger_mode="always_last")
    checked.success(vae, [image, channel, scale], [fitted, reconstruction, about, latent_channels, difference, edited],
                    api_name="vae", concurrency_id=GENERATE, concurrency_limit=concurrency, trigger_mode="always_last")
    return image
