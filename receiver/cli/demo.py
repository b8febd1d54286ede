"""`receiver demo`: fake ICE + fake OSS + a simulated live snapshot job, feeding a real `serve`."""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

import click
from flask import Flask

from receiver.accounts import load_accounts
from receiver.app import create_app
from receiver.cli.context import setup_logging
from receiver.cli.server import run_server
from receiver.config import Settings
from receiver.db.migrate import ensure_schema
from receiver.ops.maintenance import Role, start_loops
from receiver.services import services
from receiver.sim.fake_ice import FakeIce
from receiver.sim.fake_oss import FakeOss
from receiver.sim.fake_sts import CredentialsUriServer, StsAuthority
from receiver.sim.simulator import (
    DEMO_ACCOUNTS,
    DEMO_AK,
    DEMO_BUCKET,
    DEMO_ENDPOINT,
    DEMO_JOBS,
    DEMO_SK,
    DEMO_UID_A,
    DEMO_UID_B,
    Simulator,
)
from receiver.sim.subscriber import DemoSubscriber

DEMO_ACCOUNTS_FILE = """# written by `receiver demo`: two simulated accounts
[accounts.default]
callback_token_env = "DEMO_DEFAULT_TOKEN"
ice_endpoint = "{ice}"
[accounts.default.credentials]
type = "access_key"
access_key_id_env = "DEMO_DEFAULT_AK_ID"
access_key_secret_env = "DEMO_DEFAULT_AK_SECRET"

[accounts.demo-b]
uid = "{uid_b}"
ice_endpoint = "{ice}"
callback_token_env = "DEMO_B_TOKEN"
[accounts.demo-b.credentials]
type = "credentials_uri"
uri = "{uri}"
"""
# The second account's temporary credentials live this long (renewed at 70 % of it): short, so the demo shows
# credential_expires_at moving in /v1/accounts.
DEMO_STS_TTL = 120


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
    sts = StsAuthority()
    ice = FakeIce(access_keys={DEMO_AK: DEMO_SK}, sts=sts).start()
    oss = FakeOss(access_keys={DEMO_AK: DEMO_SK}, sts=sts).start()
    ice.add_account(DEMO_UID_B, {})
    oss.add_account(DEMO_UID_B, {})
    uri = CredentialsUriServer(sts, DEMO_UID_B, DEMO_STS_TTL).start()
    tokens = {DEMO_UID_A: secrets.token_urlsafe(16), DEMO_UID_B: secrets.token_urlsafe(16)}
    buckets = {job: DEMO_BUCKET if uid == DEMO_UID_A else f"{DEMO_BUCKET}-b" for job, uid in DEMO_ACCOUNTS.items()}
    oss.create_bucket(DEMO_BUCKET)
    oss.create_bucket(f"{DEMO_BUCKET}-b", owner_uid=DEMO_UID_B)
    routes = {}
    for job_id in DEMO_JOBS:
        uid = DEMO_ACCOUNTS[job_id]
        url = f"http://{host}:{port}/callbacks/live-snapshot/{tokens[uid]}"
        routes[job_id] = (url, uid)
        ice.add_job(job_id, name=job_id.replace("demo-", "").replace("-", " "), bucket=buckets[job_id],
                    endpoint=DEMO_ENDPOINT, interval=max(5, int(interval)), callback_url=url, owner_uid=uid)
    data_dir = Path(os.environ.get("RECEIVER_DATA_DIR", "./var/demo"))
    data_dir.mkdir(parents=True, exist_ok=True)
    accounts_file = data_dir / "accounts.toml"
    accounts_file.write_text(DEMO_ACCOUNTS_FILE.format(ice=ice.url, uri=uri.url, uid_b=DEMO_UID_B))
    settings = Settings(
        data_dir=data_dir,
        ice_endpoint=ice.url,
        oss_endpoint_map={DEMO_ENDPOINT: oss.url},
        accounts_file=str(accounts_file),
        workers=2,
        job_cache_seconds=60,
        webhook_allow_private=True,  # the demo's subscriber listens on loopback
    )
    # The secrets stay out of the file and out of this process's environment: handed to the parser directly.
    accounts = load_accounts(settings, {"DEMO_DEFAULT_TOKEN": tokens[DEMO_UID_A], "DEMO_B_TOKEN": tokens[DEMO_UID_B],
                                        "DEMO_DEFAULT_AK_ID": DEMO_AK, "DEMO_DEFAULT_AK_SECRET": DEMO_SK})
    app = create_app(settings, accounts=accounts)
    svc = services(app)
    ensure_schema(svc.engine)
    hooks = subscribe_demo(app)
    start_loops(svc, Role.DEMO)
    sim = Simulator(ice, oss, routes[DEMO_JOBS[0]][0], interval, routes=routes, bucket_of=buckets)
    threading.Timer(1.0, sim.start).start()
    print(f"demo: fake ICE at {ice.url}, fake OSS at {oss.url}, data in {data_dir}", flush=True)
    print(f"demo: viewer at http://{host}:{port}/  API at http://{host}:{port}/v1/jobs", flush=True)
    print(f"demo: two accounts (default: an AccessKey; demo-b: {DEMO_STS_TTL}s STS tokens from {uri.url}), "
          f"see http://{host}:{port}/v1/accounts", flush=True)
    try:
        run_server(app, host, port)
    finally:
        sim.stop()
        svc.close()
        hooks.stop()
        ice.stop()
        oss.stop()
        uri.stop()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--interval", default=5.0, show_default=True, help="Seconds between simulated snapshots.")
def demo(host: str, port: int, interval: float) -> None:
    """Everything local: fake ICE + fake OSS + a simulated snapshot job feeding `serve`."""
    setup_logging("INFO")
    run_demo(host, port, interval)
