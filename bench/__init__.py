"""Measurements of the engine: speed (`python -m bench`), the app under load (`bench.soak`), and each tab's
engine calls checked on a device (`bench.tabs`)."""
from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline

from core.sd_folder import sd_pipeline


def pipeline_of(bundle) -> StableDiffusionPipeline:
    """diffusers' pipeline on the very same parts, with stock LMS: the reference our loop is held against."""
    pipe = sd_pipeline(vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer,
                       unet=bundle.unet, scheduler=LMSDiscreteScheduler.from_config(bundle.scheduler_config))
    pipe.set_progress_bar_config(disable=True)  # our loop draws none either
    return pipe
