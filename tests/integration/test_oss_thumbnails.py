"""RECEIVER_THUMBNAIL_STORE=oss://…: thumbnails written to (fake) OSS, served streamed or by a 302 to a
presigned URL that the fake OSS verifies like the real one."""

from __future__ import annotations

import urllib.parse
import urllib.request
from typing import Any

import pytest
from sqlalchemy import select

from receiver.db.models import Thumbnail
from receiver.services import services
from receiver.worker.dispatch import drain
from tests.support.builders import OSS_ENDPOINT, build_app, callback_body, put_snapshot

T0 = 1796212805123


def index_one(client: Any, svc: Any, fake_oss: Any, fake_ice: Any, frame: bytes) -> dict[str, Any]:
    """One snapshot called back and processed; its item from the history API."""
    client.post("/callbacks/live-snapshot", data=callback_body(put_snapshot(fake_oss, fake_ice, T0, frame), T0))
    drain(svc)
    [snap] = client.get("/v1/jobs/job-0001/snapshots").get_json()["items"]
    return snap


@pytest.mark.parametrize("redirect", [False, True])
def test_oss_thumbnail_store_streams_or_redirects(settings, fake_ice, fake_oss, frame, redirect):
    fake_oss.create_bucket("thumbs")
    store = f"oss://thumbs/receiver/thumbs?endpoint={OSS_ENDPOINT}&redirect={int(redirect)}"
    app = build_app(settings.with_(thumbnail_store=store))
    svc = services(app)
    try:
        client = app.test_client()
        snap = index_one(client, svc, fake_oss, fake_ice, frame)
        keys = fake_oss.keys("thumbs")
        assert len(keys) == 2 and all(k.startswith("receiver/thumbs/") for k in keys)
        resp = client.get(snap["thumbnails"][0]["url"])
        if not redirect:
            assert resp.status_code == 200 and resp.data[:2] == b"\xff\xd8"
            assert "immutable" in resp.headers["Cache-Control"]
            return
        assert resp.status_code == 302
        location = resp.headers["Location"]
        assert location.startswith(fake_oss.url) and "Signature" in location
        with urllib.request.urlopen(location, timeout=5) as r:  # the presigned URL works without our keys
            assert r.status == 200 and r.read()[:2] == b"\xff\xd8"
        # Revalidation is still answered from the index, without a redirect or an OSS call.
        with svc.sessions() as s:
            etag = s.execute(select(Thumbnail.etag).where(Thumbnail.snapshot_id == int(snap["id"]),
                                                          Thumbnail.width == 320)).scalar_one()
        again = client.get(snap["thumbnails"][0]["url"], headers={"If-None-Match": f'"{etag}"'})
        assert again.status_code == 304
    finally:
        svc.close()


def test_redirect_from_an_internal_endpoint_points_browsers_at_the_public_host(settings, fake_ice, fake_oss, frame):
    # The deployment guide's store: oss://…?endpoint=oss-cn-shanghai-internal.aliyuncs.com&redirect=1. Inside
    # the VPC the receiver writes through the -internal host (here mapped to the fake); a browser outside
    # cannot reach it, so the 302 names the public host, as /original does (one function for both).
    internal = "oss-cn-shanghai-internal.aliyuncs.com"
    fake_oss.create_bucket("thumbs")
    app = build_app(settings.with_(
        thumbnail_store=f"oss://thumbs/receiver/thumbs?endpoint={internal}&redirect=1",
        oss_endpoint_map={OSS_ENDPOINT: fake_oss.url, internal: fake_oss.url}))
    svc = services(app)
    try:
        client = app.test_client()
        snap = index_one(client, svc, fake_oss, fake_ice, frame)
        resp = client.get(snap["thumbnails"][0]["url"])
        assert resp.status_code == 302
        location = urllib.parse.urlsplit(resp.headers["Location"])
        assert (location.scheme, location.hostname) == ("https", "thumbs.oss-cn-shanghai.aliyuncs.com")
        assert "-internal" not in resp.headers["Location"] and "Signature" in location.query
        # The signature does not cover the host: the same path and query, sent to the fake, is accepted.
        with urllib.request.urlopen(f"{fake_oss.url}/thumbs{location.path}?{location.query}", timeout=5) as r:
            assert r.status == 200 and r.read()[:2] == b"\xff\xd8"
    finally:
        svc.close()
