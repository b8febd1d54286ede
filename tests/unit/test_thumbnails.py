"""receiver.media.thumbnails and the frame generator in receiver.sim.frames."""

from __future__ import annotations

import io
import math

import pytest
from PIL import Image, ImageChops, ImageFile, ImageStat

from receiver.exceptions import ImageError, NotAJpeg, TooManyPixels, TruncatedImage
from receiver.media.thumbnails import Thumbnail, _decode, _render, image_size, make_thumbnails
from receiver.sim.frames import bad_inputs, make_frame


@pytest.fixture(scope="module")
def photo() -> bytes:
    return make_frame(1, kind="photo")


@pytest.fixture(scope="module")
def bad() -> dict[str, bytes]:
    return bad_inputs()


def decode(thumb: Thumbnail) -> Image.Image:
    im = Image.open(io.BytesIO(thumb.data))
    im.load()
    return im


def psnr(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    stat = ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB")))
    mse = sum(stat.sum2) / (3 * a.width * a.height)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1920, 1080, [(320, 180), (160, 90)]),  # 16:9
        (1440, 1080, [(320, 240), (160, 120)]),  # 4:3
        (1080, 1920, [(320, 569), (160, 284)]),  # portrait 9:16, heights rounded
    ],
)
def test_sizes_keep_aspect_ratio(width: int, height: int, expected: list[tuple[int, int]]) -> None:
    data = make_frame(0, width=width, height=height, kind="smooth")
    result = make_thumbnails(data, [320, 160])
    assert (result.source_width, result.source_height) == (width, height)
    assert [(t.width, t.height) for t in result.thumbnails] == expected
    assert [decode(t).size for t in result.thumbnails] == expected


def test_order_follows_request_and_height_is_at_least_one() -> None:
    data = make_frame(0, width=1920, height=40, kind="smooth")
    result = make_thumbnails(data, [16, 640, 100])
    assert [(t.width, t.height) for t in result.thumbnails] == [(16, 1), (640, 13), (100, 2)]


def test_jpeg_output(photo: bytes) -> None:
    thumb = make_thumbnails(photo, [320]).thumbnails[0]
    im = decode(thumb)
    assert (thumb.format, thumb.content_type, im.format, im.mode) == ("jpeg", "image/jpeg", "JPEG", "RGB")
    assert "exif" not in im.info and "icc_profile" not in im.info


def test_webp_output_decodes_as_webp(photo: bytes) -> None:
    result = make_thumbnails(photo, [320, 160], "webp", quality=70)
    for thumb in result.thumbnails:
        im = decode(thumb)
        assert (thumb.format, thumb.content_type, im.format) == ("webp", "image/webp", "WEBP")
        assert im.size == (thumb.width, thumb.height)


def test_decodes_once_at_reduced_size(photo: bytes) -> None:
    # An aspect-correct draft box lets libjpeg scale 1920x1080 by 1/4 (480 wide) for a 320 thumbnail;
    # a square box would stop at 1/2 (960). Any scale that stays >= 320 and < 2x would be fine here.
    decoded, src_w, src_h = _decode(photo, 320, 40_000_000)
    assert (src_w, src_h) == (1920, 1080)
    assert 320 <= decoded.width < 640
    assert decoded.width / decoded.height == pytest.approx(16 / 9, rel=0.01)


def test_quality_close_to_full_resolution_lanczos(photo: bytes) -> None:
    full = Image.open(io.BytesIO(photo)).convert("RGB")
    # Compared before encoding: a q80 (even q100 4:2:0) encode loses far more than the draft and resize
    # chain, which is what this guards.
    (thumb320, thumb160), _, _ = _render(photo, [320, 160], 40_000_000)
    assert psnr(thumb320, full.resize((320, 180), Image.Resampling.LANCZOS)) >= 45
    assert psnr(thumb160, full.resize((160, 90), Image.Resampling.LANCZOS)) >= 45


def test_no_upscale() -> None:
    data = make_frame(0, width=200, height=100, kind="smooth")
    result = make_thumbnails(data, [640, 100])
    assert [(t.width, t.height) for t in result.thumbnails] == [(200, 100), (100, 50)]
    assert decode(result.thumbnails[0]).size == (200, 100)


def test_exif_orientation_applied(bad: dict[str, bytes]) -> None:
    # Stored 640x360, red left / blue right, orientation 6: displayed 360x640 with red on top.
    result = make_thumbnails(bad["exif_rotated"], [180])
    assert (result.source_width, result.source_height) == (360, 640)
    im = decode(result.thumbnails[0]).convert("RGB")
    assert im.size == (180, 320)
    top, bottom = im.getpixel((90, 40)), im.getpixel((90, 280))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]
    assert "exif" not in im.info


@pytest.mark.parametrize("name", ["cmyk", "grey"])
def test_other_colour_spaces_become_rgb(bad: dict[str, bytes], name: str) -> None:
    for fmt in ("jpeg", "webp"):
        thumb = make_thumbnails(bad[name], [100], fmt).thumbnails[0]
        assert decode(thumb).mode == "RGB"


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        ("png", NotAJpeg, "PNG"),
        ("garbage", NotAJpeg, "not a JPEG"),
        ("empty", NotAJpeg, "empty"),
        ("truncated", TruncatedImage, "EOI"),
        ("bomb", TooManyPixels, "30000x30000"),
    ],
)
def test_bad_inputs_raise_domain_errors(
    bad: dict[str, bytes], name: str, error: type[ImageError], words: str
) -> None:
    with pytest.raises(error, match=words):
        make_thumbnails(bad[name], [320, 160])


def test_truncation_detected_even_when_pillow_would_grey_fill(
    bad: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some other library in the process may have set this global; we must not depend on its default.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(TruncatedImage):
        make_thumbnails(bad["truncated"], [320])


def test_pixel_cap_checked_from_header(photo: bytes) -> None:
    with pytest.raises(TooManyPixels, match="1920x1080"):
        make_thumbnails(photo, [320], max_pixels=1920 * 1080 - 1)


def test_pillow_bomb_limit_never_warns(photo: bytes) -> None:
    # 12000x9000 passes a generous max_pixels but is over Pillow's own limit, whose warning pytest turns
    # into an error: the kernel must refuse it first, as a domain error.
    data = bytearray(photo)
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (9000).to_bytes(2, "big") + (12000).to_bytes(2, "big")
    with pytest.raises(TooManyPixels):
        make_thumbnails(bytes(data), [320], max_pixels=500_000_000)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"widths": []}, "widths"),
        ({"widths": [0]}, "widths"),
        ({"fmt": "png"}, "format"),
        ({"quality": 0}, "quality"),
    ],
)
def test_bad_arguments(photo: bytes, kwargs: dict[str, object], words: str) -> None:
    args: dict[str, object] = {"widths": [320], **kwargs}
    with pytest.raises(ValueError, match=words):
        make_thumbnails(photo, **args)  # type: ignore[arg-type]


def test_image_size_reads_header(photo: bytes, bad: dict[str, bytes]) -> None:
    assert image_size(photo) == (1920, 1080)
    assert image_size(bad["bomb"]) == (30000, 30000)
    assert image_size(bad["exif_rotated"]) == (640, 360)  # as stored, before orientation
    with pytest.raises(NotAJpeg):
        image_size(bad["png"])


def test_frames_deterministic_by_seed() -> None:
    for kind in ("smooth", "photo", "noisy", "black"):
        assert make_frame(3, kind=kind) == make_frame(3, kind=kind)
        assert make_frame(3, kind=kind) != make_frame(4, kind=kind)
    assert make_frame(3, text="12:00:00") != make_frame(3, text="12:00:01")


def test_frame_kinds_look_their_part() -> None:
    sizes = [len(make_frame(seed, kind="photo")) for seed in range(3)]
    assert all(200_000 <= s <= 400_000 for s in sizes), sizes
    assert len(make_frame(0, kind="smooth")) < min(sizes) < len(make_frame(0, kind="noisy"))
    black = Image.open(io.BytesIO(make_frame(0, kind="black"))).convert("L")
    assert ImageStat.Stat(black).mean[0] < 16
    with pytest.raises(ValueError, match="kind"):
        make_frame(0, kind="frozen")
