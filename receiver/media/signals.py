"""Per-snapshot signals for stream health and frontends, computed from the smallest thumbnail.

- ``luma``: mean Rec. 601 luma (0-255) and ``luma_spread``, its standard deviation: a covered lens or a
  black frame has both low.
- ``dhash``: a 64-bit difference hash (9x8 greyscale, one bit per horizontal neighbour comparison). Frames
  of a frozen stream are within a few bits of each other even after JPEG re-encoding; different scenes
  are ~32 bits apart. Stored as a signed 64-bit integer (two's complement) because SQL BIGINT is signed.
- ``placeholder``: a BlurHash (https://blurha.sh, woltapp/blurhash's algorithm) with 4x3 components: a
  28-character string a frontend decodes into a blurred preview while the thumbnail loads. Chosen over a
  tiny data URI because it is an order of magnitude smaller in every JSON list and every BlurHash library renders it.

Work is bounded by the input: the thumbnail is scaled down to 32 px wide before the BlurHash sums, so the
pure-Python cosine transform costs well under a millisecond.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from operator import mul
from typing import Any

import numpy as np
from PIL import Image

from receiver.media.thumbnails import ThumbnailSet

BLURHASH_COMPONENTS = (4, 3)
_BLURHASH_WIDTH = 32
_B83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class Signals:
    luma: float
    luma_spread: float
    dhash: int  # unsigned, 0 .. 2**64-1
    placeholder: dict[str, Any]


def compute_signals(image_bytes: bytes) -> Signals:
    """Signals of a small JPEG/WebP (a thumbnail); raises OSError/ValueError for unreadable images."""
    with Image.open(io.BytesIO(image_bytes)) as im:
        im.draft("RGB", (64, 64))  # JPEG DCT scaling: decode at 1/8 size when that is still big enough
        rgb = im.convert("RGB")
    grey = rgb.convert("L")
    luma, spread = _mean_and_spread(grey.histogram())
    small_h = max(1, round(_BLURHASH_WIDTH * rgb.height / max(1, rgb.width)))
    small = rgb.resize((_BLURHASH_WIDTH, small_h), Image.Resampling.BOX)
    return Signals(
        luma=round(luma, 2),
        luma_spread=round(spread, 2),
        dhash=dhash(grey),
        placeholder={"blurhash": blurhash_encode(small, *BLURHASH_COMPONENTS)},
    )


_LEVELS = range(256)
_SQUARES = [v * v for v in _LEVELS]


def _mean_and_spread(histogram: list[int]) -> tuple[float, float]:
    """Mean and (population) standard deviation of a 256-bin histogram, as ImageStat computes them, with
    the sums in C (ImageStat loops over the bins in Python, a visible share of the signals' cost)."""
    n = sum(histogram)
    if not n:
        return 0.0, 0.0
    mean = sum(map(mul, histogram, _LEVELS)) / n
    variance = sum(map(mul, histogram, _SQUARES)) / n - mean * mean
    return mean, math.sqrt(max(0.0, variance))


def dhash(grey: Image.Image) -> int:
    """64-bit difference hash: bit set where a cell is brighter than its right neighbour."""
    px = grey.convert("L").resize((9, 8), Image.Resampling.BOX).tobytes()
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (1 if px[row * 9 + col] > px[row * 9 + col + 1] else 0)
    return bits


def hamming(a: int, b: int) -> int:
    return ((a ^ b) & _U64).bit_count()


def to_signed64(u: int) -> int:
    """Unsigned 64-bit -> the signed value with the same bits (what a BIGINT column can hold)."""
    u &= _U64
    return u - (1 << 64) if u >= 1 << 63 else u


def to_unsigned64(s: int) -> int:
    return s & _U64


# --- BlurHash (encoder only; https://github.com/woltapp/blurhash/blob/master/Algorithm.md) ----------------


def _b83(value: int, length: int) -> str:
    return "".join(_B83[(value // 83 ** (length - i - 1)) % 83] for i in range(length))


def _to_linear(v: int) -> float:
    x = v / 255
    return x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4


def _to_srgb(v: float) -> int:
    x = min(1.0, max(0.0, v))
    if x <= 0.0031308:
        return int(x * 12.92 * 255 + 0.5)
    return int((1.055 * x ** (1 / 2.4) - 0.055) * 255 + 0.5)


def _sign_pow(v: float, exp: float) -> float:
    return math.copysign(abs(v) ** exp, v)


def blurhash_encode(rgb: Image.Image, x_components: int = 4, y_components: int = 3) -> str:
    if not (1 <= x_components <= 9 and 1 <= y_components <= 9):
        raise ValueError("BlurHash components must be 1..9")
    w, h = rgb.size
    # In numpy: the pure-Python sums were about half of the signals' cost per frame (bench/pipeline.py).
    lin = _linear_table()[np.asarray(rgb.convert("RGB"))]  # (y, x, channel) in linear light
    cy, cx = _cosines(h, y_components), _cosines(w, x_components)
    # The cosine basis is separable: reduce the rows against each y basis, then the columns against each x
    # basis (same sums as the reference double loop).
    sums = cx @ (cy @ lin.reshape(h, w * 3)).reshape(y_components, w, 3)  # (j, i, channel)
    scale = 2 / (w * h)
    factors = [tuple((sums[j, i] * (scale / 2 if i == j == 0 else scale)).tolist())
               for j in range(y_components) for i in range(x_components)]
    dc, ac = factors[0], factors[1:]
    out = _b83((x_components - 1) + (y_components - 1) * 9, 1)
    if ac:
        actual_max = max(abs(c) for f in ac for c in f)
        quantised = int(max(0, min(82, math.floor(actual_max * 166 - 0.5))))
        max_value = (quantised + 1) / 166
        out += _b83(quantised, 1)
    else:
        max_value = 1.0
        out += _b83(0, 1)
    out += _b83((_to_srgb(dc[0]) << 16) + (_to_srgb(dc[1]) << 8) + _to_srgb(dc[2]), 4)
    for f in ac:
        q = [int(max(0, min(18, math.floor(_sign_pow(c / max_value, 0.5) * 9 + 9.5)))) for c in f]
        out += _b83(q[0] * 19 * 19 + q[1] * 19 + q[2], 2)
    return out


@functools.lru_cache(maxsize=64)
def _cosines(size: int, components: int) -> np.ndarray:
    """cos(pi * k * n / size) for k < components, n < size: one row per basis function."""
    return np.cos(np.pi * np.outer(np.arange(components), np.arange(size)) / size)


@functools.cache
def _linear_table() -> np.ndarray:
    # Built on first use, not at import (no import-time work).
    return np.array([_to_linear(v) for v in range(256)], dtype=np.float64)


def blurhash_average(hash_: str) -> tuple[int, int, int]:
    """The average colour a BlurHash encodes (its DC term); used by tests and handy for CSS backgrounds."""
    value = 0
    for ch in hash_[2:6]:
        value = value * 83 + _B83.index(ch)
    return value >> 16, (value >> 8) & 255, value & 255


def snapshot_columns(thumbs: ThumbnailSet) -> dict[str, Any]:
    """Column values for a Snapshot row, from the smallest of its freshly made thumbnails.

    Read from the encoded bytes, as `receiver backfill-signals` reads stored files, so both give the same
    values: reading the image before encoding would save a little time but move the dHash of fine-textured frames
    by up to 12 bits, more than the frozen-stream threshold.
    """
    if not thumbs.thumbnails:
        return {}
    return columns_from_bytes(min(thumbs.thumbnails, key=lambda th: th.width).data)


def columns_from_bytes(image_bytes: bytes) -> dict[str, Any]:
    s = compute_signals(image_bytes)
    return {"luma": s.luma, "luma_spread": s.luma_spread, "dhash": to_signed64(s.dhash),
            "placeholder": s.placeholder}
