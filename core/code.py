"""Show the code: a run written out as a self-contained Python script that reproduces it.

The script uses diffusers, transformers and torch directly, in the style of the Stable Diffusion Deep Dive
notebook, and never imports this project, so that a learner can paste it into a notebook and change it.
It does what the sampling loop (`core.sampler`) does for that run, in the same order and the same dtype, so
its image is the app's. `python script.py OUT.png` writes the image; a second path also saves the final
latents.

A script is assembled from blocks: the header and settings, loading the model, encoding the prompts (with a
token edit, learned embeddings or a prompt mix where the run had one), the loop (with loss guidance or an
image-to-image start), and the ending that decodes and saves.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch

from core import text
from core.attention import Layers
from core.compare import NO_BRANCHES
from core.guidance import Guidance
from core.models import ModelBundle
from core.sampler import Settings
from core.schedule import LMS_MAX_ORDER, OVERRIDES

REPOSITORY = Path(__file__).resolve().parents[1]
SCHEDULER_CLASSES = {"lms": "LMSDiscreteScheduler", "euler": "EulerDiscreteScheduler", "ddim": "DDIMScheduler",
                     "dpm++": "DPMSolverMultistepScheduler"}


class Unscriptable(ValueError):
    """A run the app makes but cannot write as a script (the optimiser sampler): the run itself is fine."""
LOSSES = {  # core.guidance's losses, as the script writes them (images: (1, 3, H, W) in [0, 1])
    "blue": ("The notebook's blue loss: how far the blue channel is from 0.9, on average",
             "return (images[:, 2] - 0.9).abs().mean()"),
    "color": ("How far every pixel is from the target colour, on average",
              "return (images - images.new_tensor({color})[None, :, None, None]).abs().mean()"),
    "brightness": ("How far the mean luminance (Rec. 601) is from the target level",
                   "return (luminance(images).mean() - {level}).abs()"),
    "saturation": ("How far the mean saturation (max - min of the channels) is from the target level",
                   "return (images.amax(1) - images.amin(1)).mean().sub({level}).abs()"),
    "contrast": ("How far the luminance's standard deviation is from half the target level",
                 "return (luminance(images).std() - {level} / 2).abs()"),
}
LUMINANCE = '''

def luminance(images):
    r, g, b = images.unbind(1)
    return 0.299 * r + 0.587 * g + 0.114 * b
'''
STAND_INS = ("puppy", "kitten", "banana", "violin", "rocket")  # one-token words a learned token is written as


@dataclass(frozen=True)
class Edit:
    """The token at `position` given a weighted sum of embeddings: (token id or learned token, weight) parts."""

    position: int
    parts: tuple[tuple[int | str, float], ...]
    about: str                     # what the edit is, in words: "red -> 1 x blue"


@dataclass(frozen=True)
class Comparison:
    """The run once per entry, side by side: what varies, and each entry's value of it."""

    kind: str                      # one of COMPARED
    entries: tuple                 # guidance scales, (sampler, steps) pairs, or seeds


class Compared(NamedTuple):
    """How a script writes one kind of comparison."""

    entries: str                   # the name of its list of entries
    each: str                      # the loop's variables: the settings each run rebinds
    what: str                      # what an entry is, in words
    caption: str                   # an f-string naming a run
    reader: str                    # the function that reads the rebound settings


COMPARED = {
    "scales": Compared("guidance_scales", "guidance_scale", "guidance scale", "guidance scale {guidance_scale}",
                       "predict_noise"),
    "samplers": Compared("samplers", "sampler, num_inference_steps", "sampler with its steps",
                         "{sampler}:{num_inference_steps}", "make_scheduler"),
    "seeds": Compared("seeds", "seed", "seed", "seed {seed}", "seed_noise"),
}


@dataclass(frozen=True)
class Recipe:
    """Everything a script needs to know about one run."""

    title: str                     # "Text to image"
    prompt: str
    negative_prompt: str
    settings: Settings
    edit: Edit | None = None                    # swap or mix one token's embedding (two runs, side by side)
    learned: dict[str, torch.Tensor] = field(default_factory=dict)  # learned tokens the prompts use: (n, hidden)
    mix: tuple[str, float] | None = None        # (prompt B, factor): factor x A + (1 - factor) x B
    guidance: Guidance | None = None            # loss guidance
    image: str | None = None                    # image to image: the image's path ...
    strength: float | None = None               # ... and the strength
    lms_order: str = "run"                      # ... and how LMS counts its order (core.schedule.LMS_ORDERS)
    comparison: Comparison | None = None        # the run once per entry of a comparison
    attention: tuple[str, ...] = ()             # cross-attention layers whose maps are recorded (processor keys)
    parts: bool = False                         # the step where the UNet's two predictions differ most, taken apart

    def samplers(self) -> list[str]:
        """The samplers the script uses: the run's, or each one compared."""
        if self.comparison and self.comparison.kind == "samplers":
            return list(dict.fromkeys(name for name, _ in self.comparison.entries))
        return [self.settings.scheduler]


def script(bundle: ModelBundle, recipe: Recipe) -> str:
    """The run as a script: runnable as it is, and readable from top to bottom."""
    for sampler in recipe.samplers():
        if sampler not in SCHEDULER_CLASSES:
            raise Unscriptable(f"the code is written for the samplers {', '.join(SCHEDULER_CLASSES)}; "
                             f"{sampler!r} is this app's own")
    blocks = [_header(bundle, recipe), _settings(recipe), _load(recipe), _encoding(recipe)]
    if recipe.guidance:
        blocks.append(_guidance(recipe.guidance))
    if recipe.attention:
        blocks.append(_attention_taps(recipe))
    blocks += [_start(recipe), _loop(recipe), _ending(recipe)]
    if recipe.attention:
        blocks.append(ATTENTION_ENDING)
    if recipe.parts:
        blocks.append(_parts_ending(recipe))
    return re.sub(r"\n{4,}", "\n\n\n", "\n".join(blocks))  # two blank lines between definitions, as PEP 8 has it


def _in_repository(source: str) -> str | None:
    """A model folder that ships with SD Lens (the toy world), named as a reader finds it in the repository."""
    folder = Path(source)
    if folder.is_absolute() and folder.is_relative_to(REPOSITORY):
        return f"{folder.relative_to(REPOSITORY).as_posix()} in the SD Lens repository"
    return None


def _header(bundle: ModelBundle, recipe: Recipe) -> str:
    imports = ["import sys"] + (["import re"] if recipe.learned else [])
    if recipe.attention or recipe.parts:
        imports += ["from pathlib import Path"]
    scheduler = ", ".join(SCHEDULER_CLASSES[name] for name in recipe.samplers())
    pil = "Image, ImageOps" if recipe.image is not None else "Image"
    shipped = _in_repository(bundle.source)
    return f'''"""{recipe.title} with {shipped or bundle.source}, as SD Lens ran it.

    python this_script.py OUT.png               # writes the image
    python this_script.py OUT.png LATENTS.pt    # and saves the final latents
"""
{chr(10).join(imports)}

import numpy as np
import torch
{"import torch.nn.functional as F" + chr(10) if recipe.attention else ""}from diffusers import AutoencoderKL, {scheduler}, UNet2DConditionModel
from PIL import {pil}
from transformers import CLIPTextModel, CLIPTokenizer

# The model, and where it runs
model = {bundle.source!r}{f"  # {shipped}: point this at your copy" if shipped else ""}
device, dtype = {bundle.device.type!r}, {bundle.dtype}
'''


def _settings(recipe: Recipe) -> str:
    s = recipe.settings
    lines = ["# The run's settings", f"prompt = {recipe.prompt!r}"]
    if recipe.mix:
        lines += [f"prompt_b = {recipe.mix[0]!r}", f"mix_factor = {recipe.mix[1]!r}  # f x prompt + (1 - f) x prompt_b"]
    lines += [f"negative_prompt = {recipe.negative_prompt!r}"]
    if recipe.image is not None:
        where = (f"{Path(recipe.image).relative_to(REPOSITORY).as_posix()} in the SD Lens repository"
                 if Path(recipe.image).is_relative_to(REPOSITORY) else
                 "the app's copy of the image, kept while its cache lasts: point this at your own copy")
        lines += [f"image_path = {recipe.image!r}  # {where}", f"strength = {recipe.strength!r}"]
    else:
        lines += [f"height, width = {s.height}, {s.width}"]
    varied = COMPARED[recipe.comparison.kind].each.split(", ") if recipe.comparison else []  # the loop sets them
    lines += [f"{name} = {value!r}" for name, value in (("num_inference_steps", s.steps),
                                                        ("guidance_scale", s.guidance_scale), ("seed", s.seed))
              if name not in varied]
    if recipe.guidance:
        g = recipe.guidance
        lines += [f"loss_scale = {g.scale!r}", f"loss_every = {g.every}  # guide steps {g.start}, {g.start + g.every}, "
                  f"{g.start + 2 * g.every}, ..."]
        lines += [f"loss_start = {g.start}  # the steps before it run unguided (the notebook: 0)"] if g.start else []
        lines += [f"loss_gradient = {g.mode!r}  # cheap: through the VAE only; accurate: through the UNet too"]
    if recipe.edit:
        lines += [f"position = {recipe.edit.position}  # {recipe.edit.about}",
                  f"parts = [{', '.join(f'({part!r}, {weight!r})' for part, weight in recipe.edit.parts)}]"
                  "  # (token id or learned token, weight)"]
    if recipe.comparison:
        compared = COMPARED[recipe.comparison.kind]
        lines += [f"# The comparison: the run once per {compared.what}, side by side",
                  f"{compared.entries} = {list(recipe.comparison.entries)!r}"]
    if recipe.learned:
        lines += ["# learned embeddings (textual inversion), as loaded in the app: {token: (vectors, hidden)}",
                  "learned = {", *(f"    {name!r}: {_tensor(vectors)}," for name, vectors in recipe.learned.items()), "}"]
    return "\n".join(lines) + "\n"


def _tensor(vectors: torch.Tensor) -> str:
    """A (n, hidden) tensor as a `torch.tensor([...])` literal that gives back its exact float32 values."""
    rows = [textwrap.fill(", ".join(repr(v) for v in row), 108, initial_indent=" " * 12, subsequent_indent=" " * 12)
            for row in vectors.float().tolist()]
    return "torch.tensor([\n" + "\n".join(f"        [\n{row}\n        ]," for row in rows) + "\n    ])"


def _make_scheduler(recipe: Recipe) -> str:
    """`make_scheduler`: of the run's sampler, or of the one the comparison's loop has set."""
    if not (recipe.comparison and recipe.comparison.kind == "samplers"):
        scheduler = SCHEDULER_CLASSES[recipe.settings.scheduler]
        overrides = "".join(f", {k}={v!r}" for k, v in OVERRIDES.get(recipe.settings.scheduler, {}).items())
        return f'''

def make_scheduler():
    """A fresh scheduler for one run (schedulers keep per-run state), set for the run's steps."""
    scheduler = {scheduler}.from_pretrained(model, subfolder="scheduler"{overrides})
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler
'''
    classes = ", ".join(f"{name!r}: {SCHEDULER_CLASSES[name]}" for name in recipe.samplers())
    overrides = {name: OVERRIDES[name] for name in recipe.samplers() if name in OVERRIDES}
    return f'''
samplers_by_name = {{{classes}}}
overrides = {overrides!r}  # where a sampler departs from the model's scheduler config


def make_scheduler():
    """A fresh scheduler of the sampler being compared (schedulers keep per-run state), set for its steps."""
    scheduler = samplers_by_name[sampler].from_pretrained(model, subfolder="scheduler", **overrides.get(sampler, {{}}))
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler
'''


def _load(recipe: Recipe) -> str:
    return '''# Load the parts of Stable Diffusion: CLIP's tokenizer and text encoder, the VAE and the UNet
tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", torch_dtype=dtype).to(device)
vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype).to(device)
unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype).to(device)
for part in (text_encoder, vae, unet):
    part.requires_grad_(False)  # inference: no gradients for the weights
''' + _make_scheduler(recipe)


TOKEN_IDS = '''

def token_ids(text):
    """The prompt as the text encoder reads it: start token, tokens, end token, padding to 77."""
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)
'''
ENCODE = '''

@torch.no_grad()
def encode(text):
    """CLIP's last hidden state for a prompt: (1, 77, hidden)."""
    return text_encoder(token_ids(text))[0]
'''
ENCODE_EMBEDDINGS = '''

@torch.no_grad()
def encode_embeddings(token_embeds):
    """The text encoder after its token lookup: add the position embeddings, run the layers with CLIP's causal
    mask (each token sees only those before it), apply the final layer norm."""
    n = token_embeds.shape[1]
    hidden = token_embeds + text_encoder.embeddings.position_embedding(torch.arange(n, device=device))[None]
    mask = torch.full((n, n), torch.finfo(hidden.dtype).min, device=device, dtype=hidden.dtype).triu(1)[None, None]
    hidden = text_encoder.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
    return text_encoder.final_layer_norm(hidden)
'''


def _learned_encoding(recipe: Recipe) -> str:
    """`encode` and `token_embeddings` for prompts that use learned tokens: each is written as a stand-in word,
    whose embedding is then replaced by the token's vectors (the notebook's way)."""
    texts = " ".join([recipe.prompt, recipe.negative_prompt, recipe.mix[0] if recipe.mix else ""])
    stand_ins = [word for word in STAND_INS if not re.search(rf"\b{word}\b", texts, re.IGNORECASE)]
    stand_ins = stand_ins[: len(recipe.learned)]
    if len(stand_ins) < len(recipe.learned):
        raise ValueError(f"the code can stand in for at most {len(STAND_INS)} learned tokens at once")
    pairs = ", ".join(f"{name!r}: {word!r}" for name, word in zip(recipe.learned, stand_ins))
    return f'''
learned = {{name: vectors.reshape(-1, vectors.shape[-1]).to(device, dtype) for name, vectors in learned.items()}}
stand_ins = {{{pairs}}}  # one-token words the prompts do not use
pattern = "(" + "|".join(re.escape(name) for name in sorted(learned, key=len, reverse=True)) + ")"


@torch.no_grad()
def token_embeddings(text):
    """The prompt's token embeddings (1, 77, hidden), each learned token's vectors in the places of its stand-ins."""
    pieces = [" ".join([stand_ins[p]] * len(learned[p])) if p in learned else p for p in re.split(pattern, text)]
    ids = token_ids(" ".join(piece.strip() for piece in pieces if piece.strip()))
    embeds = text_encoder.embeddings.token_embedding(ids).clone()
    for name, word in stand_ins.items():
        places = ids[0] == tokenizer(word, add_special_tokens=False).input_ids[0]
        embeds[0, places] = learned[name].repeat(int(places.sum()) // len(learned[name]), 1)
    return embeds


@torch.no_grad()
def encode(text):
    """CLIP's last hidden state for a prompt: (1, 77, hidden); through the embeddings if it uses a learned token."""
    if re.search(pattern, text):
        return encode_embeddings(token_embeddings(text))
    return text_encoder(token_ids(text))[0]
'''


def _encoding(recipe: Recipe) -> str:
    """How the prompts become the UNet's conditioning, ending in `text_embeddings` (one per run) and
    `uncond_embeddings`."""
    needs_embeddings = bool(recipe.edit or recipe.learned)
    out = "\n# Encode the prompts" + TOKEN_IDS + (ENCODE_EMBEDDINGS if needs_embeddings else "")
    out += _learned_encoding(recipe) if recipe.learned else ENCODE
    if recipe.edit:
        lookup = ("learned[part][0] if part in learned else " if recipe.learned else "")
        lookup_prompt = ("token_embeddings(prompt)" if recipe.learned
                         else "text_encoder.embeddings.token_embedding(token_ids(prompt)).clone()")
        out += f'''

# The token at `position` gets a weighted sum of other embeddings in place of its own
table = text_encoder.embeddings.token_embedding.weight  # one row per token of the vocabulary
edited = {lookup_prompt}
edited[0, position] = sum(weight * ({lookup}table[part]) for part, weight in parts)
runs = [("as written", encode(prompt)), ("edited", encode_embeddings(edited))]
'''
    elif recipe.mix:
        out += "\nruns = [(\"mixed\", mix_factor * encode(prompt) + (1 - mix_factor) * encode(prompt_b))]\n"
    else:
        out += "\nruns = [(\"result\", encode(prompt))]\n"
    return out + "uncond_embeddings = encode(negative_prompt)  # what classifier-free guidance steers away from\n"


def _guidance(guidance: Guidance) -> str:
    about, body = LOSSES[guidance.loss]
    body = body.format(color=list(guidance.target.color), level=guidance.target.level)
    extra = LUMINANCE if guidance.loss in ("brightness", "contrast") else ""
    if guidance.mode == "accurate":
        prediction = "noise_pred = predict_noise(scheduler, latents, t, text_embeddings)  # through the UNet too"
    else:
        prediction = "noise_pred = noise_pred.detach()  # cheap: the step's prediction, taken as fixed"
    return f'''{extra}

def loss_fn(images):
    """{about}."""
    {body}


def guide(scheduler, latents, t, noise_pred, text_embeddings, sigma, step):
    """Loss guidance: move x_t against the gradient of the loss of its predicted x0, decoded to pixels."""
    with torch.enable_grad():
        latents = latents.detach().requires_grad_()
        {prediction}
        x0 = latents - sigma * noise_pred                       # the predicted clean latents
        images = (vae.decode(x0.to(vae.dtype) / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        loss = loss_fn(images.float())
        grad = torch.autograd.grad(loss * loss_scale, latents)[0]
    print(f"step {{step}} (timestep {{int(t)}}): loss {{loss.item():.4f}}")  # steps counted from 1, as the page
    return latents.detach() - grad * sigma**2
'''


def _attention_taps(recipe: Recipe) -> str:
    layers = "".join(f"\n    {name!r}," for name in recipe.attention)
    return f'''

# The cross-attention layers whose maps are summed
layers = [{layers}
]
step_weights = []  # this step's attention weights, one (pixels, 77) tensor per layer


class AttentionTap:
    """An attention processor that returns what the processor it wraps returns, and keeps the text-conditioned
    sample's attention weights: softmax(q k^T x scale) over the 77 text positions, averaged over the heads."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        context = encoder_hidden_states[-1:]  # the batch is [uncond, text] (or [text]): the text sample is last
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states[-1:]))  # (heads, pixels, head_dim)
        key = attn.head_to_batch_dim(attn.to_k(context))                # (heads, 77, head_dim)
        step_weights.append(attn.get_attention_scores(query, key).mean(0))
        return out


unet.set_attn_processor({{name: AttentionTap(processor) if name in layers else processor
                         for name, processor in unet.attn_processors.items()}})
'''


ATTENTION_ENDING = '''

@torch.no_grad()
def attention_maps(length, height, width):
    """The last step's maps at the image size: one per token of the `length` from the start token to the end
    token, then the padding as one; each layer's weights upsampled (summed per resolution first) and averaged
    over the layers, so that at every pixel the entries sum to 1."""
    sums = {}
    for weights in step_weights:
        h, w = height // factor, width // factor
        while h * w != weights.shape[0]:  # the layer's grid: the latents halved as often as it sits deep
            h, w = -(-h // 2), -(-w // 2)
        entries = weights[:, :length]
        if length < weights.shape[1]:  # the padding, summed as one entry
            entries = torch.cat([entries, weights[:, length:].sum(1, keepdim=True)], 1)
        entries = entries.T.reshape(-1, h, w).float()  # (entries, h, w)
        sums[h, w] = sums[h, w] + entries if (h, w) in sums else entries
    total = sum(F.interpolate(grid[None], size=(height, width), mode="bilinear", align_corners=False)[0]
                for grid in sums.values())
    return total / len(step_weights)


factor = 2 ** (len(vae.config.block_out_channels) - 1)
ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids  # start to end token
maps = attention_maps(len(ids), pictures[0].height, pictures[0].width)
low, high = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
grays = ((maps - low) / (high - low).clamp_min(1e-12) * 255).round().to(torch.uint8)  # each map from its min to max
maps_path = Path(sys.argv[1]).with_name(Path(sys.argv[1]).stem + "-maps.png")
Image.fromarray(torch.cat(list(grays), 1).cpu().numpy(), mode="L").save(maps_path)
print(f"the last step's maps of {' | '.join(tokenizer.convert_ids_to_tokens(ids))} (and the padding) "
      f"written to {maps_path}")
'''


def _parts_ending(recipe: Recipe) -> str:
    s = recipe.settings
    if s.scheduler == "ddim":  # DDIM keeps no sigma table: sigma from alpha_bar at the timestep
        sigma = "alpha_bar = scheduler.alphas_cumprod[int(t)]\n    return ((1 - alpha_bar) / alpha_bar).sqrt().item()"
    else:
        sigma = "return scheduler.sigmas[i].item()"
    shown = (f"[i for i in range({s.steps}) if (i + 1) % {s.preview_every} == 0 or i == {s.steps - 1}]"
             if s.preview_every else f"[{s.steps - 1}]")
    return f'''

# The step where the UNet's two predictions differ most, taken apart: what each of them, and their guided mix,
# makes of the image. As on the page, among the steps it previews (every preview_every-th and the last).
shown_steps = {shown}
scheduler = make_scheduler()


def sigma_at(i, t):
    """The noise level of step i (timestep t)."""
    {sigma}


def x0_from(x_t, noise, sigma):
    """x0 from the UNet's input at noise level sigma: x_t * sqrt(sigma^2 + 1) - sigma * noise."""
    return x_t * (sigma**2 + 1) ** 0.5 - sigma * noise


def apart(i):
    """How far apart the two predictions' x0 are at step i (RMS)."""
    x_t, noise_uncond, noise_text, _, t = kept_steps[i]
    sigma = sigma_at(i, t)
    return (x0_from(x_t, noise_text, sigma) - x0_from(x_t, noise_uncond, sigma)).float().pow(2).mean().sqrt().item()


widest = max(shown_steps, key=apart)
x_t, noise_uncond, noise_text, noise_guided, t = kept_steps[widest]
parts = [to_image(x0_from(x_t, noise, sigma_at(widest, t))) for noise in (noise_uncond, noise_text, noise_guided)]
parts.append(to_image(noise_guided))  # the noise itself, decoded as if it were latents
strip = Image.new("RGB", (sum(p.width for p in parts), parts[0].height))
for k, part in enumerate(parts):
    strip.paste(part, (k * part.width, 0))
parts_path = Path(sys.argv[1]).with_name(Path(sys.argv[1]).stem + "-parts.png")
strip.save(parts_path)
print(f"step {{widest + 1}} of {{len(kept_steps)}}, where the two predictions differ most: unconditional | text | "
      f"guided x0 | noise written to {{parts_path}}; the two predictions' x0 are {{apart(widest):.4f}} apart (RMS)")
'''


def _start(recipe: Recipe) -> str:
    """`seed_noise`, and for image to image `image_latents`, the fitted image and the first step."""
    noise = '''

def seed_noise(height, width):
    """The seed's noise, drawn on the CPU so that a seed gives the same noise on every device."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels per latent cell: 8 for SD
    shape = (1, unet.config.in_channels, height // factor, width // factor)
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=dtype).to(device)
'''
    if recipe.image is None:
        return noise
    return noise + '''

def fitted_image():
    """The image as the app fits it: RGB (transparency over white), the shorter side resized to the model's
    native size, then centre-cropped to at most twice that and to multiples of 8."""
    image = ImageOps.exif_transpose(Image.open(image_path))  # upright, as the camera meant it
    if image.mode != "RGB":
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    size = unet.config.sample_size * factor
    scale = size / min(image.size)
    resized = tuple(max(round(side * scale), size) for side in image.size)
    if resized != image.size:
        image = image.resize(resized, Image.Resampling.LANCZOS)
    crop = tuple(min(side, 2 * size) // factor * factor for side in resized)
    left, top = (resized[0] - crop[0]) // 2, (resized[1] - crop[1]) // 2
    return image.crop((left, top, left + crop[0], top + crop[1]))


@torch.no_grad()
def image_latents(image):
    """The VAE's latents of an image: the mean of its distribution, scaled as the UNet sees them."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]  # (1, 3, H, W)
    return vae.encode((pixels * 2 - 1).to(device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
'''


PURE_NOISE = "seed_noise(height, width) * scheduler.init_noise_sigma"


def _first_latents(recipe: Recipe) -> tuple[str, str]:
    """The lines that make the run's first latents, and the first step's index as the loop reads it."""
    s = recipe.settings
    if recipe.image is None:
        return f"latents = {PURE_NOISE}  # x_T, at the first step's noise level", "0"
    first = s.steps - int(s.steps * recipe.strength)
    lines = ["image = fitted_image()", "height, width = image.size[1], image.size[0]",
             "# strength s runs the last int(steps x s) steps of the schedule",
             "start = num_inference_steps - int(num_inference_steps * strength)"]
    if first == 0:
        lines += [f"latents = {PURE_NOISE}  # strength 1: pure noise"]
    elif first == s.steps:
        lines += ["latents = image_latents(image)  # strength 0: the image's latents, nothing to denoise"]
    else:
        if s.scheduler != "ddim":  # DDIM looks its noise levels up by timestep; the others count from where they begin
            lines += ["scheduler.set_begin_index(start)"]
        lines += ["# the image's latents noised to the first step's level",
                  "latents = scheduler.add_noise(image_latents(image), seed_noise(height, width), "
                  "scheduler.timesteps[start:start + 1])"]
    return "\n    ".join(lines), "start"


def _loop(recipe: Recipe) -> str:
    s = recipe.settings
    start, first = _first_latents(recipe)
    timesteps = "scheduler.timesteps" if first == "0" else f"scheduler.timesteps[{first}:]"
    scales = recipe.comparison is not None and recipe.comparison.kind == "scales"
    one_branch = "    return unet(x_t, t, encoder_hidden_states=text_embeddings).sample  # guidance 1: one branch"
    if scales:
        predict = f"    if guidance_scale == 1:\n    {one_branch}\n"
    if scales or s.guidance_scale != 1.0:
        predict = (predict if scales else "") + '''    context = torch.cat([uncond_embeddings, text_embeddings])  # both branches in one batch
    noise_pred = unet(torch.cat([x_t, x_t]), t, encoder_hidden_states=context).sample
    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
    guided = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)  # classifier-free guidance{keep}
    return guided'''.replace("{keep}", "\n    kept_steps.append([x_t, noise_pred_uncond, noise_pred_text, guided, t])"
                                        "  # for the parts" if recipe.parts else "")
    else:
        predict = one_branch
    guide = ""
    if recipe.guidance:
        when = ("i >= loss_start and (i - loss_start) % loss_every == 0" if recipe.guidance.start
                else "i % loss_every == 0")
        guide = (f"\n        if {when}:\n            latents = guide(scheduler, latents, t, noise_pred, "
                 "text_embeddings, scheduler.sigmas[i].item(), i + 1)")
    order = ""
    if s.scheduler == "lms" and recipe.image is not None and recipe.lms_order == "run":
        order = f", order=min(i + 1, {LMS_MAX_ORDER})"
        guide += ("\n        # LMS extrapolates from up to 4 past steps; a run that starts mid-schedule has only i + 1"
                  "\n        # of its own (diffusers' LMS counts from the schedule's start and would use 4 at once)")
    elif s.scheduler == "lms" and recipe.image is not None:
        guide += ("\n        # diffusers' LMS counts its order from the schedule's start: from a mid-schedule start it"
                  "\n        # applies 4th-order coefficients at once, to the one or two derivatives this run has")
    clear = "\n    step_weights.clear()  # the maps kept are the last step's" if recipe.attention else ""
    kept = "\nkept_steps = []  # each step's UNet input, noise predictions and timestep\n" if recipe.parts else ""
    return kept + f'''

def predict_noise(scheduler, latents, t, text_embeddings):
    """The UNet's noise prediction for the latents at timestep t."""
    x_t = scheduler.scale_model_input(latents, t)  # what the UNet sees{clear}
{predict}


@torch.no_grad()
def denoise(text_embeddings):
    """The sampling loop: predict the noise, let the scheduler step; returns the final latents."""
    scheduler = make_scheduler()
    {start}
    for i, t in enumerate({timesteps}):
        noise_pred = predict_noise(scheduler, latents, t, text_embeddings){guide}
        latents = scheduler.step(noise_pred, t, latents{order}).prev_sample
    return latents
'''


def _ending(recipe: Recipe) -> str:
    return '''

@torch.no_grad()
def to_image(latents):
    """Latents -> the VAE's decoded picture, as 8-bit RGB."""
    image = (vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    return Image.fromarray((image[0].permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8))


{runs}
pictures = [to_image(latents) for latents in finals]
sheet = Image.new("RGB", (sum(p.width for p in pictures), pictures[0].height))  # side by side, as on the page
for k, picture in enumerate(pictures):
    sheet.paste(picture, (k * picture.width, 0))
sheet.save(sys.argv[1])
print(f"{' | '.join(names)} written to {sys.argv[1]}")
if len(sys.argv) > 2:
    torch.save(torch.cat(finals).cpu(), sys.argv[2])
'''.replace("{runs}", _runs(recipe))


def _runs(recipe: Recipe) -> str:
    """The lines that make `finals` (each run's final latents) and `names`."""
    if not recipe.comparison:
        return ("names = [name for name, _ in runs]\n"
                "finals = [denoise(text_embeddings) for _, text_embeddings in runs]")
    compared = COMPARED[recipe.comparison.kind]
    return f'''names, finals = [], []
for {compared.each} in {compared.entries}:  # each run rebinds the settings {compared.reader} reads
    names.append(f"{compared.caption}")
    finals.append(denoise(runs[0][1]))'''


class Scripts:
    """The scripts of an engine's runs: each method checks its inputs as the run itself does, and returns the
    run as code. A random seed (-1) is drawn here, as a run draws it: pass the seed a run reported to get
    that run's script."""

    def __init__(self, engine):
        self.engine = engine

    def _script(self, recipe: Recipe) -> str:
        return script(self.engine.bundle, recipe)

    def txt2img(self, prompt: str, negative_prompt: str, settings: Settings, *,
                learned: dict | None = None, title: str = "Text to image") -> str:
        settings = self.engine.check_txt2img(prompt, negative_prompt, settings)
        return self._script(Recipe(title, prompt, negative_prompt, settings,
                                   learned=used(learned, prompt, negative_prompt)))

    def guided(self, prompt: str, negative_prompt: str, settings: Settings, guidance: Guidance) -> str:
        settings = self.engine.check_guided(prompt, negative_prompt, settings, guidance)
        return self._script(Recipe("Loss guidance", prompt, negative_prompt, settings, guidance=guidance))

    def img2img(self, prompt: str, negative_prompt: str, image: str, strength: float, settings: Settings, *,
                lms_order: str = "run") -> str:
        width, height = self.engine.fit_image(image).image.size
        settings = self.engine.check_txt2img(prompt, negative_prompt, replace(settings, width=width, height=height))
        self.engine.img2img_plan(strength, settings.steps, settings.scheduler, lms_order)
        return self._script(Recipe("Image to image", prompt, negative_prompt, settings,
                                   image=str(Path(image).resolve()), strength=strength, lms_order=lms_order))

    def edit_token(self, prompt: str, negative_prompt: str, settings: Settings, position: int,
                   parts: list[tuple[str, float]], *, learned: dict | None = None,
                   title: str = "A token's embedding edited") -> str:
        """Swap or mix: `parts` are (word, token id written as a number, or learned token; weight)."""
        engine, learned = self.engine, learned or {}
        settings = engine.check_txt2img(prompt, negative_prompt, settings)
        ingredients = tuple((part if part in learned else engine.token_id(part), weight) for part, weight in parts)
        tokens = text.tokenize(engine.bundle, prompt, learned)
        text.check_position(tokens, position)
        blend = " + ".join(f"{weight:g} x {part}" for part, weight in parts)
        about = f"{tokens.names[position].removesuffix('</w>')} -> {blend}"
        chosen = used(learned, prompt, negative_prompt, *(part for part, _ in parts))
        return self._script(Recipe(title, prompt, negative_prompt, settings, Edit(position, ingredients, about),
                                   learned=chosen))

    def mix_prompts(self, prompt_a: str, prompt_b: str, factor: float, negative_prompt: str, settings: Settings, *,
                    learned: dict | None = None) -> str:
        settings = self.engine.check_mix(prompt_a, prompt_b, factor, negative_prompt, settings)
        return self._script(Recipe("Two prompts mixed", prompt_a, negative_prompt, settings, mix=(prompt_b, factor),
                                   learned=used(learned, prompt_a, prompt_b, negative_prompt)))


    def attention(self, prompt: str, negative_prompt: str, settings: Settings, *,
                  layers: Layers = Layers()) -> str:
        """Text to image that keeps the last step's cross-attention maps, summed over `layers`."""
        settings, chosen = self.engine.check_attention(prompt, negative_prompt, settings, layers)
        return self._script(Recipe("Cross-attention maps", prompt, negative_prompt, settings,
                                   attention=tuple(layer.name for layer in chosen)))

    def cfg_parts(self, prompt: str, negative_prompt: str, settings: Settings) -> str:
        """Text to image that also takes apart the step where the UNet's two predictions differ most, as the page
        does: the unconditional, text and guided x0 and the noise."""
        settings = self.engine.check_txt2img(prompt, negative_prompt, settings)
        if settings.guidance_scale == 1.0:
            raise ValueError(NO_BRANCHES)
        return self._script(Recipe("Guidance taken apart", prompt, negative_prompt, settings, parts=True))

    def compare(self, prompt: str, negative_prompt: str, settings: Settings, changes: list[dict]) -> str:
        """The prompt run once per change of the settings: guidance scales, samplers (with their steps) or
        seeds, as `Engine.parse_scales`, `parse_samplers` or `parse_seeds` give them."""
        changed = self.engine.check_comparison(prompt, negative_prompt, settings, changes)
        if "guidance_scale" in changes[0]:
            comparison = Comparison("scales", tuple(each.guidance_scale for each in changed))
        elif "scheduler" in changes[0]:
            comparison = Comparison("samplers", tuple((each.scheduler, each.steps) for each in changed))
        else:
            comparison = Comparison("seeds", tuple(each.seed for each in changed))
        return self._script(Recipe(f"The {comparison.kind} compared", prompt, negative_prompt, changed[0],
                                   comparison=comparison))


def used(learned: dict | None, *texts: str) -> dict:
    """The learned tokens that the texts use."""
    return {name: vectors for name, vectors in (learned or {}).items() if any(name in t for t in texts)}
