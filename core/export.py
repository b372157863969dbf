"""A run's frames as a picture strip, a GIF and an MP4: the Deep Dive's "x0 video", scaled up and captioned."""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 4  # pixels between the two halves of a pair
VIDEO_HEIGHT = 512  # small frames are scaled up to about this height for videos and GIFs
DEFAULT_FPS = 8
MAX_FPS = 30


def pair(left: Image.Image, right: Image.Image) -> Image.Image:
    """Two images side by side on a white ground (x_t | x0)."""
    canvas = Image.new("RGB", (left.width + GAP + right.width, max(left.height, right.height)), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + GAP, 0))
    return canvas


def enlarge(image: Image.Image, height: int = VIDEO_HEIGHT) -> Image.Image:
    """Scaled up by a whole factor to about `height` pixels tall, each pixel a crisp block (nearest); an image
    already that tall stays as it is."""
    factor = max(1, round(height / image.height))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def captioned(image: Image.Image, caption: str) -> Image.Image:
    """The image above a white band with `caption` written in it."""
    font = ImageFont.load_default(size=max(12, image.height // 20))
    line = font.getbbox(caption)[3]
    band = line + line // 2
    canvas = Image.new("RGB", (image.width, image.height + band), "white")
    canvas.paste(image, (0, 0))
    ImageDraw.Draw(canvas).text((line // 2, image.height + line // 4), caption, fill="black", font=font)
    return canvas


def video_frame(images: list[Image.Image], caption: str) -> Image.Image:
    """One frame of a video or GIF: the images side by side, scaled up, with the caption burnt in beneath
    (e.g. x_t | x0 over "step 3/30 · sigma 8.12"; Pillow's built-in font has no σ)."""
    row = enlarge(images[0])
    for image in images[1:]:
        row = pair(row, enlarge(image, row.height))
    return captioned(row, caption)


def _even(image: Image.Image) -> np.ndarray:
    """As an array padded to even sides, which H.264 (yuv420p) needs."""
    w, h = image.size
    canvas = Image.new("RGB", (w + w % 2, h + h % 2), "white")
    canvas.paste(image, (0, 0))
    return np.asarray(canvas)


def check_fps(fps: float) -> float:
    if not 1 <= fps <= MAX_FPS:  # also false for NaN
        raise ValueError(f"frames per second must be from 1 to {MAX_FPS}, got {fps!r}")
    return fps


def write_gif(frames: list[Image.Image], path: Path, fps: float = DEFAULT_FPS) -> Path:
    check_fps(fps)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)
    return path


def write_mp4(frames: list[Image.Image], path: Path, fps: float = DEFAULT_FPS) -> Path:
    check_fps(fps)
    iio.imwrite(path, np.stack([_even(f) for f in frames]), fps=fps, codec="libx264",
                macro_block_size=1, plugin="FFMPEG")
    return path
