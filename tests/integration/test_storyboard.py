"""Preview storyboards: cue times, tile coordinates inside the sprite, sprite dimensions; and the routes."""

from __future__ import annotations

import io
import re

from PIL import Image

from receiver.media import storyboard as sb
from receiver.sim.frames import make_frame
from receiver.timeutil import now_ms
from receiver.worker.dispatch import drain
from tests.support.builders import JOB, callback_body, put_snapshot

T0 = 1_796_212_800_000


def shots(n: int, step: int = 5000) -> list[sb.Shot]:
    return [sb.Shot(i + 1, T0 + i * step, f"k{i}", f"e{i}") for i in range(n)]


def test_cue_times_follow_snapshots_relative_to_since():
    p = sb.plan(shots(3), since_ms=T0 - 2000, until_ms=T0 + 60_000, interval_ms=5000, tile_w=160, tile_h=90)
    assert [(c.start_ms, c.end_ms) for c in p.cues] == [(2000, 7000), (7000, 12000), (12000, 17000)]
    text = sb.render_vtt(p, lambda sh: f"/s/{sh.index}.jpg")
    assert text.startswith("WEBVTT\n\n00:00:02.000 --> 00:00:07.000\n/s/0.jpg#xywh=0,0,160,90\n")


def test_last_cue_is_clipped_to_until():
    p = sb.plan(shots(2), since_ms=T0, until_ms=T0 + 7000, interval_ms=5000, tile_w=160, tile_h=90)
    assert p.cues[-1].end_ms == 7000


def test_tiles_lie_inside_their_sprite_and_sheets_split_at_100():
    p = sb.plan(shots(123), since_ms=T0, until_ms=T0 + 10**7, interval_ms=5000, tile_w=160, tile_h=90)
    assert len(p.sheets) == 2
    assert (p.sheets[0].width, p.sheets[0].height) == (1600, 900)
    assert (p.sheets[1].width, p.sheets[1].height) == (1600, 270)  # 23 tiles: three rows of ten
    for c in p.cues:
        sheet = p.sheets[c.sheet]
        assert c.x >= 0 and c.x + c.w <= sheet.width and c.y >= 0 and c.y + c.h <= sheet.height
    assert (p.cues[100].sheet, p.cues[100].x, p.cues[100].y) == (1, 0, 0)
    assert (p.cues[99].x, p.cues[99].y) == (1440, 810)
    assert p.sheets[0].digest != p.sheets[1].digest


def test_long_windows_are_subsampled_evenly():
    p = sb.plan(shots(2500), since_ms=T0, until_ms=T0 + 10**8, interval_ms=5000, tile_w=16, tile_h=10)
    assert len(p.cues) <= sb.MAX_CUES
    assert p.cues[1].start_ms - p.cues[0].start_ms == 3 * 5000


def test_vtt_time_format():
    assert sb.vtt_time(3_723_004) == "01:02:03.004"
    assert sb.tile_size(160, 1920, 1080) == (160, 90)


def test_storyboard_routes_serve_vtt_and_matching_sprite(client, svc, fake_oss, fake_ice):
    base = (now_ms() // 1000 - 3600) * 1000  # an hour ago: a settled range
    for i in range(12):
        ms = base + i * 5000
        key = put_snapshot(fake_oss, fake_ice, ms, make_frame(i, width=320, height=180))
        client.post("/callbacks/live-snapshot", data=callback_body(key, ms))
    drain(svc)
    until = base + 60_000
    r = client.get(f"/v1/jobs/{JOB}/storyboard.vtt?since={base}&until={until}")
    assert r.status_code == 200 and r.mimetype == "text/vtt"
    cues = re.findall(r"(\S+) --> (\S+)\n(\S+)#xywh=(\d+),(\d+),(\d+),(\d+)", r.get_data(as_text=True))
    assert len(cues) == 12 and cues[0][:2] == ("00:00:00.000", "00:00:05.000")
    url = cues[0][2]
    assert url.startswith(f"/v1/jobs/{JOB}/storyboard/{base}-{until}-0.jpg?v=")
    sprite = client.get(url)
    assert sprite.status_code == 200 and sprite.mimetype == "image/jpeg"
    assert "immutable" in sprite.headers["Cache-Control"]
    with Image.open(io.BytesIO(sprite.data)) as im:
        assert im.size == (10 * 160, 2 * 90)
        for _, _, _, x, y, w, h in cues:
            assert int(x) + int(w) <= im.width and int(y) + int(h) <= im.height
    again = client.get(url, headers={"If-None-Match": sprite.headers["ETag"]})
    assert again.status_code == 304
    assert svc.thumbs.exists(f"storyboards/{url.split('v=')[1][:2]}/{url.split('v=')[1]}.jpg")
    assert client.get(f"/v1/jobs/{JOB}/storyboard/{base}-{until}-5.jpg").status_code == 404
