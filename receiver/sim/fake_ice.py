"""A fake ICE (2020-11-09) live snapshot API that speaks the wire protocol of the real SDK.

Tests and the demo point the real ``alibabacloud_ice20201109`` client at it (``protocol="http"``,
``endpoint=fake.endpoint``), so the signing, error parsing and exception classes under test are the SDK's own.
Requests are verified with ACS3-HMAC-SHA256 exactly as ICE would (design/ice.md section 7), because a fake
that accepts anything would hide signing bugs such as the ``+`` versus ``%20`` query encoding.

Behaviour the real service does not document, chosen here and relied on by tests:

* ListLiveSnapshotFiles filters on whole seconds: a file is in ``[StartTime, EndTime]`` when its
  ``CreateTimestamp`` truncated to the second lies in that closed range. Both ends are inclusive, so adjacent
  windows overlap by one second.
* Pages (``SortBy=asc``) hold the oldest ``Limit`` files; when more remain, ``NextStartTime`` is the
  ``CreateTime`` (second precision) of the first file *not* returned. The next page therefore repeats any
  already returned files from that same second, and clients must deduplicate. If more than ``Limit`` files
  share the ``StartTime`` second, paging cannot advance (as with the real API, presumably): use ``Limit=100``.
* ``SortBy=desc`` returns the newest ``Limit`` files and never a ``NextStartTime``: the documented paging
  contract (same ``EndTime``, ``StartTime = NextStartTime``) cannot walk a descending list.
* GetLiveSnapshotJob on an unknown job answers 404 ``JobNotFound``; throttling is 400 ``Throttling.User``.

Accounts: every access key belongs to an account uid (the constructor's keys to ``DEFAULT_UID``; more through
``add_account``), and so does every job. A job of another account answers exactly as an unknown job, and
ListLiveSnapshotJobs lists the caller's jobs only. Temporary keys (``STS.*``) are resolved through the
``StsAuthority`` given as ``sts``: the token travels in ``x-acs-security-token`` (signed), an expired one gets
400 ``InvalidSecurityToken.Expired``, a wrong or missing one 400 ``InvalidSecurityToken.MismatchWithAccessKey``
or ``MissingSecurityToken`` (codes of Alibaba Cloud's public POP errors; the status 400 is inferred). Only
ACS3 (V3) signatures are accepted, so the V2 ``SecurityToken`` query parameter is not read.
``throttle(uid, qps)`` gives one account a token bucket (HTTP 400 ``Throttling.User`` above it) without
touching the others.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from receiver.sim.fake_sts import DEFAULT_UID as DEFAULT_UID  # re-exported: the account of the default keys
from receiver.sim.fake_sts import KeyAccounts, StsAuthority, TokenRefused
from receiver.sim.loopback import LoopbackServer

log = logging.getLogger(__name__)

API_VERSION = "2020-11-09"
DEFAULT_ACCESS_KEY_ID = "testAccessKeyId"
DEFAULT_ACCESS_KEY_SECRET = "testAccessKeySecret"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
JSON_TYPE = "application/json;charset=utf-8"
FAILURE_KINDS = ("throttle", "throttle_plain", "429", "500", "502_html")


class IceApiError(Exception):
    """An error answer in ICE's JSON shape; raised inside handlers, rendered by the server."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def _missing(name: str) -> IceApiError:
    return IceApiError(
        400,
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request is not supplied.',
    )


def _invalid(name: str, value: object) -> IceApiError:
    return IceApiError(400, "InvalidParameter", f'The specified parameter "{name}" is not valid: {value!r}.')


def verify_acs3(
    method: str,
    path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, str],
) -> str:
    """Check an ACS3-HMAC-SHA256 signed request and return its AccessKeyId; raise IceApiError if it fails.

    ``headers`` must have lower-case names. The canonical request is rebuilt from the request's own
    SignedHeaders, since the SDK signs every header it had at signing time (the set varies with STS, bodies
    and retries).
    """
    scheme, _, rest = headers.get("authorization", "").partition(" ")
    parts = dict(kv.strip().split("=", 1) for kv in rest.split(",") if "=" in kv)
    if scheme != "ACS3-HMAC-SHA256" or not {"Credential", "SignedHeaders", "Signature"} <= parts.keys():
        raise IceApiError(
            400, "IncompleteSignature", "The request signature does not conform to Aliyun standards."
        )
    ak = parts["Credential"]
    secret = secrets.get(ak)
    if secret is None:
        raise IceApiError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
    body_hash = hashlib.sha256(body).hexdigest()
    if headers.get("x-acs-content-sha256") != body_hash:
        raise IceApiError(
            400, "SignatureDoesNotMatch", "x-acs-content-sha256 does not match the request body."
        )
    signed = parts["SignedHeaders"]
    names = signed.split(";")
    if "host" not in names or "x-acs-content-sha256" not in names or any(n not in headers for n in names):
        raise IceApiError(400, "IncompleteSignature", f"SignedHeaders is incomplete: {signed}")
    # The wire query is form-encoded (space as "+"); the canonical form uses %20, hence decode and re-quote.
    pairs = sorted(parse_qsl(raw_query, keep_blank_values=True))
    canonical_query = "&".join(f"{k}={quote(v, safe='~')}" for k, v in pairs)
    canonical_headers = "".join(f"{n}:{headers[n].strip()}\n" for n in names)
    canonical = "\n".join([method, path or "/", canonical_query, canonical_headers, signed, body_hash])
    string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    expected = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, parts["Signature"]):
        raise IceApiError(
            400,
            "SignatureDoesNotMatch",
            f"Specified signature does not match our calculation. server StringToSign is [{string_to_sign}]",
        )
    return ak


def _parse_time(params: Mapping[str, str], name: str, required: bool = True) -> datetime | None:
    value = params.get(name)
    if not value:
        if required:
            raise _missing(name)
        return None
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise IceApiError(400, f"Malformed{name}", f"Specified {name} is malformed: {value!r}.") from None


def _int_param(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise _invalid(name, value) from None
    if not lo <= n <= hi:
        raise _invalid(name, value)
    return n


def _fmt_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime(TIME_FORMAT)


def _now_str() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


class FakeIce(KeyAccounts, LoopbackServer):
    """In-memory ICE live snapshot service on ``127.0.0.1:<ephemeral port>``; see the module docstring."""

    thread_name = "fake-ice"

    def __init__(
        self,
        access_keys: dict[str, str] | None = None,
        region: str = "cn-shanghai",
        sts: StsAuthority | None = None,
    ) -> None:
        super().__init__()
        self._init_keys({DEFAULT_ACCESS_KEY_ID: DEFAULT_ACCESS_KEY_SECRET} if access_keys is None else access_keys,
                        sts)
        self.region = region
        self.throttled_by_uid: dict[str, int] = {}
        self._owners: dict[str, str] = {}  # job id -> uid
        self._limits: dict[str, _TokenBucket] = {}
        self.latency = 0.0
        # Seconds of x-acs-date skew tolerated; None turns the check off. 15 min is the usual Alibaba figure.
        self.max_clock_skew: float | None = 900.0
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._files: dict[str, list[dict[str, Any]]] = {}
        self._failures: dict[str, deque[str]] = {}
        self._sequence: dict[str, int] = {}
        self._nonces: dict[str, float] = {}
        self._handlers: dict[str, Callable[[dict[str, str], str], dict[str, Any]]] = {
            "GetLiveSnapshotJob": self._get_job,
            "ListLiveSnapshotFiles": self._list_files,
            "ListLiveSnapshotJobs": self._list_jobs,
            "SubmitLiveSnapshotJob": self._submit_job,
            "SendLiveSnapshotJobCommand": self._send_command,
            "DeleteLiveSnapshotFiles": self._delete_files,
        }

    # -- lifecycle ---------------------------------------------------------------------------------------

    def make_server(self) -> ThreadingHTTPServer:
        return ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- state set-up -------------------------------------------------------------------------------------

    def throttle(self, uid: str, qps: float | None, retry_after_ms: int | None = None) -> None:
        """Limit account ``uid`` to ``qps`` calls per second (a bucket of one second's calls); None lifts it.

        Calls above it get 400 ``Throttling.User``; with ``retry_after_ms`` they also carry
        ``x-acs-retry-after`` (the SDK then raises ThrottlingException instead of ClientException).
        """
        with self._lock:
            if qps is None:
                self._limits.pop(uid, None)
            else:
                self._limits[uid] = _TokenBucket(qps, retry_after_ms)

    def add_job(
        self,
        job_id: str,
        *,
        name: str = "job",
        bucket: str = "testbucket",
        endpoint: str = "oss-cn-shanghai.aliyuncs.com",
        overwrite_format: str = "snapshot/{JobId}.jpg",
        sequence_format: str = "snapshot/{JobId}/{UnixTimestamp}.jpg",
        interval: int = 5,
        status: str = "started",
        callback_url: str = "",
        stream_url: str = "rtmp://example/live/stream",
        owner_uid: str | None = None,
    ) -> dict[str, Any]:
        """Store a job of account ``owner_uid`` (default DEFAULT_UID); returns its GetLiveSnapshotJob dict."""
        now = _now_str()
        job: dict[str, Any] = {
            "JobId": job_id,
            "JobName": name,
            "TemplateId": "fake-template",
            "TemplateName": "fake",
            "Status": status,
            "StreamInput": {"Type": "rtmp", "Url": stream_url},
            "SnapshotOutput": {"StorageType": "oss", "Endpoint": endpoint, "Bucket": bucket},
            "OverwriteFormat": overwrite_format,
            "SequenceFormat": sequence_format,
            "TimeInterval": interval,
            "CallbackUrl": callback_url,
            "CreateTime": now,
            "LastModified": now,
        }
        with self._lock:
            self._jobs[job_id] = job
            self._owners[job_id] = owner_uid or DEFAULT_UID
            self._files.setdefault(job_id, [])
        return json.loads(json.dumps(job))  # a copy, so callers cannot mutate the stored job

    def remove_job(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
            self._owners.pop(job_id, None)
            self._files.pop(job_id, None)

    def add_file(
        self,
        job_id: str,
        oss_object: str,
        create_timestamp_ms: int,
        *,
        is_overlay: bool = False,
        bucket: str | None = None,
        endpoint: str | None = None,
    ) -> dict[str, Any]:
        """Record a file as ListLiveSnapshotFiles reports it; bucket and endpoint default to the job's."""
        with self._lock:
            output = self._jobs[job_id]["SnapshotOutput"]
            item = {
                "OssEndpoint": endpoint if endpoint is not None else output["Endpoint"],
                "OssBucket": bucket if bucket is not None else output["Bucket"],
                "OssObject": oss_object,
                "CreateTime": _fmt_ms(create_timestamp_ms),
                "CreateTimestamp": create_timestamp_ms,
                "IsOverlay": is_overlay,
            }
            self._files[job_id].append(item)
        return dict(item)

    def take_snapshot(self, job_id: str, timestamp_ms: int) -> list[dict[str, Any]]:
        """Add the files one snapshot would produce (overwrite and/or sequence) and return them.

        ``{UnixTimestamp}`` renders in milliseconds, ``{Date}`` as ``YYYY-MM-DD`` (UTC) and ``{Sequence}`` as
        a per-job counter from 1: ICE documents none of these, so they are guesses (design/ice.md section 4).
        """
        with self._lock:
            job = self._jobs[job_id]
            seq = self._sequence[job_id] = self._sequence.get(job_id, 0) + 1
        values = {
            "{JobId}": job_id,
            "{UnixTimestamp}": str(timestamp_ms),
            "{Sequence}": str(seq),
            "{Date}": datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%d"),
        }
        out = []
        for fmt, overlay in ((job["OverwriteFormat"], True), (job["SequenceFormat"], False)):
            if fmt:
                key = fmt
                for ph, v in values.items():
                    key = key.replace(ph, v)
                out.append(self.add_file(job_id, key, timestamp_ms, is_overlay=overlay))
        return out

    def fail_next(self, action: str, n: int, kind: str) -> None:
        """Make the next ``n`` requests for ``action`` (``"*"``: any action) fail after authentication.

        Kinds: ``throttle`` (400 Throttling.User with ``x-acs-retry-after: 100``, so the SDK raises
        ThrottlingException), ``throttle_plain`` (the same without the header: a ClientException), ``429``
        (429 Throttling, no header), ``500`` (InternalError), ``502_html`` (a non-JSON gateway page).
        """
        if kind not in FAILURE_KINDS:
            raise ValueError(f"kind must be one of {FAILURE_KINDS}, got {kind!r}")
        with self._lock:
            self._failures.setdefault(action, deque()).extend([kind] * n)

    def calls(self, action: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r["action"] == action)

    def calls_by_uid(self) -> dict[str, dict[str, int]]:
        """Authenticated requests per account and action, whatever their answer (throttled ones included)."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for r in self.requests:
                if "uid" in r:
                    per = out.setdefault(r["uid"], {})
                    per[r["action"]] = per.get(r["action"], 0) + 1
        return out

    def owner(self, job_id: str) -> str | None:
        with self._lock:
            return self._owners.get(job_id)

    def files(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(f) for f in self._files.get(job_id, [])]

    # -- request handling (called from server threads) ----------------------------------------------------

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Process one request; returns (status, extra headers, body). Never raises for client errors.

        Each request is logged in ``requests`` as ``{"action", "params", "status", "time"}`` plus
        ``access_key_id``, ``uid`` and ``credential`` ("access_key" | "sts") once authenticated, and ``code``
        for ICE error answers.
        """
        if self.latency:
            time.sleep(self.latency)
        request_id = str(uuid.uuid4()).upper()
        split = urlsplit(target)
        action = headers.get("x-acs-action", "")
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        if body and headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        entry: dict[str, Any] = {"action": action, "params": params, "status": 0, "time": time.time()}
        try:
            ak = verify_acs3(method, split.path, split.query, headers, body, _Secrets(self))
            entry["access_key_id"] = ak
            uid, credential = self._identify(ak, headers)
            entry["uid"], entry["credential"] = uid, credential
            self._check_freshness(headers)
            if headers.get("x-acs-version") != API_VERSION:
                raise IceApiError(
                    400, "InvalidVersion", f"Specified version is not valid: {headers.get('x-acs-version')}"
                )
            handler = self._handlers.get(action)
            if handler is None:
                raise IceApiError(404, "InvalidAction.NotFound", f"Specified api is not found: {action!r}.")
            self._check_rate(uid)
            injected = self._injected_failure(action)
            if injected is not None:
                status, extra, payload = injected
            else:
                result = handler(params, uid)
                status, extra, payload = 200, {}, json.dumps({"RequestId": request_id, **result}).encode()
        except IceApiError as e:
            entry["code"] = e.code
            status, extra, payload = e.status, e.headers, self._error_body(request_id, e.code, e.message)
        entry["status"] = status
        with self._lock:
            self.requests.append(entry)
        return status, {"x-acs-request-id": request_id, **extra}, payload

    def _error_body(self, request_id: str, code: str, message: str) -> bytes:
        return json.dumps(
            {
                "RequestId": request_id,
                "HostId": f"ice.{self.region}.aliyuncs.com",
                "Code": code,
                "Message": message,
                "Recommend": f"https://api.alibabacloud.com/troubleshoot?q={code}&product=ICE",
            }
        ).encode()

    def _identify(self, ak: str, headers: Mapping[str, str]) -> tuple[str, str]:
        """The account behind a verified key, and whether the key is long-term or temporary."""
        owner = self._long_term_owner(ak)
        if owner is not None:
            return owner, "access_key"
        assert self.sts is not None  # _Secrets only resolves temporary keys through an authority
        token = headers.get("x-acs-security-token")
        if token and "x-acs-security-token" not in headers.get("authorization", ""):
            raise IceApiError(400, "IncompleteSignature", "x-acs-security-token must be signed.")
        try:
            return self.sts.check(ak, token), "sts"
        except TokenRefused as e:
            if e.kind == "expired":
                raise IceApiError(400, "InvalidSecurityToken.Expired", "Specified SecurityToken is expired.") from None
            if e.reason == "missing":
                raise IceApiError(400, "MissingSecurityToken", "SecurityToken is mandatory for this action.") from None
            raise IceApiError(
                400,
                "InvalidSecurityToken.MismatchWithAccessKey",
                "Specified SecurityToken mismatch with the AccessKey.",
            ) from None

    def _check_rate(self, uid: str) -> None:
        with self._lock:
            bucket = self._limits.get(uid)
            if bucket is None or bucket.take():
                return
            self.throttled_by_uid[uid] = self.throttled_by_uid.get(uid, 0) + 1
        extra = {"x-acs-retry-after": str(bucket.retry_after_ms)} if bucket.retry_after_ms else {}
        raise IceApiError(400, "Throttling.User", "Request was denied due to user flow control.", extra)

    def _check_freshness(self, headers: Mapping[str, str]) -> None:
        if self.max_clock_skew is None:
            return
        try:
            sent = (
                datetime.strptime(headers.get("x-acs-date", ""), TIME_FORMAT).replace(tzinfo=UTC).timestamp()
            )
        except ValueError:
            raise IceApiError(400, "InvalidTimeStamp.Format", "Specified time stamp is malformed.") from None
        now = time.time()
        if abs(now - sent) > self.max_clock_skew:
            raise IceApiError(
                400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired."
            )
        nonce = headers.get("x-acs-signature-nonce", "")
        with self._lock:
            if nonce in self._nonces:
                raise IceApiError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
            self._nonces[nonce] = now
            # Nonces older than the skew window can no longer be replayed, so forget them.
            if len(self._nonces) > 10_000:
                self._nonces = {k: t for k, t in self._nonces.items() if now - t <= self.max_clock_skew}

    def _injected_failure(self, action: str) -> tuple[int, dict[str, str], bytes] | None:
        with self._lock:
            queue = self._failures.get(action) or self._failures.get("*")
            kind = queue.popleft() if queue else None
        if kind is None:
            return None
        rid = str(uuid.uuid4()).upper()
        user_flow = "Request was denied due to user flow control."
        if kind == "throttle":
            return 400, {"x-acs-retry-after": "100"}, self._error_body(rid, "Throttling.User", user_flow)
        if kind == "throttle_plain":
            return 400, {}, self._error_body(rid, "Throttling.User", user_flow)
        if kind == "429":
            return 429, {}, self._error_body(rid, "Throttling", "Request was denied due to flow control.")
        if kind == "500":
            return (
                500,
                {},
                self._error_body(
                    rid, "InternalError", "The request processing has failed due to some unknown error."
                ),
            )
        return 502, {"Content-Type": "text/html"}, b"<html><body>502 Bad Gateway</body></html>"

    # -- actions ---------------------------------------------------------------------------------------------

    def _job(self, params: Mapping[str, str], uid: str) -> dict[str, Any]:
        job_id = params.get("JobId")
        if not job_id:
            raise _missing("JobId")
        job = self._jobs.get(job_id)
        # Another account's job is indistinguishable from none, as ICE scopes every job id to its account.
        if job is None or self._owners.get(job_id, DEFAULT_UID) != uid:
            raise IceApiError(404, "JobNotFound", "No such job.")
        return job

    def _get_job(self, params: dict[str, str], uid: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._job(params, uid))

    def _list_files(self, params: dict[str, str], uid: str) -> dict[str, Any]:
        start, end = _parse_time(params, "StartTime"), _parse_time(params, "EndTime")
        assert start is not None and end is not None
        if end < start or end - start > timedelta(days=1):
            raise IceApiError(
                400, "EndTimeMismatch", "Specified end time does not math the specified start time."
            )
        limit = _int_param(params, "Limit", 10, 1, 100)
        sort_by = params.get("SortBy") or "asc"
        if sort_by not in ("asc", "desc"):
            raise _invalid("SortBy", sort_by)
        lo, hi = int(start.timestamp()), int(end.timestamp())
        with self._lock:
            job = self._job(params, uid)
            stored = self._files[job["JobId"]]
            files = [dict(f) for f in stored if lo <= f["CreateTimestamp"] // 1000 <= hi]
        # A stable sort keeps insertion order within a millisecond (a snapshot's overlay and sequence files).
        files.sort(key=lambda f: f["CreateTimestamp"], reverse=sort_by == "desc")
        result: dict[str, Any] = {"FileList": files[:limit]}
        if sort_by == "asc" and len(files) > limit:
            result["NextStartTime"] = files[limit]["CreateTime"]
        return result

    def _list_jobs(self, params: dict[str, str], uid: str) -> dict[str, Any]:
        page_no = _int_param(params, "PageNo", 1, 1, 1_000_000)
        page_size = _int_param(params, "PageSize", 10, 1, 100)
        status = params.get("Status") or None
        if status is not None and status not in ("init", "started", "paused"):
            raise _invalid("Status", status)
        sort_by = params.get("SortBy") or "desc"
        if sort_by not in ("asc", "desc"):
            raise _invalid("SortBy", sort_by)
        start, end = _parse_time(params, "StartTime", False), _parse_time(params, "EndTime", False)
        if start and end and (end < start or end - start > timedelta(days=30)):
            raise IceApiError(
                400, "EndTimeMismatch", "Specified end time does not math the specified start time."
            )
        keyword = params.get("SearchKeyWord") or ""
        with self._lock:
            jobs = [dict(j) for i, j in self._jobs.items() if self._owners.get(i, DEFAULT_UID) == uid]
        jobs = [
            j
            for j in jobs
            if (status is None or j["Status"] == status)
            and (not keyword or keyword in j["JobId"] or keyword in j["JobName"])
            and (start is None or j["CreateTime"] >= start.strftime(TIME_FORMAT))
            and (end is None or j["CreateTime"] <= end.strftime(TIME_FORMAT))
        ]
        jobs.sort(key=lambda j: (j["CreateTime"], j["JobId"]), reverse=sort_by == "desc")
        page = jobs[(page_no - 1) * page_size : page_no * page_size]
        # List items carry no formats and no CallbackUrl (design/ice.md section 3).
        keep = ("JobId", "JobName", "Status", "TemplateId", "TemplateName", "TimeInterval", "CreateTime")
        items = [{**{k: j[k] for k in keep}, "SnapshotOutput": dict(j["SnapshotOutput"])} for j in page]
        return {
            "JobList": items,
            "PageNo": page_no,
            "PageSize": page_size,
            "SortBy": sort_by,
            "TotalCount": len(jobs),
        }

    def _submit_job(self, params: dict[str, str], uid: str) -> dict[str, Any]:
        for name in ("JobName", "TemplateId", "StreamInput", "SnapshotOutput"):
            if not params.get(name):
                raise _missing(name)
        try:
            stream, output = json.loads(params["StreamInput"]), json.loads(params["SnapshotOutput"])
            url, endpoint, bucket = stream["Url"], output["Endpoint"], output["Bucket"]
        except (ValueError, KeyError, TypeError):
            raise _invalid("StreamInput/SnapshotOutput", params.get("SnapshotOutput")) from None
        job_id = uuid.uuid4().hex
        # The fake has no templates: every job gets the console's default formats at a 5 s interval.
        self.add_job(
            job_id,
            name=params["JobName"],
            bucket=bucket,
            endpoint=endpoint,
            stream_url=url,
            callback_url=params.get("CallbackUrl", ""),
            status="started",
            owner_uid=uid,
        )
        return {"JobId": job_id}

    def _send_command(self, params: dict[str, str], uid: str) -> dict[str, Any]:
        command = params.get("Command")
        if not command:
            raise _missing("Command")
        if command not in ("start", "stop", "restart"):
            raise _invalid("Command", command)
        with self._lock:
            job = self._job(params, uid)
            if command == "start" and job["Status"] == "started":
                raise IceApiError(409, "JobAlreadyStarted", "The job has already been started.")
            job["Status"] = "paused" if command == "stop" else "started"
            job["LastModified"] = _now_str()
        return {}

    def _delete_files(self, params: dict[str, str], uid: str) -> dict[str, Any]:
        raw = params.get("CreateTimestampList")
        if not raw:
            raise _missing("CreateTimestampList")
        try:
            stamps = [int(s) for s in json.loads(raw)]
        except (ValueError, TypeError):
            raise _invalid("CreateTimestampList", raw) from None
        if len(stamps) > 200:
            raise _invalid("CreateTimestampList", f"{len(stamps)} items")
        with self._lock:
            job = self._job(params, uid)
            gone = set(stamps)
            self._files[job["JobId"]] = [
                f for f in self._files[job["JobId"]] if f["CreateTimestamp"] not in gone
            ]
        return {"DeleteFileResultList": [{"CreateTimestamp": s, "Result": "OK"} for s in stamps]}


class _TokenBucket:
    """``qps`` calls per second with a burst of one second's calls; the caller holds the fake's lock."""

    def __init__(self, qps: float, retry_after_ms: int | None) -> None:
        if qps <= 0:
            raise ValueError(f"qps must be positive, got {qps!r}")
        self.rate = qps
        self.capacity = max(1.0, qps)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.retry_after_ms = retry_after_ms

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Secrets(Mapping[str, str]):
    """The secrets verify_acs3 may use: the fake's long-term keys, then the authority's temporary ones."""

    def __init__(self, fake: FakeIce) -> None:
        self._fake = fake

    def __getitem__(self, ak: str) -> str:
        secret = self._fake.access_keys.get(ak)
        if secret is not None:
            return secret
        temp = self._fake.sts.lookup(ak) if self._fake.sts is not None else None
        if temp is None:
            raise KeyError(ak)
        return temp.access_key_secret

    def __iter__(self) -> Iterator[str]:
        return iter(self._fake.access_keys)

    def __len__(self) -> int:
        return len(self._fake.access_keys)


def _make_handler(fake: FakeIce) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeIce/1.0"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, payload = fake.handle(self.command, self.path, headers, body)
            self.send_response(status)
            if not any(k.lower() == "content-type" for k in extra):
                self.send_header("Content-Type", JSON_TYPE)
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve  # noqa: N815 - names fixed by BaseHTTPRequestHandler

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
            log.debug("fake-ice %s " + format, self.address_string(), *args)

    return Handler
