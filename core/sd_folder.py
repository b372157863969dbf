"""Stable Diffusion v1-structured models at any size, and the diffusers folders that hold them.

The structure is SD v1's: a CLIP text encoder with the real 49,408-token vocabulary, an AutoencoderKL with
4 latent channels, a UNet that reads the text through cross-attention, and LMS with SD's noise schedule.
A `Shape` gives the sizes: `TINY` takes milliseconds a step on a CPU (the tests' models), `SD_V1` is SD v1's
own (random weights, for timing), and the toy world's training builds its models from a shape of its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, LMSDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core.models import TOKENIZER_DIR
from core.schedule import SD_V1_SCHEDULE

LATENT_CHANNELS = 4      # SD v1's latents: (B, 4, H/8, W/8)
ATTENTION_HEAD_DIM = 8   # the UNet's attention heads (SD v1: 8)


@dataclass(frozen=True)
class Shape:
    """The sizes of an SD v1-structured model."""

    text_hidden: int             # CLIP text encoder width, and the UNet's cross-attention width (SD v1: 768)
    text_intermediate: int       # its MLP width (SD v1: 3072)
    text_layers: int             # (SD v1: 12)
    text_heads: int              # (SD v1: 12)
    vae_channels: tuple          # one per VAE block; each block after the first halves the side (SD v1: 4 blocks)
    vae_layers_per_block: int
    vae_norm_groups: int
    unet_channels: tuple         # one per UNet level
    unet_attention: tuple        # per level, down the UNet: whether it has cross-attention (SD v1: all but the last)
    unet_layers_per_block: int
    unet_norm_groups: int

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for SD v1)."""
        return 2 ** (len(self.vae_channels) - 1)


TINY = Shape(text_hidden=32, text_intermediate=64, text_layers=2, text_heads=4, vae_channels=(8, 16, 16, 16),
             vae_layers_per_block=1, vae_norm_groups=8, unet_channels=(32, 64), unet_attention=(False, True),
             unet_layers_per_block=1, unet_norm_groups=8)
SD_V1 = Shape(text_hidden=768, text_intermediate=3072, text_layers=12, text_heads=12,
              vae_channels=(128, 256, 512, 512), vae_layers_per_block=2, vae_norm_groups=32,
              unet_channels=(320, 640, 1280, 1280), unet_attention=(True, True, True, False),
              unet_layers_per_block=2, unet_norm_groups=32)


def make_text_encoder(shape: Shape, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=shape.text_hidden, intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def make_vae(shape: Shape, latent_size: int) -> AutoencoderKL:
    """A VAE for images of side `latent_size` x its scale factor."""
    n = len(shape.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=shape.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=shape.vae_layers_per_block, norm_num_groups=shape.vae_norm_groups,
        sample_size=latent_size * shape.vae_scale_factor)


def make_unet(shape: Shape, latent_size: int) -> UNet2DConditionModel:
    """A UNet for latents of side `latent_size`."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in shape.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(shape.unet_attention))
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=shape.unet_channels, layers_per_block=shape.unet_layers_per_block,
        down_block_types=down, up_block_types=up, cross_attention_dim=shape.text_hidden,
        attention_head_dim=ATTENTION_HEAD_DIM, norm_num_groups=shape.unet_norm_groups)


def sd_pipeline(*, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                unet: UNet2DConditionModel, scheduler: SchedulerMixin) -> StableDiffusionPipeline:
    """diffusers' text-to-image pipeline on these parts, without a safety checker (these models have none)."""
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_random_sd(folder: Path, shape: Shape = TINY, seed: int = 0, latent_size: int = 8) -> Path:
    """Write a model of this shape with random weights (seeded) to `folder` as a diffusers folder, and return
    the folder; its native image side is `latent_size` x the VAE's scale factor."""
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    text_encoder = make_text_encoder(shape, tokenizer)
    vae = make_vae(shape, latent_size)
    unet = make_unet(shape, latent_size)
    sd_pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                scheduler=LMSDiscreteScheduler(**SD_V1_SCHEDULE)).save_pretrained(folder)
    return folder
