"""Synthetic JPEG frames that look enough like live-stream snapshots to test and benchmark thumbnailing.

Pillow only (numpy is not a dependency). Every pixel comes from ``random.Random(seed)``: Pillow's
``effect_noise`` draws from C ``rand()``, which cannot be seeded from Python, so it would break
"same seed, same bytes" (which is also how a frozen stream is simulated).
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFont

KINDS = ("smooth", "photo", "noisy", "black")

# Noise is generated as one tile and repeated: a full 1080p frame of random bytes costs far more than a tile,
# and JPEG works on 8x8 blocks, so the repetition changes neither the look nor the compressed size.
_TILE = 256


def make_frame(
    seed: int = 0,
    *,
    width: int = 1920,
    height: int = 1080,
    kind: str = "photo",
    quality: int = 85,
    text: str | None = None,
) -> bytes:
    """Return a baseline JPEG of ``width`` x ``height``, identical for identical arguments.

    kinds: ``smooth`` (gradients), ``photo`` (gradients, soft shapes, texture, mild sensor noise; about
    250-350 KB at q85 for 1080p), ``noisy`` (heavy noise, the worst case for encoders) and ``black`` (a
    covered lens: near-black with a little noise). A frozen stream is the same seed again. ``text``
    stamps a label (say a timestamp) in the top-left corner so a demo shows frames changing.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind!r}; expected one of {', '.join(KINDS)}")
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    rng = random.Random(seed)
    size = (width, height)
    if kind == "smooth":
        im = _gradient(rng, size)
    elif kind == "photo":
        im = _photo(rng, size)
    elif kind == "noisy":
        im = Image.blend(_gradient(rng, size), _noise(rng, size), 0.6)
    else:
        im = Image.blend(Image.new("RGB", size, (3, 3, 4)), _noise(rng, size), 0.03)
    if text is not None:
        _label(im, text)
    return _jpeg(im, quality)


def bad_inputs() -> dict[str, bytes]:
    """Inputs the thumbnailer must reject or handle specially, keyed by what they exercise.

    ``png``, ``garbage``, ``empty``: not JPEGs. ``truncated``: a real photo frame cut in half.
    ``bomb``: a 64x64 JPEG whose SOF header claims 30000x30000 (900 Mpx), so nothing big is ever
    built. ``cmyk`` and ``grey``: valid JPEGs in other colour spaces. ``exif_rotated``: stored
    640x360 with red on the left and blue on the right, EXIF orientation 6, so it displays as a
    360x640 portrait with red on top.
    """
    rng = random.Random(1234)
    png = io.BytesIO()
    _gradient(rng, (64, 48)).save(png, "PNG")

    photo = make_frame(7, kind="photo")

    bomb = bytearray(_jpeg(_gradient(rng, (64, 64)), 85))
    sof = bomb.index(b"\xff\xc0")  # Pillow writes baseline SOF0
    bomb[sof + 5 : sof + 9] = (30000).to_bytes(2, "big") * 2

    cmyk = io.BytesIO()
    Image.new("CMYK", (320, 240), (0, 200, 200, 0)).save(cmyk, "JPEG", quality=90)

    rotated = Image.new("RGB", (640, 360), (220, 20, 20))
    rotated.paste((20, 20, 220), (320, 0, 640, 360))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    exif_rotated = io.BytesIO()
    rotated.save(exif_rotated, "JPEG", quality=90, exif=exif)

    return {
        "png": png.getvalue(),
        "garbage": rng.randbytes(4096),
        "truncated": photo[: len(photo) // 2],
        "empty": b"",
        "bomb": bytes(bomb),
        "cmyk": cmyk.getvalue(),
        "grey": _jpeg(_gradient(rng, (400, 300)).convert("L"), 85),
        "exif_rotated": exif_rotated.getvalue(),
    }


def _jpeg(im: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _gradient(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Three independently oriented gradients, one per channel, like sky and uneven light."""
    bands = []
    for _ in range(3):
        g = Image.radial_gradient("L") if rng.random() < 0.3 else Image.linear_gradient("L")
        g = g.rotate(rng.uniform(0, 360), resample=Image.Resampling.BILINEAR, fillcolor=128)
        lo, hi = sorted((rng.randint(0, 255), rng.randint(0, 255)))
        bands.append(g.point(lambda v, lo=lo, hi=hi: lo + (hi - lo) * v // 255))
    # Merged at 256x256 and scaled once: resizing is the dominant cost of building a frame.
    return Image.merge("RGB", bands).resize(size, Image.Resampling.BILINEAR)


def _noise(rng: random.Random, size: tuple[int, int], tile: int = _TILE) -> Image.Image:
    """Uniform RGB noise covering ``size``, built from one random tile."""
    cell = Image.frombytes("RGB", (tile, tile), rng.randbytes(tile * tile * 3))
    out = Image.new("RGB", size)
    for y in range(0, size[1], tile):
        for x in range(0, size[0], tile):
            out.paste(cell, (x, y))
    return out


def _photo(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    w, h = size
    # Composed at half size and scaled up once: the upscale gives shapes the soft edges of a real lens,
    # and every full-size pass (resize, blend) costs milliseconds.
    half = (max(1, w // 2), max(1, h // 2))
    im = _gradient(rng, half)
    draw = ImageDraw.Draw(im)
    for _ in range(40):
        colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        x0, y0 = rng.randint(-half[0] // 4, half[0]), rng.randint(-half[1] // 4, half[1])
        x1, y1 = x0 + rng.randint(8, max(8, half[0] // 3)), y0 + rng.randint(8, max(8, half[1] // 3))
        shape = rng.random()
        if shape < 0.4:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape < 0.8:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            points = [(rng.randint(x0, x1), rng.randint(y0, y1)) for _ in range(5)]
            draw.polygon(points, fill=colour)
    # Blotchy texture at a few scales (clouds, walls, foliage): coarse noise scaled up.
    for cell, alpha in ((24, 0.25), (4, 0.12)):
        coarse = _noise(rng, (max(1, half[0] // cell), max(1, half[1] // cell)), tile=64)
        im = Image.blend(im, coarse.resize(half, Image.Resampling.BICUBIC), alpha)
    im = im.resize(size, Image.Resampling.BILINEAR)
    # Sensor noise; its strength is what puts a 1080p q85 frame in the 250-350 KB range.
    return Image.blend(im, _noise(rng, size), 0.05)


def _label(im: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=max(10, im.height // 30))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, im.height // 150)
    draw.rectangle((0, 0, right - left + 3 * pad, bottom - top + 3 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, font=font, fill=(255, 255, 255))
