"""Decoding an uploaded PNG/JPEG into the pixel array the model takes.

The seed classified image files by hand; this does the same checks once, on the server: the
bytes must be a PNG or JPEG, are converted to the model's channel count (grey or RGB) and
resized to its height and width if they differ.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadRequest

FORMATS = {"PNG", "JPEG"}
MAX_PIXELS = 4096 * 4096
MODES = {1: "L", 3: "RGB"}


def decode_image(data: bytes, input_shape: tuple[int, ...]) -> np.ndarray:
    """One `input_shape` float32 array of raw 0..255 pixels; `BadRequest` if it is no image."""
    height, width, channels = input_shape
    if channels not in MODES:
        raise BadRequest(f"this model takes {channels}-channel inputs, not images")
    if not data:
        raise BadRequest("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise BadRequest(f"expected a PNG or JPEG image, got {image.format or 'unknown'}")
            if image.width * image.height > MAX_PIXELS:
                raise BadRequest(f"image of {image.width}x{image.height} pixels is too large")
            image.load()
            pixels = image.convert(MODES[channels])
    except BadRequest:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Warning) as error:
        raise BadRequest(f"cannot decode the image: {error}") from None
    except Image.DecompressionBombError as error:
        raise BadRequest(f"cannot decode the image: {error}") from None
    if pixels.size != (width, height):
        pixels = pixels.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(pixels, dtype=np.float32)
    return array.reshape(height, width, channels)
