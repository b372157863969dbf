"""Procedural 64x64 images of one coloured shape on a coloured background, with captions.

Every image is drawn at 4x and downsampled, so edges are anti-aliased. A scene is plain data (`Scene`),
drawn by `draw` and described by `caption`; `sample_scene` picks one at random from a seeded generator,
so a dataset is reproducible from its seed and never downloaded. A dataset can paint each named colour in
a random shade of itself (`shade`), so that "red" covers a range of reds, as words do, and paint a share of
shapes and backgrounds in arbitrary colours that their captions leave unnamed (`Scene.unnamed`).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

SIZE = 64          # pixels per side of a finished image
SUPERSAMPLE = 4    # drawn at 4x, then downsampled: anti-aliased edges

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (250, 220, 40), "green": (40, 170, 60),
    "blue": (35, 80, 220), "purple": (130, 50, 180), "pink": (245, 130, 190), "brown": (120, 75, 35),
    "black": (15, 15, 15), "white": (245, 245, 245), "gray": (130, 130, 130),
}
SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
# A shade is the named colour with each RGB channel moved by a Gaussian (SHADE_SPREAD: the spread of the
# training recipe), kept only when it lies nearer its own name than any other by SHADE_MARGIN; shape
# and background shades differ by CONTRAST at least.
SHADE_SPREAD = 40.0
SHADE_MARGIN = 12.0
CONTRAST = 60.0
SIZES: dict[str, float] = {"small": 0.22, "medium": 0.32, "large": 0.42}  # radius as a fraction of the side
TEMPLATES = (
    "a {size} {color} {shape} on a {background} background",
    "a {color} {shape} on a {background} background",
    "a picture of a {size} {color} {shape} on {background}",
    "a {color} {shape}, {background} background",
    "{size} {color} {shape} on a {background} background",
    "an image of a {color} {shape} against {background}",
)
# the words a caption can hold, and how a note names them
WORDS = frozenset(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", " ".join(TEMPLATES)))) | {"an"} | set(COLORS) \
    | set(SHAPES) | set(SIZES)
KNOWN = (f"shapes ({', '.join(SHAPES)}), colours ({', '.join(COLORS)}) and sizes ({', '.join(SIZES)}), "
         "as in “a red circle on a white background”")
BACKGROUND_PHRASE = re.compile(r"(?:,| on| against) (?:a )?\{background\}(?: background)?")  # in every template
ROLES = ("color", "background")  # the scene's two colours: its shape's and its background's


@dataclass(frozen=True)
class Scene:
    shape: str                 # one of SHAPES
    color: str                 # a key of COLORS, never the background's
    background: str            # a key of COLORS
    size: str                  # a key of SIZES
    cx: float                  # centre, as a fraction of the side
    cy: float
    angle: float               # rotation in degrees (the circle ignores it)
    unnamed: tuple = ()        # the roles (of ROLES) painted in an arbitrary colour that the caption leaves out


def sample_scene(rng: random.Random) -> Scene:
    color, background = rng.sample(list(COLORS), 2)
    size = rng.choice(list(SIZES))
    margin = SIZES[size] + 0.04
    return Scene(shape=rng.choice(SHAPES), color=color, background=background, size=size,
                 cx=rng.uniform(margin, 1 - margin), cy=rng.uniform(margin, 1 - margin),
                 angle=rng.uniform(-15, 15))


def caption(scene: Scene, rng: random.Random) -> str:
    """One of the templates, naming the scene's size, shape and its named colours."""
    template = rng.choice(TEMPLATES)
    if "color" in scene.unnamed:
        template = template.replace("{color} ", "")
    if "background" in scene.unnamed:
        template = BACKGROUND_PHRASE.sub("", template)
    text = template.format(size=scene.size, color=scene.color, shape=scene.shape, background=scene.background)
    return re.sub(r"\ba (?=[aeiou])", "an ", text)  # "an orange circle"


def shade(name: str, rng: random.Random, spread: float = SHADE_SPREAD) -> tuple[int, int, int]:
    """A random shade of the named colour that still reads as that name (nearest by SHADE_MARGIN)."""
    base = COLORS[name]
    while True:
        rgb = tuple(min(255, max(0, round(rng.gauss(c, spread)))) for c in base)
        own = math.dist(rgb, base)
        if all(own + SHADE_MARGIN <= math.dist(rgb, other) for key, other in COLORS.items() if key != name):
            return rgb


def scene_shades(scene: Scene, rng: random.Random, spread: float = SHADE_SPREAD) -> dict[str, tuple[int, int, int]]:
    """Shades for the scene's shape and background colours, at least CONTRAST apart: a `colors` for `draw`."""
    while True:
        color, background = shade(scene.color, rng, spread), shade(scene.background, rng, spread)
        if math.dist(color, background) >= CONTRAST:
            return {scene.color: color, scene.background: background}


def free_colors(scene: Scene, rng: random.Random, colors: dict[str, tuple[int, int, int]]) -> dict:
    """`colors` with the scene's unnamed roles repainted in uniformly random RGB, CONTRAST from the other."""
    while True:
        out = dict(colors)
        for role in scene.unnamed:
            out[getattr(scene, role)] = tuple(rng.randrange(256) for _ in range(3))
        if math.dist(out[scene.color], out[scene.background]) >= CONTRAST:
            return out


def _outline(shape: str) -> list[tuple[float, float]]:
    """The shape's outline on the unit disc, before rotation and scaling."""
    if shape == "square":
        s = 0.8
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":
        return [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in (-90, 30, 150)]
    if shape == "star":
        return [((1.0 if i % 2 == 0 else 0.42) * math.cos(math.radians(-90 + 36 * i)),
                 (1.0 if i % 2 == 0 else 0.42) * math.sin(math.radians(-90 + 36 * i))) for i in range(10)]
    if shape == "cross":
        a, b = 0.3, 0.95
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a),
                (-b, -a), (-a, -a)]
    if shape == "heart":
        points = []
        for i in range(64):
            t = 2 * math.pi * i / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((x / 17, -y / 17 + 0.05))
        return points
    if shape == "circle":
        return [(math.cos(2 * math.pi * i / 96), math.sin(2 * math.pi * i / 96)) for i in range(96)]
    raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")


def draw(scene: Scene, colors: dict[str, tuple[int, int, int]] = COLORS) -> Image.Image:
    """The scene as a 64x64 RGB image; `colors` names the RGB of every colour the scene uses."""
    big = SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), colors[scene.background])
    radius = SIZES[scene.size] * big
    turn = math.radians(scene.angle)
    points = [(scene.cx * big + radius * (x * math.cos(turn) - y * math.sin(turn)),
               scene.cy * big + radius * (x * math.sin(turn) + y * math.cos(turn))) for x, y in _outline(scene.shape)]
    ImageDraw.Draw(image).polygon(points, fill=colors[scene.color])
    return image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def make_dataset(count: int, seed: int = 0, shade_spread: float = 0.0,
                 free_colour: float = 0.0) -> list[tuple[Image.Image, str, Scene]]:
    """`count` (image, caption, scene) triples, the same for the same seed; with a `shade_spread`, each in
    shades of its named colours (0: the exact named colours); with a `free_colour`, each scene's shape and
    its background are, each with that probability, painted in an arbitrary colour left out of the caption."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        scene = sample_scene(rng)
        colors = scene_shades(scene, rng, shade_spread) if shade_spread else COLORS
        if free_colour:
            scene = replace(scene, unnamed=tuple(role for role in ROLES if rng.random() < free_colour))
            colors = free_colors(scene, rng, colors)
        out.append((draw(scene, colors), caption(scene, rng), scene))
    return out


def off_palette_images(count: int, seed: int = 0) -> list[Image.Image]:
    """`count` scenes whose shape and background take random RGB colours instead of named ones.

    The named colours are 11 points of the RGB cube; a decoder that sees only them learns to snap every
    colour to the nearest one. These images teach it the colours in between (a learned "<teal>", an upload).
    """
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        scene = sample_scene(rng)
        shape, background = (tuple(rng.randrange(256) for _ in range(3)) for _ in range(2))
        if sum(abs(a - b) for a, b in zip(shape, background)) >= 120:  # the shape stays visible
            out.append(draw(scene, {scene.color: shape, scene.background: background}))
    return out
