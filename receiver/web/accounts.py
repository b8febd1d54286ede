"""GET /v1/accounts (product.md section 7): each account served, its credential's state and its ICE usage in
this process. Never a key, secret or token: only what describes them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import func, select

from receiver import metrics
from receiver.db.models import Job
from receiver.services import Services, current_services
from receiver.timeutil import ms_to_iso

bp = Blueprint("accounts", __name__)


def credential_state(svc: Services, alias: str) -> dict[str, Any]:
    gw = svc.gateways.get(alias)
    credential = gw.credential if gw is not None else None
    if credential is None:
        return {"credential_type": "default", "credential_status": "error", "credential_expires_at": None,
                "last_error": "no credentials configured"}
    out = credential.describe()
    expires = out["credential_expires_at"]
    out["credential_expires_at"] = ms_to_iso(int(expires * 1000)) if expires is not None else None
    return out


def accounts_json(svc: Services) -> list[dict[str, Any]]:
    with svc.readers() as s:
        jobs: dict[str, int] = {a: n for a, n in s.execute(select(Job.account, func.count()).group_by(Job.account))}
    calls = metrics.calls_by_account("ice")
    items = []
    for account in svc.account_list():
        gw = svc.gateways.get(account.alias)
        items.append({
            "alias": account.alias, "uid": account.uid, "region": account.region,
            **credential_state(svc, account.alias),
            "jobs": int(jobs.get(account.alias, 0)),
            "ice_calls": calls.get(account.alias, 0),
            "ice_throttled": gw.bucket.throttled if gw is not None and gw.bucket is not None else 0,
        })
    return items


def readiness(svc: Services) -> dict[str, Any]:
    """What /readyz adds about credentials: each account's credential status when an accounts file is used."""
    states = {a.alias: credential_state(svc, a.alias)["credential_status"] for a in svc.account_list()}
    return {"credentials": "error" if "error" in states.values() else "configured", "accounts": states}


@bp.get("/v1/accounts")
def accounts() -> Response:
    return jsonify({"items": accounts_json(current_services()), "next_cursor": None})
