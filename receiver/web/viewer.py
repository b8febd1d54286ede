"""The viewer: GET / (every job with its latest frame and health) and GET /jobs/<job_id> (its history).

Server-rendered shells; the data comes from the /v1 API through plain JavaScript (static/viewer.js), so
the pages work unchanged when API keys gate /v1 (the script asks for a key once and keeps it in
localStorage). Nothing here reads the database: a page never shows what the API would refuse.
"""

from __future__ import annotations

from flask import Blueprint, render_template, request

from receiver.services import current_services

bp = Blueprint("viewer", __name__, template_folder="templates", static_folder="static",
               static_url_path="/viewer-static")


def _config() -> dict[str, object]:
    svc = current_services()
    # Tests (and impatient operators) may poll faster or page smaller: ?poll=<seconds>&page=<n>.
    poll = request.args.get("poll", "")
    page = request.args.get("page", "")
    return {
        "keys_required": bool(svc.settings.api_keys),
        "poll_ms": int(float(poll) * 1000) if poll.replace(".", "", 1).isdigit() and float(poll) >= 0.5 else 5000,
        "page_size": int(page) if page.isdigit() and 1 <= int(page) <= 1000 else 60,
        "gap_factor": svc.settings.health_gap_factor,
    }


@bp.get("/")
def index() -> str:
    return render_template("index.html", config=_config())


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    return render_template("job.html", job_id=job_id, config=_config())
