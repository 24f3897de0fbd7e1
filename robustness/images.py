"""Loading image files into the ``(H, W, 3)`` RGB ``uint8`` arrays the distortions take.

Rules, applied in this order (Pillow does the decoding; only the first frame of a multi-frame file
is read):

1. EXIF orientation is applied (:func:`PIL.ImageOps.exif_transpose`), so the array is upright and
   has the displayed width and height (orientations 5-8 swap them).
2. 16-bit and 32-bit integer greyscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I``) is scaled
   from 0-65535 to 0-255 by ``rint(v / 257)`` (full-scale white 65535 becomes 255, not a clipped
   value; 32-bit values outside 0-65535 are clipped first), then replicated to 3 channels.
   ``F`` (32-bit float) images are rejected: their value range is not defined.
3. Images with transparency (``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``, palette ``P`` images and
   ``L``/``RGB`` images with a ``transparency`` entry) are converted to RGBA by Pillow and
   composited onto opaque white: ``out = rint((c * a + 255 * (255 - a)) / 255)`` per channel, with
   ``a`` the 0-255 alpha. Fully transparent pixels become white (255, 255, 255).
4. Everything else goes through Pillow's ``convert("RGB")``: ``L`` and ``1`` are replicated to three
   channels, ``P`` is looked up in its palette, ``CMYK`` uses Pillow's naive formula
   ``R = rint((255 - C) * (255 - K) / 255)`` (likewise G from M, B from Y; no ICC colour
   management), ``YCbCr``, ``LAB``, ``HSV`` use Pillow's conversions.

Every file that is missing, unreadable, not an image, truncated, a decompression bomb or of an
unsupported mode raises :class:`ImageLoadError` (a ``ValueError``) whose message starts with the
file's path, so a caller can skip it and report it. Truncated files are only detected while
Pillow's global ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is ``False`` (its default; this package
never sets it).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageLoadError", "load_image", "to_rgb_array"]

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageLoadError(ValueError):
    """An image file could not be read or converted; the message starts with the file's path."""


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` uint8 RGBA -> ``(H, W, 3)`` uint8 RGB over opaque white, rounded to nearest."""
    colour = rgba[:, :, :3].astype(np.float64)
    alpha = rgba[:, :, 3:].astype(np.float64)
    out = (colour * alpha + 255.0 * (255.0 - alpha)) / 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_rgb_array(image: Image.Image, source: str = "image") -> np.ndarray:
    """Convert a Pillow image to a ``uint8`` array of shape ``(H, W, 3)`` by the module's rules 2-4.

    Args:
        image: any Pillow image. EXIF orientation is *not* applied here (see :func:`load_image`).
        source: name used in error messages (usually the file path).

    Returns:
        ``uint8`` array ``(H, W, 3)``, RGB, 0-255, a fresh writable copy.

    Raises:
        ImageLoadError: for a mode with no defined conversion (e.g. ``F``) or an empty image.
    """
    if image.width < 1 or image.height < 1:
        raise ImageLoadError(f"{source}: empty image ({image.width}x{image.height})")
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(np.clip(values, 0, 65535) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        raise ImageLoadError(f"{source}: floating-point image mode 'F' has no defined 0-255 range")
    try:
        if image.has_transparency_data:
            return _composite_on_white(np.asarray(image.convert("RGBA"), dtype=np.uint8))
        return np.array(image.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as error:
        raise ImageLoadError(f"{source}: cannot convert mode {mode!r} to RGB: {error}") from error


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an upright RGB ``uint8`` array of shape ``(H, W, 3)``.

    Args:
        path: image file path (any format Pillow reads).

    Returns:
        ``uint8`` array ``(H, W, 3)``, RGB, 0-255, EXIF orientation applied (see the module rules).

    Raises:
        ImageLoadError: if the file is missing, not an image, truncated, too large (Pillow's
            decompression-bomb limit) or of an unsupported mode; the message starts with the path.
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
    except Image.UnidentifiedImageError as error:
        raise ImageLoadError(f"{source}: not an image file Pillow can read") from error
    except MemoryError:
        raise
    except Exception as error:  # Pillow raises many types on corrupt input
        # OSError ("image file is truncated"), SyntaxError, EOFError, struct.error, IndexError,
        # DecompressionBombError/Warning, ...: every undecodable file is the same failure to callers.
        raise ImageLoadError(f"{source}: cannot decode image ({type(error).__name__}: {error})") from error
