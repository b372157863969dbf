"""Images that users bring: opened safely, converted to RGB, and fitted to what the model can take."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from core.models import ModelBundle

MIN_INPUT_SIDE = 16             # pixels; smaller inputs carry too little to show anything
MAX_INPUT_PIXELS = 40_000_000   # read from the header before decoding, so a "pixel bomb" is never decoded


@dataclass(frozen=True)
class Fitted:
    """An input image made ready for the VAE, and what was done to it."""

    image: Image.Image             # RGB, each side a multiple of the VAE factor
    note: str                      # e.g. "1024x768 RGBA -> RGB on white, resized to 85x64, cropped to 80x64"


def open_image(source: str | Path | Image.Image) -> Image.Image:
    """A file path (or an image already open) -> a decoded PIL image, or ValueError saying what is wrong."""
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(source)  # reads the header only
        except Image.DecompressionBombError as err:
            raise ValueError(f"the image is too large: at most {MAX_INPUT_PIXELS:,} pixels") from err
        except (UnidentifiedImageError, OSError) as err:
            name = Path(str(source)).name
            raise ValueError(f"{name} is not an image that can be read (PNG, JPEG, WebP, ...)") from err
    width, height = image.size
    if width * height > MAX_INPUT_PIXELS:
        raise ValueError(f"the image is {width}x{height} pixels ({width * height:,}); at most {MAX_INPUT_PIXELS:,}")
    if min(width, height) < MIN_INPUT_SIDE:
        raise ValueError(f"the image is {width}x{height} pixels; each side must be at least {MIN_INPUT_SIDE}")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"the image file is damaged and cannot be decoded ({err})") from err
    return image


def to_rgb(image: Image.Image) -> tuple[Image.Image, str]:
    """RGB, with transparency laid over white and EXIF rotation applied; says what changed."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image, ""
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), f"{image.mode} -> RGB on white"
    return image.convert("RGB"), f"{image.mode} -> RGB"


def fit(image: Image.Image, size: int, max_side: int, factor: int) -> Fitted:
    """Resize so the shorter side is `size`, then center-crop each side to at most `max_side` and down to a
    multiple of `factor` (the model's native size, largest side, and VAE downsampling)."""
    width, height = image.size
    rgb, converted = to_rgb(image)
    steps = [f"{width}x{height} {image.mode}"] + ([converted] if converted else [])
    scale = size / min(width, height)
    resized = (max(round(width * scale), size), max(round(height * scale), size))
    if resized != (width, height):
        rgb = rgb.resize(resized, Image.Resampling.LANCZOS)
        steps.append(f"resized to {resized[0]}x{resized[1]}")
    crop = tuple(min(side, max_side) // factor * factor for side in resized)
    if crop != resized:
        left, top = (resized[0] - crop[0]) // 2, (resized[1] - crop[1]) // 2
        rgb = rgb.crop((left, top, left + crop[0], top + crop[1]))
        steps.append(f"cropped to {crop[0]}x{crop[1]}")
    if len(steps) == 1:
        steps.append("used as it is")
    return Fitted(rgb, ", ".join(steps))


def fit_to(bundle: ModelBundle, source: str | Path | Image.Image) -> Fitted:
    """An uploaded image opened and fitted to the model: native size on the shorter side, sides a multiple of
    the VAE factor."""
    return fit(open_image(source), bundle.native_size, bundle.max_side, bundle.vae_scale_factor)
