"""Between pixels and latents: VAE decoding and conversion of image batches to PIL."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from core.models import ModelBundle


def decode(bundle: ModelBundle, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, 4, h, w), scaled as the UNet sees them -> images (B, 3, h*8, w*8) in [0, 1].

    Runs under the caller's grad mode, so loss guidance can differentiate through it.
    """
    vae = bundle.vae
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample  # (B, 3, H, W) in [-1, 1]
    return (images / 2 + 0.5).clamp(0, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images (B, 3, H, W) in [0, 1] -> PIL RGB images."""
    array = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    return [Image.fromarray(a) for a in (array * 255).round().astype(np.uint8)]
