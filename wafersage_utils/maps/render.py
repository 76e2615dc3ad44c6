"""Wafer map to image: the fixed palette, nearest-neighbour scaling, lossless PNG, and a cache.

Every cell of a map becomes a block of pixels in :data:`.conventions.PALETTE` (no die white, pass light
blue, fail red); the map is scaled to a `size` x `size` square (each axis on its own, so the wafer stays
a disc in the normalised coordinates of :mod:`.conventions`). Images are cached by the hash of the map,
the size and the palette, so every later stage reuses them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..runner.runs import atomic_target
from .conventions import PALETTE

_LUT = np.array(PALETTE, dtype=np.uint8)  # (3 codes, RGB)


def scaled_codes(m: np.ndarray, size: int) -> np.ndarray:
    """Die codes (size, size) uint8 of a map, nearest-neighbour scaled."""
    h, w = m.shape
    # Cell i covers the output pixels p with floor(p * h / size) == i: repeat each row and column that often.
    row_counts = np.bincount((np.arange(size) * h) // size, minlength=h)
    col_counts = np.bincount((np.arange(size) * w) // size, minlength=w)
    return np.repeat(np.repeat(m.astype(np.uint8, copy=False), row_counts, axis=0), col_counts, axis=1)


def render_array(m: np.ndarray, size: int, lut: np.ndarray = _LUT) -> np.ndarray:
    """RGB image (size, size, 3) uint8 of a map, nearest-neighbour scaled, in `lut` (3 die codes x RGB;
    default the fixed palette)."""
    return lut[scaled_codes(m, size)]


def to_image(m: np.ndarray, size: int) -> Image.Image:
    """PIL image of a map: 8-bit palette image in the fixed palette (exact colours, a third of RGB's bytes)."""
    img = Image.fromarray(scaled_codes(m, size), mode="P")
    img.putpalette(_LUT.ravel().tolist())
    return img


def image_key(m: np.ndarray, size: int) -> str:
    """Content hash naming a rendered image: the map's bytes and shape, the size and the palette."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(m, dtype=np.uint8).tobytes())
    h.update(f"{m.shape}|{size}|{PALETTE}".encode())
    return h.hexdigest()[:20]


def save_png(img: Image.Image, path: Path) -> Path:
    """Write a lossless PNG via a temporary name, so a crash never leaves half a file."""
    with atomic_target(path) as tmp:
        img.save(tmp, format="PNG", compress_level=1, bits=2)  # 3 colours: 2 bits a pixel
    return path


def render_cached(maps, size: int, folder: Path) -> list[Path]:
    """PNG path for each map under folder/<size>/, rendering only the images not cached yet."""
    out_dir = Path(folder) / str(size)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in maps:
        path = out_dir / f"{image_key(m, size)}.png"
        if not path.exists():
            save_png(to_image(m, size), path)
        paths.append(path)
    return paths
