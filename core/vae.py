"""Between pixels and latents: VAE encoding and decoding, the fast preview decoder, conversion to PIL."""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:  # annotations only: core.models imports core.defaults, which imports the sampler
    from core.models import ModelBundle

PREVIEW_FIT_IMAGES = 16    # synthetic images decoded once per model to fit the fast preview decoder, and as many to judge it
PREVIEW_FIT_SEED = 0       # seeds the images the linear map is fitted on
PREVIEW_CHECK_SEED = 1     # seeds the held-out images it is judged on
PREVIEW_SIDE = 8           # latent cells per side of those images: cheap even for SD's VAE
# Fast previews use the linear map only where it explains at least this share of the variance of the VAE's colour
# of each latent cell on the held-out images; elsewhere they are VAE decodes. The toy model's map explains 0.93 there
# and comes within 20.6 dB of its VAE's decode on a run; the previous toy model's (8x8 latents) explained 0.87, yet
# painted a white ground pink (13-15 dB); the tiny random test model's explains 0.02.
LINEAR_PREVIEW_MIN_R2 = 0.9
_preview_maps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # VAE -> PreviewMap
_preview_lock = threading.Lock()


@dataclass(frozen=True)
class PreviewMap:
    """A linear map from a latent cell to the colour the VAE decodes there, and how well it does that."""

    weight: torch.Tensor           # (3, C)
    bias: torch.Tensor             # (3,)
    r2: float                      # share of the VAE's per-cell colour variance it explains on held-out images

    @property
    def good(self) -> bool:
        """Whether fast previews may use it instead of the VAE."""
        return self.r2 >= LINEAR_PREVIEW_MIN_R2


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


@torch.no_grad()
def image_latents(bundle: ModelBundle, image: Image.Image) -> torch.Tensor:
    """A PIL image's latents, scaled by the VAE's scaling factor: (1, 4, H/8, W/8)."""
    return encode(bundle, from_pil(image))


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


@torch.no_grad()
def preview_map(bundle: ModelBundle) -> PreviewMap:
    """The linear map latents -> RGB (a 3 x C matrix and a bias) that best fits this model's VAE decoder, by
    least squares over a few decoded images, each averaged over the pixels of every latent cell, with its R^2
    on as many held-out images. Fitted the first time it is asked for (when the engine loads the model) and kept
    while the VAE lives."""
    vae = bundle.vae
    with _preview_lock:
        if vae not in _preview_maps:
            _preview_maps[vae] = _fit_preview_map(bundle)
        return _preview_maps[vae]


def _probe(bundle: ModelBundle, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic images encoded, and the VAE's colour of each latent cell: latents (N, C, 8, 8), colours
    (N, 3, 8, 8)."""
    factor = bundle.vae_scale_factor
    generator = torch.Generator().manual_seed(seed)
    size = (PREVIEW_SIDE * factor,) * 2
    pictures = torch.cat([  # smooth fields of colour, and blocks of flat colour with hard edges
        F.interpolate(torch.rand(PREVIEW_FIT_IMAGES // 2, 3, 3, 3, generator=generator), size=size,
                      mode="bilinear", align_corners=True),
        F.interpolate(torch.rand(PREVIEW_FIT_IMAGES // 2, 3, 4, 4, generator=generator), size=size, mode="nearest"),
    ])
    codes = encode(bundle, pictures).float()                      # (N, C, 8, 8)
    decoded = decode(bundle, codes.to(bundle.dtype)).float().cpu()  # (N, 3, 64, 64) for SD's factor 8
    return codes.cpu(), F.avg_pool2d(decoded, factor)             # (N, 3, 8, 8): each latent cell's colour


def _fit_preview_map(bundle: ModelBundle) -> PreviewMap:
    codes, cells = _probe(bundle, PREVIEW_FIT_SEED)
    x = codes.permute(0, 2, 3, 1).reshape(-1, codes.shape[1])                         # (N*64, C)
    x = torch.cat([x, torch.ones(len(x), 1)], 1)                                      # (N*64, C + 1)
    y = cells.permute(0, 2, 3, 1).reshape(-1, 3)                                      # (N*64, 3)
    solution = torch.linalg.lstsq(x, y).solution                                      # (C + 1, 3)
    weight, bias = solution[:-1].T.contiguous(), solution[-1].contiguous()
    codes, cells = _probe(bundle, PREVIEW_CHECK_SEED)
    predicted = _linear(weight, bias, codes)                                          # (N, 3, 8, 8)
    spread = (cells - cells.mean((0, 2, 3), keepdim=True)).pow(2).mean()
    r2 = 1 - ((predicted - cells).pow(2).mean() / spread).item()
    return PreviewMap(weight, bias, r2)


def _linear(weight: torch.Tensor, bias: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    rgb = torch.einsum("oc,bchw->bohw", weight.to(latents), latents) + bias.to(latents)[None, :, None, None]
    return rgb.clamp(0, 1)


def linear_preview(bundle: ModelBundle, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) -> images (B, 3, h, w) in [0, 1] through the fitted linear map: one pixel per
    latent cell, at almost no cost."""
    fitted = preview_map(bundle)
    return _linear(fitted.weight, fitted.bias, latents)


def fast_decode(bundle: ModelBundle, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) -> preview images in [0, 1]: the linear map's (B, 3, h, w), one pixel per latent cell
    (the page scales it up), where the map fits this VAE (`PreviewMap.good`); else the VAE's (B, 3, H, W), as a
    map that explains little of the VAE's colours shows little but wrong ones."""
    if preview_map(bundle).good:
        return linear_preview(bundle, latents)
    return decode(bundle, latents)
