"""Per-snapshot signals, their storage, the migration, the backfill, and the original's redirect/stream."""

from __future__ import annotations

import io
import urllib.request

import pytest
from alembic import command
from PIL import Image
from sqlalchemy import select, update

from receiver.db.engine import make_engine
from receiver.db.migrate import alembic_config, upgrade
from receiver.db.models import Snapshot
from receiver.media.signals import (
    blurhash_average,
    blurhash_encode,
    compute_signals,
    hamming,
    to_signed64,
    to_unsigned64,
)
from receiver.ops.backfill import backfill
from receiver.services import services
from receiver.sim.frames import make_frame
from receiver.worker.dispatch import drain
from tests.support.builders import JOB, build_app, callback_body, put_snapshot

T0 = 1_796_212_800_000


def jpeg(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue()


def test_blurhash_of_a_flat_colour_encodes_that_colour():
    h = blurhash_encode(Image.new("RGB", (32, 18), (200, 40, 90)), 4, 3)
    assert len(h) == 4 + 2 * 12 and h[0] == "L"  # size flag (4-1) + (3-1)*9 = 21
    assert blurhash_average(h) == (200, 40, 90)


def test_blurhash_matches_the_reference_encoder_on_a_frame():
    # Computed with woltapp's algorithm (pip package `blurhash` 1.1.5) on the same 32x18 pixels.
    with Image.open(io.BytesIO(make_frame(3, width=320, height=180))) as im:
        small = im.convert("RGB").resize((32, 18), Image.Resampling.BOX)
    assert blurhash_encode(small, 4, 3) == "LJINqSvfbwt*ql++t9RTaXx:v.nU"


def test_luma_spread_and_dhash():
    black = compute_signals(make_frame(1, width=320, height=180, kind="black"))
    photo = compute_signals(make_frame(1, width=320, height=180))
    assert black.luma < 20 and black.luma_spread < 10
    assert photo.luma > 60 and photo.luma_spread > 10
    again = compute_signals(make_frame(1, width=320, height=180, text="a label"))
    other = compute_signals(make_frame(2, width=320, height=180))
    assert hamming(photo.dhash, again.dhash) <= 3 < 12 <= hamming(photo.dhash, other.dhash)


@pytest.mark.parametrize("u", [0, 1, 2**63 - 1, 2**63, 2**64 - 1])
def test_dhash_round_trips_through_signed_bigint(u):
    s = to_signed64(u)
    assert -(2**63) <= s < 2**63 and to_unsigned64(s) == u


def test_ingest_stores_signals_and_backfill_fills_old_rows(client, svc, fake_oss, fake_ice):
    for i in range(3):
        key = put_snapshot(fake_oss, fake_ice, T0 + i * 5000, make_frame(i, width=320, height=180))
        client.post("/callbacks/live-snapshot", data=callback_body(key, T0 + i * 5000))
    drain(svc)
    with svc.sessions() as s:
        rows = list(s.execute(select(Snapshot)).scalars())
        assert all(r.luma is not None and r.dhash is not None and r.placeholder for r in rows)
        before = {r.id: (r.luma, r.dhash, r.placeholder) for r in rows}
    with svc.sessions.begin() as s:
        s.execute(update(Snapshot).values(luma=None, luma_spread=None, dhash=None, placeholder=None))
    result = backfill(svc, batch=2)
    assert (result.updated, result.missing) == (3, 0)
    with svc.sessions() as s:
        after = {r.id: (r.luma, r.dhash, r.placeholder) for r in s.execute(select(Snapshot)).scalars()}
    assert after == before
    assert backfill(svc).updated == 0  # idempotent


def test_migration_adds_nullable_columns_and_models_match(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(url)
    upgrade(engine, "0001")
    upgrade(engine)
    upgrade(engine, "0001")  # and back down
    upgrade(engine)
    command.check(alembic_config(url))  # raises when models and migrations drift
    engine.dispose()


def _indexed_frame(client, svc, fake_oss, fake_ice, seed: int) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    """One 320x180 frame through callback and pipeline: its snapshot id and the original bytes."""
    data = make_frame(seed, width=320, height=180)
    key = put_snapshot(fake_oss, fake_ice, T0, data)
    client.post("/callbacks/live-snapshot", data=callback_body(key, T0))
    drain(svc)
    return client.get(f"/v1/jobs/{JOB}/snapshots").get_json()["items"][0]["id"], data


def test_original_redirects_to_a_presigned_url_that_serves_the_jpeg(client, svc, fake_oss, fake_ice):
    sid, data = _indexed_frame(client, svc, fake_oss, fake_ice, seed=5)
    r = client.get(f"/v1/snapshots/{sid}/original")
    assert r.status_code == 302 and "Signature=" in r.headers["Location"] and "Expires=" in r.headers["Location"]
    with urllib.request.urlopen(r.headers["Location"], timeout=5) as resp:
        assert resp.read() == data
    j = client.get(f"/v1/snapshots/{sid}/original", headers={"Accept": "application/json"}).get_json()
    assert j["url"].startswith(fake_oss.url) and j["expires_in"] == 300
    assert client.get("/v1/snapshots/999/original").status_code == 404


def test_original_streamed_when_configured(settings, fake_oss, fake_ice):
    app = build_app(settings.with_(original_mode="stream"))
    try:
        client, svc = app.test_client(), services(app)
        sid, data = _indexed_frame(client, svc, fake_oss, fake_ice, seed=6)
        r = client.get(f"/v1/snapshots/{sid}/original")
        assert r.status_code == 200 and r.mimetype == "image/jpeg" and r.data == data
    finally:
        services(app).close()


def test_luma_statistics_match_pillows_imagestat():
    # The histogram sums run in C; the figures are ImageStat's own, to the last digit that is stored.
    from PIL import ImageStat

    from receiver.media.signals import _mean_and_spread

    for kind in ("photo", "black", "noisy", "smooth"):
        grey = Image.open(io.BytesIO(make_frame(3, width=320, height=180, kind=kind))).convert("L")
        stat = ImageStat.Stat(grey)
        mean, spread = _mean_and_spread(grey.histogram())
        assert round(mean, 2) == round(stat.mean[0], 2) and round(spread, 2) == round(stat.stddev[0], 2), kind
    assert _mean_and_spread([0] * 256) == (0.0, 0.0)
