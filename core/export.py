"""A run's frames as a picture strip, a GIF and an MP4: the Deep Dive's "x0 video"."""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

GAP = 4  # pixels between the two halves of a pair


def pair(left: Image.Image, right: Image.Image) -> Image.Image:
    """Two images side by side on a white ground (x_t | x0)."""
    canvas = Image.new("RGB", (left.width + GAP + right.width, max(left.height, right.height)), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + GAP, 0))
    return canvas


def _even(image: Image.Image) -> np.ndarray:
    """As an array padded to even sides, which H.264 (yuv420p) needs."""
    w, h = image.size
    canvas = Image.new("RGB", (w + w % 2, h + h % 2), "white")
    canvas.paste(image, (0, 0))
    return np.asarray(canvas)


def write_gif(frames: list[Image.Image], path: Path, fps: float = 8) -> Path:
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return path


def write_mp4(frames: list[Image.Image], path: Path, fps: float = 8) -> Path:
    iio.imwrite(path, np.stack([_even(f) for f in frames]), fps=fps, codec="libx264",
                macro_block_size=1, plugin="FFMPEG")
    return path
