"""Fast previews against the VAE: the fitted linear map is used only on models where it fits the VAE, judged on
held-out images (the toy model's); elsewhere (the tiny random one) fast previews are VAE decodes."""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

import core.sampler
from core import vae
from core.sampler import Settings, sample
from tests.conftest import as_the_app_runs
from tests.test_sampler import conditioning

MIN_PREVIEW_PSNR = 20.0  # dB from the VAE's decode
FIT_TOLERANCE = 1e-3


def upscaled(image, side: int) -> torch.Tensor:
    """A preview image -> (1, 3, side, side) in [0, 1], nearest-neighbour, as the page scales it up."""
    return F.interpolate(vae.from_pil(image), size=(side, side), mode="nearest")


def test_fast_previews_of_a_toy_run_are_the_linear_map_and_close_to_the_vae(toy_engine):
    """On the toy's 16x16 latents the map fits its VAE (R^2 0.93 on held-out images), so fast previews are one
    pixel a latent cell, near the VAE's decode of the same x0."""
    bundle = toy_engine.bundle
    settings = replace(toy_engine.default_settings(), steps=6, seed=3, preview_every=1, previews="fast")
    frames = list(toy_engine.txt2img("a red circle on a white background", "", settings).frames)
    x0 = torch.cat([f.x0 for f in frames])                                             # (6, 4, 16, 16)
    with torch.no_grad():
        decoded = vae.decode(bundle, x0)                                             # (6, 3, 64, 64)
    shown = torch.cat([upscaled(f.x0_image, 64) for f in frames])                      # (6, 3, 64, 64)
    assert vae.preview_map(bundle).good and frames[0].x0_image.size == (16, 16)
    assert vae.psnr(shown, decoded) >= MIN_PREVIEW_PSNR  # 20.6 when measured


def test_the_map_is_fitted_deterministically_and_judged_on_held_out_images(tiny_bundle):
    first, again = vae._fit_preview_map(tiny_bundle), vae._fit_preview_map(tiny_bundle)
    # the same seeded images; the VAE's float sums may round differently from call to call (1e-4 seen)
    torch.testing.assert_close(again.weight, first.weight, atol=FIT_TOLERANCE, rtol=0)
    torch.testing.assert_close(again.bias, first.bias, atol=FIT_TOLERANCE, rtol=0)
    assert abs(again.r2 - first.r2) < FIT_TOLERANCE
    assert first.weight.shape == (3, 4) and first.bias.shape == (3,)
    assert first.r2 < vae.LINEAR_PREVIEW_MIN_R2  # a random VAE: no linear map explains its colours


def test_fast_decode_is_the_vae_where_the_map_is_poor_and_the_map_where_it_is_good(tiny_bundle, monkeypatch):
    codes = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast, decoded = vae.fast_decode(tiny_bundle, codes), vae.decode(tiny_bundle, codes)
    assert fast.shape == (2, 3, 64, 64) and torch.equal(fast, decoded)
    monkeypatch.setattr(vae, "LINEAR_PREVIEW_MIN_R2", -math.inf)  # as if the map fitted this VAE
    fast = vae.fast_decode(tiny_bundle, codes)
    assert fast.shape == (2, 3, 8, 8) and torch.equal(fast, vae.linear_preview(tiny_bundle, codes))
    assert 0 <= fast.min() and fast.max() <= 1
    frames = list(sample(tiny_bundle, conditioning(tiny_bundle), Settings(steps=2, height=64, width=64,
                                                                          previews="fast")))
    assert frames[0].x0_image.size == (8, 8) and frames[-1].image.size == (64, 64)


def test_the_previews_never_change_the_final_image(toy_engine, monkeypatch):
    """The finished image is decoded on its own, however the run previews: batched with a preview step's x_t and
    x0, the VAE's sums differ in their last bits, and at this seed (in the app's threads) one pixel moved by one
    grey level."""
    batches = []

    def decode(bundle, latents):
        batches.append(len(latents))
        return vae.decode(bundle, latents)

    monkeypatch.setattr(core.sampler, "decode", decode)
    settings = replace(toy_engine.default_settings(), steps=20, seed=384766244)
    with as_the_app_runs():
        images = [list(toy_engine.txt2img("a red circle on a white background", "",
                                          replace(settings, preview_every=every, previews=previews)).frames)[-1].image
                  for every, previews in ((0, "auto"), (1, "full"), (1, "fast"), (3, "full"))]
    assert all(image.tobytes() == images[0].tobytes() for image in images[1:])
    assert batches.count(1) == 4 and set(batches) == {1, 2}  # each run's final latents alone; previews in pairs
