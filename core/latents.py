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


def encode(bundle: ModelBundle, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] -> latents (B, 4, H/8, W/8) scaled as the UNet sees them.

    Takes the mean of the VAE's latent distribution, so the same image always gives the same latents.
    """
    vae = bundle.vae
    posterior = vae.encode((images * 2 - 1).to(bundle.device, vae.dtype)).latent_dist
    return posterior.mean * vae.config.scaling_factor


def from_pil(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image -> (1, 3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def channel_images(latents: torch.Tensor) -> list[tuple[Image.Image, float, float]]:
    """Each latent channel of (1, C, h, w) as a grayscale image stretched from its own min to max."""
    views = []
    for channel in latents[0].detach().float().cpu():  # (h, w)
        low, high = channel.min().item(), channel.max().item()
        gray = (channel - low) / max(high - low, 1e-8)
        views.append((Image.fromarray((gray.numpy() * 255).round().astype(np.uint8), mode="L"), low, high))
    return views


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two image batches in [0, 1]."""
    mse = ((a.float().cpu() - b.float().cpu()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)
