"""Decoding one image file: resized whole, or cropped at full resolution.

One module for every way a file becomes pixels, used by the memory store (every file decoded
once, :mod:`auxilia.data.files`) and the file store (files decoded when a batch is read,
:mod:`auxilia.data.file_images`), so that both give the same pixels for the same request.

Decoder: PIL. torchvision 0.29 deprecates ``torchvision.io.decode_jpeg`` for TorchCodec (one
more native dependency); PIL decodes every format the sources accept, and its JPEG ``draft``
mode decodes at 1/2, 1/4 or 1/8 of the size in the DCT domain when a crop is that much larger
than the output, which makes a 224 px crop of a large photo several times cheaper.
"""

from __future__ import annotations

import io
import math
import os
import stat

import numpy as np
from PIL import Image

__all__ = ["center_box", "decode_box", "decode_resized", "random_resized_box", "read_regular",
           "to_8bit"]

Box = tuple[float, float, float, float]
"""``(left, top, right, bottom)`` in the file's full-resolution pixels."""


def read_regular(path: str) -> bytes:
    """The bytes of a regular file; FIFOs, devices and sockets are refused, never read.

    ``O_NONBLOCK`` keeps the open of a FIFO from waiting for a writer; the type is checked on
    the opened file, so it cannot change between the check and the read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                    or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "special")
            raise OSError(f"{kind}, not a regular file; refused")
        return f.read()


def to_8bit(im: Image.Image) -> Image.Image:
    """Scales 16-bit greyscale to ``L`` (``v / 257``, so 65535 becomes 255).

    16-bit means mode ``I;16*``, or mode ``I`` read from a PNG (older Pillow). PIL's own
    conversion of these modes clips every value above 255; other ``I`` files (32-bit TIFF)
    are left to it.
    """
    if not (im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG")):
        return im
    values = np.asarray(im).astype(np.float64)
    scaled = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def decode_resized(data: bytes, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """The whole image in ``mode`` (``RGB`` or ``L``), stretched to ``size`` = ``(h, w)``
    (bilinear, antialiased) unless None: ``[H, W]`` or ``[H, W, C]`` ``uint8``."""
    with Image.open(io.BytesIO(data)) as im:
        im = to_8bit(im).convert(mode)
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(im)


def random_resized_box(width: int, height: int, rng: np.random.Generator,
                       scale: tuple[float, float], ratio: tuple[float, float]) -> Box:
    """A random crop covering ``scale`` of the area with aspect ratio in ``ratio`` (w / h, drawn
    log-uniformly), as in the Inception / ImageNet training recipe (Szegedy et al. 2015).

    Ten tries; when none fits, the largest centred crop whose ratio lies in ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return float(left), float(top), float(left + w), float(top + h)
    aspect = width / height
    w, h = ((width, round(width / ratio[0])) if aspect < ratio[0] else
            (round(height * ratio[1]), height) if aspect > ratio[1] else (width, height))
    left, top = (width - w) // 2, (height - h) // 2
    return float(left), float(top), float(left + w), float(top + h)


def center_box(width: int, height: int, size: int, fraction: float) -> Box:
    """The evaluation crop: the shorter side resized to ``size / fraction``, then the centred
    ``size`` x ``size`` square (``fraction`` 0.875: 256 → 224), as a box of the original."""
    side = min(width, height) * fraction
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def decode_box(path: str, mode: str, size: int, box_of: object) -> np.ndarray:
    """Decodes ``path`` and resizes the box ``box_of(width, height)`` to ``size`` x ``size``.

    A JPEG is decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8) that keeps the box at
    least ``size`` pixels on each side (PIL's draft mode); the box is resized with PIL's
    antialiased bilinear filter.

    Args:
        path: the image file.
        mode: ``RGB`` or ``L``.
        size: the output side.
        box_of: ``(width, height) -> Box`` in full-resolution pixels.

    Returns:
        ``[size, size]`` or ``[size, size, C]`` ``uint8``.
    """
    with Image.open(io.BytesIO(read_regular(path))) as im:
        width, height = im.size
        left, top, right, bottom = box_of(width, height)  # type: ignore[operator]
        if im.format == "JPEG":
            need = (math.ceil(width * size / max(right - left, 1)),
                    math.ceil(height * size / max(bottom - top, 1)))
            im.draft(None, need)  # type: ignore[arg-type]
        fx, fy = im.size[0] / width, im.size[1] / height
        im = to_8bit(im).convert(mode)
        out = im.resize((size, size), Image.Resampling.BILINEAR,
                        box=(left * fx, top * fy, right * fx, bottom * fy))
        return np.asarray(out)
