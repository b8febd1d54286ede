"""Thumbnail kernel benchmark (run on demand, not a test).

    .venv/bin/python bench/thumbnails.py [--runs 30] [--quality 80]

For generated 1080p frames of three kinds, the median time per frame to make a 320 and a 160 px
thumbnail with (a) naive Pillow: full decode, LANCZOS, save, twice; (b) our kernel, JPEG out; (c) our
kernel, WebP out; (d) pyvips ``thumbnail_buffer`` twice, if installed. PSNR is our 320 px image before
encoding against a LANCZOS resize of the fully decoded frame.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

from PIL import Image, ImageChops, ImageStat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receiver.media.thumbnails import _render, make_thumbnails  # noqa: E402
from receiver.sim.frames import make_frame  # noqa: E402

WIDTHS = (320, 160)
KINDS = ("smooth", "photo", "noisy")


def naive(data: bytes, quality: int) -> list[bytes]:
    out = []
    for width in WIDTHS:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        small = im.resize((width, round(width * im.height / im.width)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def vips_thumbnails(vips: ModuleType, data: bytes, quality: int) -> list[bytes]:
    return [vips.Image.thumbnail_buffer(data, w).write_to_buffer(f".jpg[Q={quality}]") for w in WIDTHS]


def median_ms(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median wall time of each function, run in rotation so that a burst of load from anything else on
    the machine slows every contender alike instead of one column."""
    for fn in fns.values():
        fn()  # warm up: plugin imports, libvips start-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def psnr(a: Image.Image, b: Image.Image) -> float:
    stat = ImageStat.Stat(ImageChops.difference(a, b))
    mse = sum(stat.sum2) / (3 * a.width * a.height)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def load_pyvips() -> ModuleType | None:
    try:
        import pyvips  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except (ImportError, OSError):  # OSError: the module is there but libvips is not
        return None
    return pyvips  # type: ignore[no-any-return,unused-ignore]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30, help="timed runs per cell (median reported)")
    parser.add_argument("--quality", type=int, default=80)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    q = args.quality

    vips = load_pyvips()
    if vips is None:
        print("pyvips not installed: pip install pyvips[binary]")

    header = f"{'kind':7} {'KB':>5} {'a naive':>8} {'b jpeg':>7} {'c webp':>7} {'d vips':>7}"
    header += f" {'a/b':>5} {'d/b':>5} {'c/b':>5} {'PSNR320':>8} {'enc b|a':>11}"
    print(f"1920x1080 -> {WIDTHS}, q{q}, median ms per frame over {args.runs} runs")
    print("a/b: naive time over ours, d/b: pyvips over ours (= our throughput as a multiple of theirs; target")
    print("d/b >= 1.5 on photo), c/b: WebP over JPEG mode (target <= 1.5). PSNR320: ours before encoding")
    print("(target >= 45 dB on photo); enc b|a: ours and naive after the JPEG encode, vs the same reference")
    print(header)
    for kind in KINDS:
        data = make_frame(args.seed, kind=kind)
        fns: dict[str, Callable[[], object]] = {
            "a": partial(naive, data, q),
            "b": partial(make_thumbnails, data, WIDTHS, "jpeg", quality=q),
            "c": partial(make_thumbnails, data, WIDTHS, "webp", quality=q),
        }
        if vips is not None:
            fns["d"] = partial(vips_thumbnails, vips, data, q)
        ms = median_ms(fns, args.runs)
        a, b, c, d = ms["a"], ms["b"], ms["c"], ms.get("d", math.nan)

        full = Image.open(io.BytesIO(data)).convert("RGB")
        (ours, _), _, _ = _render(data, WIDTHS, 40_000_000)
        reference = full.resize(ours.size, Image.Resampling.LANCZOS)
        ours_enc = Image.open(io.BytesIO(make_thumbnails(data, WIDTHS, quality=q).thumbnails[0].data))
        naive_enc = Image.open(io.BytesIO(naive(data, q)[0]))
        enc_b, enc_a = psnr(ours_enc.convert("RGB"), reference), psnr(naive_enc.convert("RGB"), reference)
        row = f"{kind:7} {len(data) // 1000:5} {a:8.2f} {b:7.2f} {c:7.2f} {d:7.2f}"
        row += f" {a / b:5.2f} {d / b:5.2f} {c / b:5.2f} {psnr(ours, reference):6.1f}dB"
        row += f" {enc_b:4.1f}|{enc_a:4.1f}dB"
        print(row)


if __name__ == "__main__":
    main()
