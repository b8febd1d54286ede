"""The viewer: GET / (every job with its latest frame and health) and GET /jobs/<job_id> (its history).

Server-rendered shells; the data comes from the /v1 API through plain JavaScript (static/viewer.js), so
the pages work unchanged when API keys gate /v1 (the script asks for a key once and keeps it in
localStorage). Nothing here reads the database: a page never shows what the API would refuse.
"""

from __future__ import annotations

from flask import Blueprint, render_template, request

from receiver.services import current_services
from receiver.strict import StrictError, parse_decimal_milli, parse_int
from receiver.web.errors import ApiError

bp = Blueprint("viewer", __name__, template_folder="templates", static_folder="static",
               static_url_path="/viewer-static")

DEFAULT_POLL_MS = 5000
MIN_POLL_MS, MAX_POLL_MS = 500, 3_600_000
DEFAULT_PAGE, MAX_PAGE = 60, 1000


def parse_poll(raw: str) -> int:
    """``?poll=<seconds>`` (0.5 to 3600, at most three decimals) as milliseconds, or 400."""
    try:
        return parse_decimal_milli(raw, MIN_POLL_MS, MAX_POLL_MS)
    except StrictError:
        raise ApiError(400, "InvalidParameter", f"poll must be seconds from 0.5 to 3600, got {raw[:100]!r}") from None


def parse_page(raw: str) -> int:
    """``?page=<n>`` (1 to 1000), or 400."""
    try:
        return parse_int(raw, 1, MAX_PAGE)
    except StrictError:
        raise ApiError(400, "InvalidParameter", f"page must be an integer from 1 to {MAX_PAGE}, "
                       f"got {raw[:100]!r}") from None


def _config() -> dict[str, object]:
    svc = current_services()
    # Tests (and impatient operators) may poll faster or page smaller: ?poll=<seconds>&page=<n>.
    poll = request.args.get("poll", "")
    page = request.args.get("page", "")
    return {
        "keys_required": bool(svc.settings.api_keys),
        "poll_ms": parse_poll(poll) if poll else DEFAULT_POLL_MS,
        "page_size": parse_page(page) if page else DEFAULT_PAGE,
        "gap_factor": svc.settings.health_gap_factor,
    }


@bp.get("/")
def index() -> str:
    return render_template("index.html", config=_config())


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    return render_template("job.html", job_id=job_id, config=_config())
