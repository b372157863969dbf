"""Textual inversion on the toy world: learn one new token embedding for a colour the model was never told the name of.

Everything stays frozen (VAE, text encoder, UNet); only the vector of a new token, "<teal>", is optimised
so that captions containing it denoise images of teal shapes. The toy world's 11 colours do not include
teal, and the word "teal" never appeared in its captions, so "a teal circle" gives a random colour while
"a <teal> circle" gives a teal one.

    python -m core.toyworld.textual_inversion            # writes core/toyworld/model/embeddings/teal.safetensors
"""
from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from safetensors.torch import save_file

from core import text, vae
from core.models import TOY_DIR, load_toy
from core.toyworld.data import COLORS, TEMPLATES, draw, sample_scene
from core.toyworld.train import log

TOKEN = "<teal>"
TEAL = (20, 150, 150)
INITIALIZER = "blue"   # the vector starts as this word's embedding
OUT = TOY_DIR / "embeddings" / "teal.safetensors"


def teal_scenes(count: int, seed: int) -> list[tuple[torch.Tensor, str]]:
    """(image (3, 64, 64) in [0, 1], caption with TOKEN for the colour) pairs of teal shapes."""
    rng = random.Random(seed)
    palette = {**COLORS, "teal": TEAL}
    pairs = []
    for _ in range(count):
        scene = replace(sample_scene(rng), color="teal")
        fields = {"size": scene.size, "color": TOKEN, "shape": scene.shape, "background": scene.background}
        pairs.append((vae.from_pil(draw(scene, palette))[0], rng.choice(TEMPLATES).format(**fields)))
    return pairs


def train(steps: int = 400, batch: int = 16, lr: float = 5e-3, seed: int = 0) -> torch.Tensor:
    """The learned vector, (1, hidden)."""
    torch.manual_seed(seed)
    bundle = load_toy(device="cpu", dtype="float32")
    for part in (bundle.vae, bundle.text_encoder, bundle.unet):
        part.requires_grad_(False)
    pairs = teal_scenes(64, seed)
    with torch.no_grad():
        clean = vae.encode(bundle, torch.stack([image for image, _ in pairs]))  # (64, 4, h, w)
    noise_schedule = DDPMScheduler.from_config(bundle.scheduler_config)
    start = text.token_embeddings(bundle, torch.tensor([[text.token_id(bundle, INITIALIZER)]]))[0]  # (1, hidden)
    vector = start.detach().clone().requires_grad_()
    optimizer = torch.optim.Adam([vector], lr=lr)
    started = time.time()
    for step in range(steps):
        picks = torch.randint(len(pairs), (batch,))
        conditions = torch.cat([
            text.encode_embeddings(bundle, text.with_learned(bundle, tokens, {TOKEN: vector}))
            for tokens in (text.tokenize(bundle, pairs[i][1], {TOKEN: vector}) for i in picks.tolist())
        ])                                                                          # (batch, 77, hidden)
        noise = torch.randn_like(clean[picks])
        timesteps = torch.randint(noise_schedule.config.num_train_timesteps, (batch,))
        noisy = noise_schedule.add_noise(clean[picks], noise, timesteps)
        loss = torch.nn.functional.mse_loss(bundle.unet(noisy, timesteps, encoder_hidden_states=conditions).sample,
                                            noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"textual inversion: step {step + 1}/{steps}, loss {loss.item():.4f}, {time.time() - started:.0f} s")
    return vector.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    vector = train(args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({TOKEN: vector[0].contiguous()}, args.out)  # diffusers' learned_embeds format: {token: (hidden,)}
    log(f"saved {args.out}")


if __name__ == "__main__":
    main()
