"""OSS endpoint normalisation and the allow-list that keeps events from steering our requests."""

from __future__ import annotations

import fnmatch
import functools
import re
from urllib.parse import urlsplit

from receiver.config import Settings
from receiver.exceptions import Rejected

_HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


class EndpointPolicy:
    """Which OSS endpoints an event may make us contact, and the URL to use for each.

    ``normalize`` reduces an endpoint to a bare lower-case host: scheme, user info, port, path and a
    trailing dot are dropped. Dropping the port and scheme is deliberate: an unmapped host is always
    contacted as ``https://host`` on the default port, so an event cannot steer us to plain HTTP or to
    another service on an allowed host.

    Patterns are fnmatch-style and matched against the whole host, case-insensitively; ``*.aliyuncs.com``
    needs a label before ``.aliyuncs.com``, so neither ``evilaliyuncs.com`` nor
    ``aliyuncs.com.evil.com`` match. A host present in the endpoint map is allowed too: the operator named
    it explicitly.
    """

    def __init__(self, allowed_patterns: tuple[str, ...], endpoint_map: dict[str, str]) -> None:
        self.allowed_patterns = tuple(p.strip().lower().rstrip(".") for p in allowed_patterns if p.strip())
        self.endpoint_map = {self.normalize(h): url.strip().rstrip("/") for h, url in endpoint_map.items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> EndpointPolicy:
        return cls(settings.oss_allowed_endpoints, settings.oss_endpoint_map)

    @staticmethod
    def normalize(endpoint: str) -> str:
        """``"https://OSS-cn-shanghai.aliyuncs.com:443/x"`` -> ``"oss-cn-shanghai.aliyuncs.com"``.

        Raises Rejected (not ValueError) when no valid DNS host name or IPv4 address remains, because the
        input usually comes from a callback and the pipeline already turns Rejected into a final failure.
        """
        return _normalize(endpoint)

    def is_allowed(self, endpoint: str) -> bool:
        try:
            host = self.normalize(endpoint)
        except Rejected:
            return False
        if host in self.endpoint_map:
            return True
        return any(fnmatch.fnmatchcase(host, p) for p in self.allowed_patterns)

    def resolve(self, endpoint: str) -> str:
        """The base URL to give oss2; raises Rejected for an endpoint we must not contact."""
        if not self.is_allowed(endpoint):
            raise Rejected(f"OSS endpoint {endpoint!r} is not allowed")
        return self.map_or_https(endpoint)

    def map_or_https(self, endpoint: str) -> str:
        """Like resolve, without the allow-list (for endpoints we configured ourselves)."""
        host = self.normalize(endpoint)
        return self.endpoint_map.get(host) or f"https://{host}"


@functools.lru_cache(maxsize=1024)
def _normalize(endpoint: str) -> str:
    # Cached: every frame checks its job's endpoint several times (policy, bucket lookup, callback fields),
    # and a job's endpoint does not change. Inputs are short (callback fields are capped at 255 bytes), so
    # 1024 entries stay small. Invalid input raises, which lru_cache does not remember.
    text = endpoint.strip()
    if "\\" in text or any(c.isspace() for c in text):
        raise Rejected(f"invalid OSS endpoint {endpoint!r}")
    # "//" makes urlsplit treat a bare "host:port/path" as a network location.
    parts = urlsplit(text if "://" in text else "//" + text)
    try:
        host = (parts.hostname or "").rstrip(".")
        parts.port  # noqa: B018 - raises ValueError for a non-numeric port
    except ValueError:
        raise Rejected(f"invalid OSS endpoint {endpoint!r}") from None
    if not host or not _HOST_RE.match(host):
        raise Rejected(f"invalid OSS endpoint {endpoint!r}")
    return host
