"""JPEG snapshot -> thumbnails, bytes in and bytes out.

Safety comes before decoding: the SOF header is read by hand so the pixel cap is enforced (and truncation
detected) without Pillow building anything, and no Pillow global is ever set, so this module can run in
any thread next to other Pillow users.

Speed comes from decoding once, at reduced size: ``Image.draft`` asks libjpeg for DCT scaling (1/2, 1/4,
1/8), so a 1920x1080 frame is decoded straight to 480x270 when the largest thumbnail is 320 wide. The
box passed to ``draft`` keeps the frame's aspect ratio, because draft picks the scale from the *smaller*
of the two axis ratios: a square 320x320 box on 16:9 gives scale 1/2, not 1/4.

Decoding at 1x the largest width (``DRAFT_OVERSAMPLE``) rather than 2x: after the encode both give the
same quality as encoding a full-resolution resize, because the encoder's loss dwarfs the draft's, and 1x
is much cheaper. Smaller widths are resized from the largest *result*, not the draft image: well above
the quality bar and cheaper. bench/thumbnails.py measures both choices (figures in bench/RESULTS.md).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from receiver.exceptions import ImageError, NotAJpeg, TooManyPixels, TruncatedImage

CONTENT_TYPES = {"jpeg": "image/jpeg", "webp": "image/webp"}

# Decode so that the scaled image is at least this many times the largest requested width.
DRAFT_OVERSAMPLE = 1

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"
_SOS = 0xDA
# Every SOFn marker (C0-CF) except DHT (C4), JPG (C8) and DAC (CC), which share the range.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers with no length field.
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}
_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the image upright (same table as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"<", "text/HTML/XML (an error page?)"),
    (b"{", "JSON (an error response?)"),
)


@dataclass(frozen=True)
class Thumbnail:
    width: int
    height: int
    format: str  # "jpeg" | "webp"
    data: bytes
    content_type: str


@dataclass(frozen=True)
class ThumbnailSet:
    source_width: int  # as displayed, i.e. after EXIF orientation
    source_height: int
    thumbnails: list[Thumbnail]  # in the order the widths were requested


@dataclass(frozen=True)
class _Header:
    width: int
    height: int
    sos_offset: int


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) as coded in the JPEG's SOF header, before EXIF orientation; nothing is decoded.

    Raises NotAJpeg when the bytes are not a JPEG or the header is malformed, TruncatedImage when they end
    before the first scan.
    """
    header = _scan_header(data)
    return header.width, header.height


def make_thumbnails(
    data: bytes,
    widths: Sequence[int],
    fmt: str = "jpeg",
    *,
    quality: int = 80,
    max_pixels: int = 40_000_000,
) -> ThumbnailSet:
    """Decode the JPEG ``data`` once and encode one thumbnail per requested width.

    Heights keep the (EXIF-oriented) aspect ratio. A width above the source's is clamped to it, never
    upscaled, and the thumbnail reports its real size. Output is RGB without metadata (EXIF, ICC, XMP).

    Raises NotAJpeg (not a JPEG at all), TooManyPixels (the header claims more than ``max_pixels``; this is
    also how decompression bombs end), TruncatedImage (no EOI marker after the scan, or libjpeg ran out of
    data) and ImageError (looks like a JPEG but libjpeg cannot decode it). ValueError for bad arguments.
    A file cut short and then given a fresh EOI marker is not caught: libjpeg only warns and grey-fills.
    """
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty list of positive integers, got {list(widths)!r}")
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unknown thumbnail format {fmt!r}; expected 'jpeg' or 'webp'")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be within 1..100, got {quality}")

    images, src_w, src_h = _render(data, widths, max_pixels)
    thumbs = [
        Thumbnail(im.width, im.height, fmt, _encode(im, fmt, quality), CONTENT_TYPES[fmt]) for im in images
    ]
    return ThumbnailSet(src_w, src_h, thumbs)


def _render(data: bytes, widths: Sequence[int], max_pixels: int) -> tuple[list[Image.Image], int, int]:
    """The thumbnails as RGB images before encoding (kept apart so tests and the bench can measure
    the resize chain without the encoder's loss), plus the upright source size."""
    decoded, src_w, src_h = _decode(data, max(widths), max_pixels)
    sizes = [_fit(w, src_w, src_h) for w in widths]
    big = max(sizes)
    largest = decoded.resize(big, Image.Resampling.LANCZOS)
    images = [largest if size == big else largest.resize(size, Image.Resampling.LANCZOS) for size in sizes]
    return images, src_w, src_h


def _decode(data: bytes, max_width: int, max_pixels: int) -> tuple[Image.Image, int, int]:
    """Decode once, DCT-scaled to the smallest size still >= ``max_width`` (times DRAFT_OVERSAMPLE).

    Returns the upright RGB image and the source's upright (width, height).
    """
    header = _scan_header(data)
    # Also stay under Pillow's own bomb limit (read, never set): Image.open would otherwise warn or raise
    # DecompressionBombError for sizes we accepted, and pytest turns the warning into an error.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if header.width * header.height > limit:
        raise TooManyPixels(
            f"JPEG header claims {header.width}x{header.height} = {header.width * header.height} pixels, "
            f"over the limit of {limit}"
        )
    # Checked before decoding because Pillow grey-fills a truncated JPEG instead of failing whenever some
    # other code in the process has set ImageFile.LOAD_TRUNCATED_IMAGES. Entropy-coded data escapes every
    # 0xFF, so an EOI after the first SOS can only be the real end of the image.
    if data.rfind(_EOI) < header.sos_offset:
        raise TruncatedImage(f"JPEG has no EOI marker after its scan data ({len(data)} bytes); cut short?")

    try:
        im = Image.open(io.BytesIO(data), formats=["JPEG"])
    except Image.DecompressionBombError as e:
        raise TooManyPixels(str(e)) from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise NotAJpeg(f"Pillow cannot read the JPEG header: {e}") from e
    # MPO (multi-picture JPEG from some cameras) is a JPEG whose first frame is what we want.
    if im.format not in ("JPEG", "MPO"):
        raise NotAJpeg(f"expected a JPEG, Pillow opened it as {im.format}")
    if im.size != (header.width, header.height):
        raise ImageError(f"JPEG header disagrees with Pillow: {header.width}x{header.height} vs {im.size}")
    orientation = _orientation(im)
    swap = orientation in (5, 6, 7, 8)  # displayed turned by 90 degrees: widths apply to the stored height
    src_w, src_h = (im.height, im.width) if swap else im.size
    big_w, big_h = _fit(max_width, src_w, src_h)
    box = (big_w * DRAFT_OVERSAMPLE, big_h * DRAFT_OVERSAMPLE)
    im.draft("RGB", (box[1], box[0]) if swap else box)
    try:
        im.load()
    except OSError as e:
        # Only reachable past the EOI check with a corrupt scan; Pillow says "image file is truncated".
        if "truncated" in str(e):
            raise TruncatedImage(f"JPEG data ends before the image is complete: {e}") from e
        raise ImageError(f"cannot decode JPEG: {e}") from e
    # draft("RGB") already made YCbCr decode straight to RGB; greyscale and CMYK are converted here.
    decoded: Image.Image = im if im.mode == "RGB" else im.convert("RGB")
    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    if transpose is not None:
        decoded = decoded.transpose(transpose)
    return decoded, src_w, src_h


def _fit(width: int, src_w: int, src_h: int) -> tuple[int, int]:
    w = min(width, src_w)
    return w, max(1, round(w * src_h / src_w))


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (ValueError, OSError, SyntaxError, struct.error, KeyError, TypeError, IndexError):
        # A broken EXIF block should not lose the frame: show it as stored.
        return 1
    return value if isinstance(value, int) else 1


def _encode(im: Image.Image, fmt: str, quality: int) -> bytes:
    out = io.BytesIO()
    if fmt == "jpeg":
        # Baseline, default Huffman tables, 4:2:0, chosen for speed: optimize=True roughly doubles the
        # encode for somewhat smaller files. Progressive would add a pass too. No exif/icc_profile
        # argument = no metadata.
        im.save(out, "JPEG", quality=quality, optimize=False, progressive=False)
    else:
        # method=0 is libwebp's fastest, several times faster than the default method 4, which saves
        # only a little more on a photo frame.
        im.save(out, "WEBP", quality=quality, method=0)
    return out.getvalue()


def _scan_header(data: bytes) -> _Header:
    """Walk the marker segments up to the first SOS and return the frame size and where the scan starts."""
    if not data.startswith(_SOI + b"\xff"):
        raise NotAJpeg(f"not a JPEG: {_describe(data)}")
    size: tuple[int, int] | None = None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise NotAJpeg(f"malformed JPEG: expected a marker at byte {pos}, found 0x{data[pos]:02x}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            raise NotAJpeg(f"malformed JPEG: segment 0x{marker:02x} at byte {pos} has length {length}")
        if marker in _SOF_MARKERS:
            if pos + 9 > len(data):
                break
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            if width == 0 or height == 0:
                raise NotAJpeg(f"JPEG frame header gives size {width}x{height}")
            size = (width, height)
        elif marker == _SOS:
            if size is None:
                raise NotAJpeg("malformed JPEG: scan data starts before any frame header (SOF)")
            return _Header(size[0], size[1], pos)
        pos += 2 + length
    if size is None:
        raise TruncatedImage(f"JPEG ends inside its headers after {len(data)} bytes, before the frame size")
    raise TruncatedImage(f"JPEG ends inside its headers after {len(data)} bytes, before the scan data")


def _describe(data: bytes) -> str:
    if not data:
        return "empty body (0 bytes)"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return f"looks like {name} ({len(data)} bytes)"
    if data[4:8] == b"ftyp":
        return f"looks like an ISO media file such as HEIC/AVIF/MP4 ({len(data)} bytes)"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return f"looks like WEBP ({len(data)} bytes)"
    return f"unrecognised data starting {data[:8].hex(' ')} ({len(data)} bytes)"
