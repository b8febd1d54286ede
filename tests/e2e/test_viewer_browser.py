"""The viewer in a real browser: Debian's headless Chromium driven by Playwright, against waitress.

Skipped when /usr/bin/chromium is absent (CI installs the `chromium` package). Screenshots go to
tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from receiver.config import Settings
from receiver.services import Services, services
from receiver.sim.frames import make_frame
from receiver.timeutil import now_ms
from receiver.worker.dispatch import drain
from tests.support.builders import BUCKET, JOB, OSS_ENDPOINT, build_app, callback_body, put_snapshot

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
JOB2 = "job-0002"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                "(apt-get install -y chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")


class Server:
    def __init__(self, app: Flask) -> None:
        from waitress.server import create_server

        self.server: Any = create_server(app, host="127.0.0.1", port=0, threads=4)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, name="viewer-test-server", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


def ingest(app: Flask, fake_oss: Any, fake_ice: Any, job: str, times: list[int]) -> None:
    client, svc = app.test_client(), services(app)
    for ms in times:
        label = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%H:%M:%S")
        data = make_frame(ms // 5000 % 1000, width=320, height=180, text=label)
        key = put_snapshot(fake_oss, fake_ice, ms, data, job=job)
        assert client.post("/callbacks/live-snapshot", data=callback_body(key, ms, job=job)).status_code == 200
    drain(svc)


def latest_id(svc: Services, job: str) -> str:
    from receiver.db.queries import latest_snapshot

    with svc.sessions() as s:
        snap = latest_snapshot(s, job)
        assert snap is not None
        return str(snap.id)


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def stack(settings: Settings, fake_ice: Any, fake_oss: Any) -> Iterator[tuple[Flask, Server, list[int]]]:
    fake_ice.add_job(JOB2, bucket=BUCKET, endpoint=OSS_ENDPOINT)
    app = build_app(settings)
    now = (now_ms() // 1000) * 1000
    # 45 snapshots of job-0001 every 5 s, with 40 s missing among the newest page; job-0002 a few.
    times = [now - 5000 * k for k in range(52) if not 5 <= k <= 11]
    ingest(app, fake_oss, fake_ice, JOB, sorted(times))
    ingest(app, fake_oss, fake_ice, JOB2, [now - 20_000, now - 15_000, now - 10_000])
    server = Server(app)
    yield app, server, sorted(times)
    services(app).close()  # ends the pages' live streams first, so waitress's threads are free to stop
    server.close()


def console_errors(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def img_loaded(selector: str) -> str:
    """A JS expression: the image matching ``selector`` exists and has actually been decoded."""
    return f"(i => !!i && i.complete && i.naturalWidth > 0)(document.querySelector({selector!r}))"


def loaded(page: Any, selector: str) -> int:
    return int(page.eval_on_selector_all(selector, "els => els.filter(i => i.complete && i.naturalWidth > 0).length"))


def test_grid_shows_every_latest_thumbnail_and_updates_without_reload(stack, browser, fake_oss, fake_ice):
    app, server, _ = stack
    svc = services(app)
    ctx = browser.new_context(viewport={"width": 1100, "height": 700}, timezone_id="UTC")
    page = ctx.new_page()
    errors = console_errors(page)
    page.goto(server.url + "/?poll=0.5")
    page.wait_for_function("document.querySelectorAll('#grid img[data-snapshot-id]').length === 2")
    page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
    assert loaded(page, "#grid img") == 2
    for job in (JOB, JOB2):
        card = page.locator(f'li.card[data-job-id="{job}"]')
        assert card.locator("img").get_attribute("data-snapshot-id") == latest_id(svc, job)
        assert card.locator("img").get_attribute("alt").startswith("Latest snapshot of")
        assert card.locator(".badge").inner_text() in ("ok", "gap", "frozen", "black", "stale")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "grid.png"), full_page=True)

    ingest(app, fake_oss, fake_ice, JOB2, [now_ms()])
    new_id = latest_id(svc, JOB2)
    page.wait_for_function(
        f"document.querySelector('li.card[data-job-id=\"{JOB2}\"] img').dataset.snapshotId === '{new_id}'")
    page.wait_for_function(img_loaded(f'li.card[data-job-id="{JOB2}"] img'))
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "grid-phone.png"), full_page=True)
    ctx.close()
    assert errors == []


def test_job_page_strip_timeline_time_picker_and_original(stack, browser):
    app, server, times = stack
    ctx = browser.new_context(viewport={"width": 1100, "height": 600}, timezone_id="UTC")
    page = ctx.new_page()
    errors = console_errors(page)
    page.goto(f"{server.url}/jobs/{JOB}?page=30&poll=1")
    page.wait_for_function("document.querySelectorAll('#strip .shot').length === 30")
    page.wait_for_function("[...document.querySelectorAll('#strip img')].slice(0, 6)"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    # The gap among the newest frames is marked in the strip and on the timeline.
    assert page.locator("#strip .gap-marker").count() == 1
    assert "gap" in page.locator("#strip .gap-marker").inner_text()
    assert page.locator("#timeline .seg-gap").count() == 1
    assert "1 gaps" in page.locator("#tl-summary").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "job.png"), full_page=True)

    # Scrolling to the end of the strip loads the older page.
    page.locator("#strip-end").scroll_into_view_if_needed()
    page.wait_for_function(f"document.querySelectorAll('#strip .shot').length === {len(times)}")
    page.wait_for_function("document.querySelector('#strip-end').textContent.includes('Start of history')")

    # The time picker lands on the nearest snapshot.
    target = times[10]
    asked = dt.datetime.fromtimestamp((target + 1800) / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    page.fill("#jump-time", asked)
    page.click("#jump button[type=submit]")
    page.wait_for_selector("#nearest figure[data-snapshot-id]")
    with services(app).sessions() as s:
        from sqlalchemy import select

        from receiver.db.models import Snapshot

        expected = s.execute(select(Snapshot.id).where(Snapshot.job_id == JOB, Snapshot.captured_at_ms == target)
                             ).scalar_one()
    assert page.locator("#nearest figure").get_attribute("data-snapshot-id") == str(expected)
    page.wait_for_function(img_loaded("#nearest img"))

    # Clicking (keyboard: Enter on the focused thumbnail) opens the original.
    page.locator("#strip .shot .thumb").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#original').open")
    page.wait_for_function(img_loaded("#original-img")
                           + " && document.querySelector('#original-img').naturalWidth == 320")
    page.screenshot(path=str(ARTIFACTS / "job-original.png"))
    page.keyboard.press("Escape")
    ctx.close()
    assert errors == []


def test_viewer_asks_for_an_api_key_once(settings, fake_ice, fake_oss, browser):
    app = build_app(settings.with_(api_keys=("k-123",)))
    ingest(app, fake_oss, fake_ice, JOB, [now_ms() - 5000])
    server = Server(app)
    try:
        ctx = browser.new_context(viewport={"width": 900, "height": 600})
        page = ctx.new_page()
        errors = console_errors(page)
        page.goto(server.url + "/?poll=0.5")
        page.wait_for_selector("#key-form:not([hidden])")
        page.fill("#api-key", "k-123")
        page.click("#key-form button")
        page.wait_for_function(img_loaded("#grid img[data-snapshot-id]"))
        assert "sig=" in (page.locator("#grid img").get_attribute("src") or "")
        page.reload()  # the key is remembered
        page.wait_for_selector("#grid img[data-snapshot-id]")
        assert page.locator("#key-form").is_hidden()
        ctx.close()
        assert errors == []
    finally:
        server.close()
        services(app).close()


def requests_to(page: Any, prefix: str) -> list[str]:
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if r.url.split("?")[0].endswith(prefix) else None)
    return seen


def test_a_new_snapshot_appears_live_within_3_s_without_reload_or_polling(stack, browser, fake_oss, fake_ice):
    app, server, _ = stack
    svc = services(app)
    ctx = browser.new_context(viewport={"width": 1100, "height": 700}, timezone_id="UTC")
    grid, job = ctx.new_page(), ctx.new_page()
    errors = console_errors(grid) + console_errors(job)
    grid.goto(server.url + "/?poll=0.5")
    job.goto(f"{server.url}/jobs/{JOB2}?poll=0.5")
    for page in (grid, job):
        page.wait_for_function("document.body.dataset.live === 'open'")
    job.wait_for_function("document.querySelectorAll('#strip .shot').length === 3")
    polls = requests_to(grid, "/v1/jobs") + requests_to(job, f"/v1/jobs/{JOB2}/snapshots")

    ingest(app, fake_oss, fake_ice, JOB2, [now_ms()])
    new_id = latest_id(svc, JOB2)
    grid.wait_for_function(
        f"document.querySelector('li.card[data-job-id=\"{JOB2}\"] img').dataset.snapshotId === '{new_id}'",
        timeout=3000)
    job.wait_for_function(f"document.querySelector('#strip .shot').dataset.id === '{new_id}'", timeout=3000)
    grid.wait_for_function(img_loaded(f'li.card[data-job-id="{JOB2}"] img'))
    assert job.locator("#strip .shot").count() == 4
    assert polls == []  # with the stream open, neither page polled (poll=0.5 would have, several times)
    ctx.close()
    assert errors == []


def test_a_page_without_a_stream_falls_back_to_polling(settings, fake_ice, fake_oss, browser):
    app = build_app(settings.with_(stream_clients=1))
    ingest(app, fake_oss, fake_ice, JOB, [now_ms() - 5000])
    server = Server(app)
    try:
        ctx = browser.new_context(viewport={"width": 900, "height": 600})
        live_page, fallback = ctx.new_page(), ctx.new_page()
        live_page.goto(server.url + "/?poll=0.5")
        live_page.wait_for_function("document.body.dataset.live === 'open'")
        fallback.goto(server.url + "/?poll=0.5")  # its stream is refused (503): one per process here
        fallback.wait_for_function("document.body.dataset.live === 'down'")
        polls = requests_to(fallback, "/v1/jobs")
        ingest(app, fake_oss, fake_ice, JOB, [now_ms()])
        new_id = latest_id(services(app), JOB)
        for page in (live_page, fallback):
            page.wait_for_function(f"document.querySelector('#grid img').dataset.snapshotId === '{new_id}'",
                                   timeout=5000)
        assert polls  # the fallback polled
        ctx.close()
    finally:
        services(app).close()
        server.close()
