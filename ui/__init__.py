"""The Gradio app: one module per tab, each exposing `build(...)`; nothing here touches tensors."""
from __future__ import annotations

from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from core.engine import Engine
from ui import attention, compare, guided, img2img, schedule, send, text_lab, txt2img, vae
from ui.code_panel import Writers
from ui.common import on_zero_gpu
from ui.stops import StopFlags
from ui.upkeep import Upkeep

TITLE = "SD Lens: look inside Stable Diffusion"
NOTEBOOK = ("Grown out of the [Stable Diffusion Deep Dive]"
            "(https://github.com/fastai/diffusion-nbs/blob/master/Stable%20Diffusion%20Deep%20Dive.ipynb) notebook "
            "(fastai, Jonathan Whitaker), which the notes under the controls call \"the notebook\".")
# !important: gradio repeats every rule scoped under its container, which outranks a body-level class.
# Images whose rows are named (.below-label) start under the panel's label, not behind it.
# Galleries: captions under the thumbnails and the download button above them, not over them; the history and
# the strips and grids (columns-N) keep their thumbnails small, as many to a row however few there are (gradio
# would widen two to half the row each and crop them to the gallery's height); the history has three lines of
# each caption, and frames none once clicked: a click reopens a run, and a frame left behind would sit on
# another as new runs come in.
CSS = """
.gradio-container { --block-info-text-color: var(--neutral-600); --block-info-text-size: var(--text-md); }
.dark .gradio-container { --block-info-text-color: var(--neutral-300); }
.pixels img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
body.smooth-upscale .pixels img { image-rendering: auto !important; }
.below-label img { padding-top: 2rem; box-sizing: border-box; }
.pixels .grid-container { padding-top: 2.25rem; }
.pixels .thumbnail-item { display: flex; flex-direction: column; }
.pixels .thumbnail-item img { min-height: 0; flex: 1; }
.pixels .caption-label { position: static; transform: none; max-width: 100%; margin: 2px auto 0;
                         font-size: var(--text-md); background: none; color: var(--body-text-color); box-shadow: none; }
#attention-grid .caption-label { white-space: normal; overflow-wrap: anywhere; text-align: center; }
#history .caption-label { font-size: var(--text-sm); white-space: normal; overflow-wrap: anywhere; text-align: center;
                          display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden;
                          line-height: 1.3; padding-top: 0; padding-bottom: 0; }
#history .grid-container { grid-template-columns: repeat(10, minmax(0, 1fr)) !important; }
.all-rows .grid-wrap { height: auto !important; min-height: 0 !important; max-height: none !important;
                       overflow: visible !important; }
.all-rows .gallery-container { height: auto !important; }
.columns-3 .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important; }
.columns-4 .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
.columns-5 .grid-container { grid-template-columns: repeat(5, minmax(0, 1fr)) !important; }
.columns-6 .grid-container { grid-template-columns: repeat(6, minmax(0, 1fr)) !important; }
#history .thumbnail-item { aspect-ratio: 3 / 4; }
#history .thumbnail-item.selected:not(:hover) { --ring-color: transparent; border-color: var(--border-color-primary); }
"""
# Runs in the browser: the upscaling choice is a page style, no round trip to the server.
UPSCALE_JS = "(choice) => { document.body.classList.toggle('smooth-upscale', choice === 'smooth'); return []; }"


def build_app(engine: Engine, concurrency: int = 1, notice: str | None = None,
              upkeep: Upkeep | None = None) -> gr.Blocks:
    """The whole page for one loaded model; `concurrency` generations run at once, across all tabs.
    `notice` says why the model is not the one first asked for. `upkeep` expires its files (by default those
    in gradio's temp folder, after an hour) and refuses runs while their disk is nearly full."""
    upkeep = upkeep or Upkeep(Path(get_upload_folder()))
    stops = StopFlags(admit=upkeep.check_space)
    with gr.Blocks(title=TITLE, delete_cache=upkeep.delete_cache) as demo:
        writers = Writers()
        with gr.Row(equal_height=True):
            gr.Markdown(f"# {TITLE}\n**Model:** {engine.describe()}  \n{NOTEBOOK}", elem_id="model-info")
            upscale = gr.Radio(["nearest", "smooth"], value="nearest", label="Show small images scaled up with",
                               elem_id="upscale", scale=0, min_width=260)
        if notice:
            gr.Markdown(f"⚠️ {notice}", elem_id="model-notice")
        upscale.change(None, upscale, None, js=UPSCALE_JS)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Text to image", id="txt2img", elem_id="tab-txt2img"):
                from_text = txt2img.build(engine, stops, concurrency, writers)
            with gr.Tab("Image to image", id="img2img", elem_id="tab-img2img"):
                from_image = img2img.build(engine, stops, concurrency, writers)
            with gr.Tab("VAE", id="vae", elem_id="tab-vae"):
                vae_image = vae.build(engine, concurrency)
            with gr.Tab("Noise schedule", id="schedule", elem_id="tab-schedule"):
                schedule.build(engine, concurrency)
            with gr.Tab("Text", id="text", elem_id="tab-text"):
                learned, text_tabs = text_lab.build(engine, stops, concurrency, writers)
            with gr.Tab("Guidance", id="guided", elem_id="tab-guided"):
                from_guidance = guided.build(engine, stops, concurrency, writers)
            with gr.Tab("Attention", id="attention", elem_id="tab-attention"):
                attention.build(engine, stops, concurrency, writers)
            with gr.Tab("Inside a step", id="compare", elem_id="tab-compare"):
                compare_tabs = compare.build(engine, stops, concurrency, writers)
        send.wire(tabs, [from_text, from_image, from_guidance], from_image, vae_image)
        writers.wire(demo, learned, tabs, {"text": text_tabs, "compare": compare_tabs})
    on_zero_gpu(demo)
    return demo
