"""Measure how well a model follows toy-world prompts: colour, shape and background adherence.

    python -m core.toyworld.evaluate --model core/toyworld/model            # the notebook's settings
    python -m core.toyworld.evaluate --model DIR --guidance 3 --seeds 3 --scheduler euler
    python -m core.toyworld.evaluate --model DIR --blue    # the blue loss at the Guidance tab's defaults vs none
    python -m core.toyworld.evaluate --model DIR --blue --scale 60   # ... at another scale
    python -m core.toyworld.evaluate --model DIR --blue --scale 120 --start 10   # ... the first 10 steps unguided
    python -m core.toyworld.evaluate --model DIR --blue --gradient accurate      # ... the gradient through the UNet
    python -m core.toyworld.evaluate --model DIR --img2img # drawn scenes asked for another colour, by strength,
                                                           # at the Image to image tab's defaults

Each image is read back without any learned model: the background is the median of the border, the
shape's colour the median of the pixels that differ from it (by less where the image's contrast is low), both
matched to the nearest named colour (the training data paints each name in a range of shades);
the shape is told by geometric features of its mask (solidity, how much of its enclosing circle it fills, and
how strongly its outline repeats 1 to 8 times around its centre), voted on by its nearest neighbours among
procedurally drawn references. The repeats are what a person goes by in a model's soft shapes: a square
with round corners and wavy sides is still 4-fold, a star with blunt arms still 5-fold.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from core.toyworld.data import COLORS, SHAPES, SIZES, Scene, draw, sample_scene, scene_shades

PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # (11, 3)
NAMES = list(COLORS)
# RGB distance from the background that marks a pixel as the shape's: FOREGROUND, or half the image's contrast
# where that is less (shades of two names can lie 60 apart), but never under FAINTEST
FOREGROUND, FAINTEST = 40.0, 15.0
NEIGHBOURS = 5
HARMONICS = 8  # the outline's repeats measured: 1 (a heart's point) to 8 (a square's and a cross's overtone)
ANGLES = 64    # directions around the centre in which the outline's radius is measured
LAYOUT = 0.7  # box IoU with the input's shape above which an image to image result keeps the layout
BLUER = 0.15  # a rise a person sees at once: a white ground turned pale blue (180, 200, 250) rises by 0.2


def nearest_color(rgb: np.ndarray) -> str:
    return NAMES[int(np.argmin(((PALETTE - rgb) ** 2).sum(-1)))]


def outline_repeats(offsets: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """How strongly a shape's outline repeats k times around its centre, k = 1..HARMONICS: the magnitudes of the
    Fourier series of its radius by direction, over its mean radius; from its pixels' offsets from the centre (x, y)
    and their distances to it. Rotation leaves them unchanged."""
    direction = np.arctan2(offsets[:, 1], offsets[:, 0])
    bins = ((direction + np.pi) / (2 * np.pi) * ANGLES).astype(int) % ANGLES
    radius = np.zeros(ANGLES)
    np.maximum.at(radius, bins, distances)  # the farthest pixel in each direction: the outline
    seen = np.nonzero(radius)[0]
    radius = np.interp(np.arange(ANGLES), seen, radius[seen], period=ANGLES)  # directions no pixel fell in
    return np.abs(np.fft.rfft(radius / radius.mean()))[1:HARMONICS + 1] / ANGLES


def shape_features(mask: np.ndarray) -> np.ndarray | None:
    """(solidity, circle fill, the outline's repeats) of a binary mask, or None when there is no shape to measure."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 8:
        return None
    points = np.stack([xs, ys], axis=1).astype(np.float64)
    try:
        hull = ConvexHull(points)
    except QhullError:
        return None
    area = float(len(xs))
    offsets = points - points.mean(0)
    distances = np.sqrt((offsets**2).sum(1)) + 0.5
    return np.concatenate([[area / max(hull.volume, 1.0), area / (np.pi * distances.max() ** 2)],
                           outline_repeats(offsets, distances)])


@dataclass(frozen=True)
class Reading:
    color: str
    shape: str | None
    background: str


class Reader:
    """Reads (colour, shape, background) back from a 64x64 toy-world image."""

    def __init__(self, references: int = 600, seed: int = 1234):
        rng = random.Random(seed)
        feats, labels = [], []
        while len(feats) < references:
            scene = sample_scene(rng)
            shades = scene_shades(scene, rng)
            features = shape_features(self._mask(np.asarray(draw(scene, shades), dtype=np.float32),
                                                 shades[scene.background]))
            if features is not None:
                feats.append(features)
                labels.append(scene.shape)
        self.features, self.labels = np.stack(feats), labels
        self.spread = self.features.std(0)  # each feature in units of its spread, so that none outweighs the rest

    @staticmethod
    def _mask(pixels: np.ndarray, background) -> np.ndarray:
        """The largest connected region that differs from the background (stray specks would skew the shape);
        the image's contrast is that of the 2% of pixels that differ most."""
        distance = np.sqrt(((pixels - np.asarray(background, dtype=np.float32)) ** 2).sum(-1))
        mask = distance > np.clip(np.percentile(distance, 98) / 2, FAINTEST, FOREGROUND)
        regions, count = ndimage.label(mask)
        if count <= 1:
            return mask
        sizes = ndimage.sum(mask, regions, index=range(1, count + 1))
        return regions == 1 + int(np.argmax(sizes))

    @classmethod
    def _parts(cls, image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The image's pixels (64, 64, 3), its background colour (the median of its border) and its shape's mask."""
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        background_rgb = np.median(border, axis=0)
        return pixels, background_rgb, cls._mask(pixels, background_rgb)

    def box(self, image: Image.Image) -> tuple[int, int, int, int]:
        """The bounding box (left, top, right, bottom) of the image's shape; all 0 when it has none."""
        ys, xs = np.nonzero(self._parts(image)[2])
        return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)

    def read(self, image: Image.Image) -> Reading:
        pixels, background_rgb, mask = self._parts(image)
        color = nearest_color(np.median(pixels[mask], axis=0)) if mask.any() else nearest_color(background_rgb)
        features = shape_features(mask)
        shape = None
        if features is not None:
            distance = (((self.features - features) / self.spread) ** 2).sum(1)
            votes = [self.labels[i] for i in np.argsort(distance)[:NEIGHBOURS]]
            shape = max(set(votes), key=votes.count)
        return Reading(color, shape, nearest_color(background_rgb))


def prompt_grid(seed: int = 0) -> list[Scene]:
    """Every colour x shape once, each on a background picked in turn (never its own colour)."""
    rng = random.Random(seed)
    scenes = []
    for i, color in enumerate(COLORS):
        for j, shape in enumerate(SHAPES):
            others = [b for b in COLORS if b != color]
            scenes.append(Scene(shape, color, others[(i + j) % len(others)], rng.choice(list(SIZES)), 0.5, 0.5, 0))
    return scenes


def prompt_of(scene: Scene) -> str:
    article = "an" if scene.color[0] in "aeiou" else "a"
    return f"{article} {scene.color} {scene.shape} on a {scene.background} background"


def evaluate(engine, settings, seeds: int = 2, reader: Reader | None = None) -> dict:
    """Adherence of `engine`'s model over the colour x shape grid, `seeds` images each."""
    reader = reader or Reader()
    hits = {"color": 0, "shape": 0, "background": 0}
    total, start = 0, time.time()
    for scene in prompt_grid():
        for seed in range(seeds):
            run = engine.txt2img(prompt_of(scene), "", replace(settings, seed=seed, preview_every=0))
            reading = reader.read(list(run.frames)[-1].image)
            hits["color"] += reading.color == scene.color
            hits["shape"] += reading.shape == scene.shape
            hits["background"] += reading.background == scene.background
            total += 1
    seconds = time.time() - start
    return {**{k: round(v / total, 3) for k, v in hits.items()}, "images": total,
            "seconds_per_image": round(seconds / total, 3)}


def blueness(image: Image.Image) -> float:
    """How blue an image looks: the mean over its pixels of B - max(R, G), in [-1, 1] (pure blue 1, any grey 0)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    return float((pixels[..., 2] - pixels[..., :2].max(-1)).mean())


def blue_grid(count: int = 12) -> list[Scene]:
    """`count` scenes with neither shape nor background blue: the shapes in turn, the other ten colours in turn,
    each on a background four colours further on."""
    colors = [name for name in COLORS if name != "blue"]
    return [Scene(SHAPES[i % len(SHAPES)], colors[i % len(colors)], colors[(i + 4 + i // len(colors)) % len(colors)],
                  "medium", 0.5, 0.5, 0) for i in range(count)]


def evaluate_blue(engine, settings, guidance, seeds: int = 2, reader: Reader | None = None,
                  scenes: list[Scene] | None = None) -> dict:
    """The blue loss against the same seed unguided: the share of images whose blueness rose by BLUER at
    least, the median rise, and the share whose shape is read right, guided and unguided."""
    reader = reader or Reader()
    rises, shapes, plain_shapes = [], 0, 0
    for scene in scenes or blue_grid():
        for seed in range(seeds):
            seeded = replace(settings, seed=seed, preview_every=0)
            plain = list(engine.txt2img(prompt_of(scene), "", seeded).frames)[-1].image
            guided = list(engine.guided(prompt_of(scene), "", seeded, guidance).frames)[-1].image
            rises.append(blueness(guided) - blueness(plain))
            shapes += reader.read(guided).shape == scene.shape
            plain_shapes += reader.read(plain).shape == scene.shape
    return {"bluer": round(float(np.mean(np.array(rises) >= BLUER)), 3),
            "median_rise": round(float(np.median(rises)), 3), "shape": round(shapes / len(rises), 3),
            "shape_unguided": round(plain_shapes / len(rises), 3), "images": len(rises)}


def box_iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def evaluate_img2img(engine, settings, strengths=(0.2, 0.3, 0.4, 0.6), reader: Reader | None = None,
                     scenes: list[Scene] | None = None) -> dict:
    """Drawn scenes (those of blue_grid) asked for another shape colour, at each strength: the share whose shape
    keeps its place (box IoU with the input's at least LAYOUT), the median IoU, and the share in the new colour."""
    reader = reader or Reader()
    scenes = scenes or blue_grid()
    results = {}
    for strength in strengths:
        ious, recoloured = [], 0
        for i, scene in enumerate(scenes):
            new = [c for c in COLORS if c not in (scene.color, scene.background)][i % (len(COLORS) - 2)]
            drawn = draw(scene)
            run = engine.img2img(prompt_of(replace(scene, color=new)), "", drawn, strength,
                                 replace(settings, seed=i, preview_every=0))
            image = list(run.frames)[-1].image
            ious.append(box_iou(reader.box(drawn), reader.box(image)))
            recoloured += reader.read(image).color == new
        results[str(strength)] = {"layout": round(float(np.mean(np.array(ious) >= LAYOUT)), 3),
                                  "median_iou": round(float(np.median(ious)), 3),
                                  "new_colour": round(recoloured / len(scenes), 3)}
    return results


def main() -> None:
    from core.engine import Engine
    from core.guidance import MODES
    from core.models import load_bundle

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, help="in place of the tab's default: text to image's 30, with --blue or "
                                                  "--img2img that tab's 50 (the notebook's demos of them)")
    parser.add_argument("--guidance", type=float, help="the CFG, in place of the tab's default: 7.5, with --blue or "
                                                       "--img2img 8")
    parser.add_argument("--scheduler", default="lms")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--blue", action="store_true",
                        help="measure the blue loss (the page's default loss guidance) on 12 prompts instead")
    parser.add_argument("--img2img", action="store_true",
                        help="measure image to image on 12 drawn scenes asked for another colour instead")
    parser.add_argument("--scale", type=float, help="with --blue: the loss scale, in place of the page's default")
    parser.add_argument("--start", type=int, help="with --blue: leave the first START steps unguided, in place of the "
                                                  "page's default")
    parser.add_argument("--gradient", choices=MODES, help="with --blue: how the gradient reaches the latents, in place "
                                                         "of the page's default")
    args = parser.parse_args()
    engine = Engine(load_bundle(args.model, device="cpu", dtype="float32"))
    settings = engine.default_settings("guided" if args.blue else "img2img" if args.img2img else None)
    chosen = {"steps": args.steps, "guidance_scale": args.guidance}
    settings = replace(settings, scheduler=args.scheduler, **{k: v for k, v in chosen.items() if v is not None})
    if args.blue:
        guidance = engine.default_guidance()
        guidance = replace(guidance, scale=args.scale) if args.scale is not None else guidance
        guidance = replace(guidance, start=args.start) if args.start is not None else guidance
        guidance = replace(guidance, mode=args.gradient) if args.gradient else guidance
        result = {"loss": guidance.loss, "scale": guidance.scale, "start": guidance.start, "gradient": guidance.mode,
                  **evaluate_blue(engine, settings, guidance, args.seeds)}
    elif args.img2img:
        result = evaluate_img2img(engine, settings)
    else:
        result = evaluate(engine, settings, args.seeds)
    print(json.dumps({"steps": settings.steps, "guidance_scale": settings.guidance_scale, "scheduler": args.scheduler,
                      **result}))


if __name__ == "__main__":
    main()
