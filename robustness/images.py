"""Loading image files into the ``(H, W, 3)`` RGB ``uint8`` arrays the distortions take.

Rules, applied in this order (Pillow does the decoding):

1. EXIF orientation is applied (:func:`PIL.ImageOps.exif_transpose`), so the array is upright.
2. 16-bit and 32-bit integer greyscale (``I;16``, ``I;16B``, ``I;16L``, ``I``) is scaled from the
   0-65535 range to 0-255 by ``rint(v / 257)`` (full-scale white becomes 255), then replicated to 3
   channels. ``F`` (float) images are rejected: their value range is not defined.
3. Images with transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa`` and palette ``P`` images with
   a ``transparency`` entry) are alpha-composited onto an opaque white background.
4. Everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGB``) goes through
   Pillow's ``convert("RGB")``.

Files that are missing, truncated or not images raise :class:`ImageLoadError` naming the file.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageLoadError", "load_image", "to_rgb_array"]

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}


class ImageLoadError(ValueError):
    """An image file could not be read or converted; the message names the file."""


def to_rgb_array(image: Image.Image, source: str = "image") -> np.ndarray:
    """Convert a Pillow image to a ``uint8`` array of shape ``(H, W, 3)`` by the module's rules.

    Args:
        image: any Pillow image. EXIF orientation is *not* applied here (see :func:`load_image`).
        source: name used in error messages (usually the file path).

    Returns:
        ``uint8`` array ``(H, W, 3)``, RGB, 0-255.

    Raises:
        ImageLoadError: for a mode with no defined conversion (e.g. ``F``) or an empty image.
    """
    if image.width < 1 or image.height < 1:
        raise ImageLoadError(f"{source}: empty image ({image.width}x{image.height})")
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageLoadError(f"{source}: floating-point image mode 'F' has no defined 0-255 range")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8).copy()
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as error:
        raise ImageLoadError(f"{source}: cannot convert mode {mode!r} to RGB: {error}") from error


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an upright RGB ``uint8`` array of shape ``(H, W, 3)``.

    Args:
        path: image file path (any format Pillow reads).

    Returns:
        ``uint8`` array ``(H, W, 3)``, RGB, 0-255, EXIF orientation applied.

    Raises:
        ImageLoadError: if the file is missing, not an image, truncated or of an unsupported mode;
            the message names the file.
    """
    source = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image.load()
                upright = ImageOps.exif_transpose(image)
                return to_rgb_array(upright, source)
    except ImageLoadError:
        raise
    except FileNotFoundError as error:
        raise ImageLoadError(f"{source}: file not found") from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(f"{source}: not an image file Pillow can read") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as error:
        raise ImageLoadError(f"{source}: cannot decode image ({error})") from error
