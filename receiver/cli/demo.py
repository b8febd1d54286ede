"""`receiver demo`: fake ICE + fake OSS + a simulated live snapshot job, feeding a real `serve`."""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

import click
from flask import Flask

from receiver.app import create_app
from receiver.cli.context import setup_logging
from receiver.cli.server import run_server
from receiver.config import Settings
from receiver.db.migrate import ensure_schema
from receiver.ops.maintenance import Role, start_loops
from receiver.services import services
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.simulator import DEMO_AK, DEMO_BUCKET, DEMO_ENDPOINT, DEMO_JOBS, DEMO_SK, Simulator
from receiver.sim.subscriber import DemoSubscriber

DEMO_SUBSCRIPTION = "receiver demo: logs each delivery it verified"


def subscribe_demo(app: Flask) -> DemoSubscriber:
    """A subscriber on loopback, subscribed (through the API, as a user would) to every message type."""
    hooks = DemoSubscriber().start()
    client = app.test_client()
    # A previous demo's listener is gone with its process (and its port): drop its subscription.
    for old in client.get("/v1/subscriptions?limit=1000").get_json()["items"]:
        if old["description"] == DEMO_SUBSCRIPTION:
            client.delete(f"/v1/subscriptions/{old['id']}")
    answer = client.post("/v1/subscriptions", json={
        "url": hooks.url, "events": ["snapshot.created", "stream.health_changed", "event.failed"],
        "description": DEMO_SUBSCRIPTION})
    if answer.status_code != 201:
        raise click.ClickException(f"could not subscribe the demo's webhook listener: {answer.get_data(as_text=True)}")
    hooks.secret = answer.get_json()["secret"]
    print(f"demo: webhook subscriber at {hooks.url} (subscription {answer.get_json()['id']})", flush=True)
    return hooks


def run_demo(host: str, port: int, interval: float) -> None:
    ice = FakeIce(access_keys={DEMO_AK: DEMO_SK}).start()
    oss = FakeOss(access_keys={DEMO_AK: DEMO_SK}).start()
    oss.create_bucket(DEMO_BUCKET)
    token = secrets.token_urlsafe(16)
    for job_id in DEMO_JOBS:
        ice.add_job(job_id, name=job_id.replace("demo-", "").replace("-", " "), bucket=DEMO_BUCKET,
                    endpoint=DEMO_ENDPOINT, interval=max(5, int(interval)),
                    callback_url=f"http://{host}:{port}/callbacks/live-snapshot/{token}")
    data_dir = Path(os.environ.get("RECEIVER_DATA_DIR", "./var/demo"))
    settings = Settings(
        data_dir=data_dir,
        ice_endpoint=ice.url,
        access_key_id=DEMO_AK,
        access_key_secret=DEMO_SK,
        oss_endpoint_map={DEMO_ENDPOINT: oss.url},
        callback_token=token,
        workers=2,
        job_cache_seconds=60,
        webhook_allow_private=True,  # the demo's subscriber listens on loopback
    )
    app = create_app(settings)
    svc = services(app)
    ensure_schema(svc.engine)
    hooks = subscribe_demo(app)
    start_loops(svc, Role.DEMO)
    sim = Simulator(ice, oss, f"http://{host}:{port}/callbacks/live-snapshot/{token}", interval)
    threading.Timer(1.0, sim.start).start()
    print(f"demo: fake ICE at {ice.url}, fake OSS at {oss.url}, data in {data_dir}", flush=True)
    print(f"demo: viewer at http://{host}:{port}/  API at http://{host}:{port}/v1/jobs", flush=True)
    try:
        run_server(app, host, port)
    finally:
        sim.stop()
        svc.close()
        hooks.stop()
        ice.stop()
        oss.stop()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--interval", default=5.0, show_default=True, help="Seconds between simulated snapshots.")
def demo(host: str, port: int, interval: float) -> None:
    """Everything local: fake ICE + fake OSS + a simulated snapshot job feeding `serve`."""
    setup_logging("INFO")
    run_demo(host, port, interval)
