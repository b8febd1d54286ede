"""Preview storyboards for players: a WebVTT track whose cues point at tiles of sprite sheets.

A storyboard covers ``since``..``until`` of one job. Media time 0 is ``since``: a cue for a snapshot taken
at t starts at ``t - since`` and lasts until the next snapshot (the last one lasts one interval, clipped to
``until``). At most ``MAX_CUES`` cues: a longer window keeps every k-th snapshot, evenly, which is what a
hover preview needs. Tiles are the smallest thumbnail, letterboxed into a ``tile_w`` x ``tile_h`` cell; a
sheet holds ``COLUMNS`` x ``ROWS`` tiles, row by row.

The layout is a pure function of the snapshot list (``plan``), so the VTT and the sprite route agree
without sharing state; each sheet carries a digest of its tiles, used as ETag, as the cache key in the
thumbnail store and as ``v`` in the sprite URL (so a settled range can be cached as immutable).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from receiver.exceptions import ObjectNotFound

log = logging.getLogger(__name__)

MAX_CUES = 1000
# Rendered sheets of settled ranges are cached in the thumbnail store under this prefix (content-addressed);
# `receiver prune` removes those older than its cutoff.
SHEET_PREFIX = "storyboards/"
COLUMNS = 10
ROWS = 10
SPRITE_QUALITY = 75


@dataclass(frozen=True)
class Shot:
    snapshot_id: int
    captured_at_ms: int
    thumb_key: str  # storage key of the smallest thumbnail
    thumb_etag: str


@dataclass(frozen=True)
class Cue:
    start_ms: int  # relative to since
    end_ms: int
    sheet: int
    x: int
    y: int
    w: int
    h: int
    shot: Shot


@dataclass(frozen=True)
class Sheet:
    index: int
    shots: tuple[Shot, ...]
    width: int
    height: int
    digest: str


@dataclass(frozen=True)
class Plan:
    tile_w: int
    tile_h: int
    cues: tuple[Cue, ...]
    sheets: tuple[Sheet, ...]


def tile_size(width: int, src_w: int, src_h: int) -> tuple[int, int]:
    """A tile ``width`` wide with the source's aspect ratio (even height, at least 2 px)."""
    h = max(2, round(width * src_h / max(1, src_w)))
    return width, h + (h % 2)


def select_shots(shots: Sequence[Shot], max_cues: int = MAX_CUES) -> list[Shot]:
    if len(shots) <= max_cues:
        return list(shots)
    step = math.ceil(len(shots) / max_cues)
    return list(shots[::step])


def plan(shots: Sequence[Shot], *, since_ms: int, until_ms: int, interval_ms: int, tile_w: int, tile_h: int,
         columns: int = COLUMNS, rows: int = ROWS) -> Plan:
    """Cues and sheets for ``shots`` (ascending by time, all within since..until)."""
    chosen = select_shots(shots)
    per_sheet = columns * rows
    cues: list[Cue] = []
    sheets: list[Sheet] = []
    for n in range(0, len(chosen), per_sheet):
        group = tuple(chosen[n : n + per_sheet])
        cols_used = min(columns, len(group))
        rows_used = math.ceil(len(group) / columns)
        ident = "|".join(f"{s.snapshot_id}:{s.thumb_etag}" for s in group) + f"|{tile_w}x{tile_h}x{columns}"
        sheets.append(Sheet(n // per_sheet, group, cols_used * tile_w, rows_used * tile_h,
                            hashlib.sha256(ident.encode()).hexdigest()[:20]))
    for i, shot in enumerate(chosen):
        nxt = chosen[i + 1].captured_at_ms if i + 1 < len(chosen) else min(until_ms, shot.captured_at_ms + interval_ms)
        start = shot.captured_at_ms - since_ms
        end = max(start + 1, nxt - since_ms)  # a zero-length cue is invalid WebVTT
        pos = i % per_sheet
        cues.append(Cue(start, end, i // per_sheet, (pos % columns) * tile_w, (pos // columns) * tile_h,
                        tile_w, tile_h, shot))
    return Plan(tile_w, tile_h, tuple(cues), tuple(sheets))


def vtt_time(ms: int) -> str:
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, frac = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{frac:03d}"


def render_vtt(p: Plan, sprite_url: Callable[[Sheet], str]) -> str:
    urls = [sprite_url(sh) for sh in p.sheets]
    lines = ["WEBVTT", ""]
    for c in p.cues:
        cue_time = f"{vtt_time(c.start_ms)} --> {vtt_time(c.end_ms)}"
        lines += [cue_time, f"{urls[c.sheet]}#xywh={c.x},{c.y},{c.w},{c.h}", ""]
    return "\n".join(lines)


def render_sheet(sheet: Sheet, tile_w: int, tile_h: int, read: Callable[[str], bytes],
                 columns: int = COLUMNS) -> bytes:
    """The sprite JPEG; a tile whose thumbnail cannot be read stays dark grey rather than failing the sheet."""
    canvas = Image.new("RGB", (sheet.width, sheet.height), (24, 24, 24))
    for pos, shot in enumerate(sheet.shots):
        x, y = (pos % columns) * tile_w, (pos // columns) * tile_h
        try:
            with Image.open(io.BytesIO(read(shot.thumb_key))) as im:
                im.draft("RGB", (tile_w, tile_h))
                tile = im.convert("RGB")
        except (ObjectNotFound, OSError):
            # A thumbnail pruned or lost meanwhile: one blank tile, not a failed storyboard.
            log.warning("storyboard tile for snapshot %s is unreadable; left blank", shot.snapshot_id)
            continue
        tile.thumbnail((tile_w, tile_h), Image.Resampling.LANCZOS)
        canvas.paste(tile, (x + (tile_w - tile.width) // 2, y + (tile_h - tile.height) // 2))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=SPRITE_QUALITY, optimize=True)
    return out.getvalue()
