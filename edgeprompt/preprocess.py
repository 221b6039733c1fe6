"""Image preprocessing without torch: a numpy/PIL twin of open_clip's eval transform.

open_clip's eval transform (``open_clip.image_transform(size, is_train=False, mean, std)``) is, for a square target:
``Resize(size, BICUBIC)`` (shorter side) -> ``CenterCrop(size)`` -> ``convert('RGB')`` -> ``ToTensor`` -> ``Normalize``.
This module reproduces torchvision's size arithmetic and crop-offset rounding exactly and resizes with PIL, as
torchvision does for PIL inputs, so the pixels are bit-identical. The order matters: torchvision resizes the image
in its *own* mode (palette images are resized with NEAREST by PIL, RGBA with premultiplied alpha) and converts to
RGB last, and we do the same.

Re-implemented preprocessing is the most likely place for a silent accuracy loss on a device, so
``tests/test_preprocess.py`` checks this against open_clip on images of awkward sizes and modes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edgeprompt.errors import ConfigError, DataError
from edgeprompt.manifest import PreprocessSpec

log = logging.getLogger(__name__)

# PreprocessSpec.interpolation -> PIL filter (the same mapping torchvision uses for PIL inputs)
_PIL_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

ImageLike = str | os.PathLike[str] | Image.Image | np.ndarray
CHANNEL_ORDERS = ("rgb", "bgr")


def frame_to_image(frame: np.ndarray, channels: str | None) -> Image.Image:
    """A numpy video frame (H, W, 3) uint8 as an RGB PIL image; ``channels`` says its order (OpenCV's is ``bgr``).

    Raises:
        ConfigError: the order is not said, or the array is not an (H, W, 3) uint8 frame.
    """
    from edgeprompt.errors import ConfigError

    if channels not in CHANNEL_ORDERS:
        raise ConfigError(f"numpy frames need channels='rgb' or 'bgr' (OpenCV's frames are BGR), got {channels!r}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ConfigError(f"a numpy frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    return Image.fromarray(np.ascontiguousarray(frame[..., ::-1] if channels == "bgr" else frame), "RGB")


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file and decode it fully, as RGB.

    The pixels are decoded here (not lazily) so that a truncated or corrupt file fails now, with its name,
    rather than deep inside a batch. EXIF orientation is not applied, matching the training loader.

    Args:
        path: Image file.

    Returns:
        The decoded image in mode ``RGB``.

    Raises:
        DataError: The file is missing, is not an image, or is corrupt.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except FileNotFoundError as e:
        raise DataError(f"image not found: {path}") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # UnidentifiedImageError and "image file is truncated" are both OSErrors
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read image {path}: {reason} (remove or replace the file)") from e


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB, with high-bit-depth greyscale scaled rather than clipped.

    PIL's own ``convert("RGB")`` clips 16-bit ("I;16", "I") and float ("F") pixels to 0..255, so a 16-bit PNG reads
    as white and a float TIFF in [0, 1] as black. Here the value range decides the scale: at most 1 is a [0, 1]
    float image, at most 255 an 8-bit one stored wide, anything larger a 16-bit one; NaNs become 0.
    """
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im.convert("RGB")
    a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(a.max()) if a.size else 0.0
    scale = 255.0 if im.mode == "F" and top <= 1.0 else 1.0 if top <= 255.0 else 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L").convert("RGB")


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) of torchvision's ``Resize(size)`` with an int size (shorter side -> ``size``).

    Same float arithmetic as torchvision: the long side becomes ``int(size * long / short)`` (truncated).
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w


def center_crop_box(height: int, width: int, crop: int) -> tuple[int, int, int, int]:
    """PIL crop box (left, top, right, bottom) of torchvision's ``CenterCrop(crop)`` on an image at least that big.

    torchvision rounds the offsets with Python's ``round`` (half to even), e.g. an odd margin of 33 gives 16.
    """
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return left, top, left + crop, top + crop


def _resize(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Resize (and crop) in the image's own mode, exactly as the torchvision transform does."""
    try:
        resample = _PIL_FILTERS[spec.interpolation]
    except KeyError:
        raise ConfigError(f"unknown interpolation {spec.interpolation!r} in the preprocessing spec: "
                          f"use one of {sorted(_PIL_FILTERS)}") from None
    size = spec.image_size
    w, h = img.size
    if spec.resize == "squash":
        # Resize((size, size)): both sides, aspect ratio not kept, no crop
        return img if (h, w) == (size, size) else img.resize((size, size), resample)
    if spec.resize != "shortest":
        raise ConfigError(f"unknown resize mode {spec.resize!r} in the preprocessing spec: use 'shortest' or 'squash'")
    new_h, new_w = resized_size(h, w, size)
    if (new_h, new_w) != (h, w):  # torchvision skips the resize when the size already matches
        img = img.resize((new_w, new_h), resample)
    # after a shortest-side resize both sides are >= size, so torchvision's padding branch never applies
    return img.crop(center_crop_box(new_h, new_w, size))


def preprocess(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """Turn one image into the graph's pixel input (not normalised).

    Args:
        img: A PIL image in any mode.
        spec: The bundle's preprocessing spec.

    Returns:
        float32 array (3, H, W), RGB in [0, 1] (``ToTensor`` semantics).
    """
    img = to_rgb(_resize(img, spec))  # resize, then convert: open_clip's order
    arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    # ToTensor divides in float32, so the same IEEE operation gives bit-identical values
    return np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)


def preprocess_batch(images: Sequence[ImageLike], spec: PreprocessSpec, channels: str | None = None) -> np.ndarray:
    """Preprocess several images (paths or PIL images) into one batch.

    Args:
        images: File paths or PIL images.
        spec: The bundle's preprocessing spec.

    Returns:
        float32 array (N, 3, H, W) in [0, 1].

    Raises:
        DataError: An image file cannot be read (the message names it).
    """
    size = spec.image_size
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, item in enumerate(images):
        if isinstance(item, np.ndarray):
            img = frame_to_image(item, channels)
        else:
            img = item if isinstance(item, Image.Image) else load_image(item)
        out[i] = preprocess(img, spec)
    return out


def normalize(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Apply the spec's mean/std to pixels in [0, 1], for graphs that do not normalise internally.

    Args:
        x: float32 (3, H, W) or (N, 3, H, W).
        spec: The preprocessing spec carrying ``mean`` and ``std``.

    Returns:
        float32 array of the same shape, ``(x - mean) / std`` per channel (torchvision ``Normalize``).
    """
    shape = (3, 1, 1) if x.ndim == 3 else (1, 3, 1, 1)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(shape)
    std = np.asarray(spec.std, dtype=np.float32).reshape(shape)
    return ((x.astype(np.float32, copy=False) - mean) / std).astype(np.float32, copy=False)
