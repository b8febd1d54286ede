"""Where a webhook may be sent (product.md 8): the URL rules and the address rules, with no I/O.

A subscriber URL is chosen by whoever holds an API key, and the receiver then POSTs from inside its own
network: without these rules a subscription is a way to reach the cloud metadata service, a database port
on loopback, or anything else only the receiver can see (SSRF). So:

- the scheme is ``https`` (``http`` too when private addresses are allowed);
- every address the host resolves to must be a public unicast one: not loopback, private, shared (CGNAT),
  link-local, multicast, reserved, unspecified, documentation, nor a cloud metadata address; an IPv6 address
  that carries an IPv4 one (mapped ``::ffff:a.b.c.d``, NAT64, 6to4, Teredo) is judged by that IPv4 address too;
- a host written as an IPv4 number in one of the forms ``inet_aton`` accepts (``2130706433``, ``0x7f.1``,
  ``017700000001``) is read the way a C resolver would read it, so it cannot slip past as a "name".

The resolver is handed in (``Resolver``), so the rules are unit-tested without DNS; the sender
(``receiver/adapters/webhooks.py``) calls ``check_url`` before every attempt and connects to the address
it returned, so DNS cannot change between the check and the connection.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to, as strings; raises OSError when it cannot resolve.
Resolver = Callable[[str, int], Sequence[str]]

MAX_URL_CHARS = 2048
METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class RefusedUrl(ValueError):
    """This URL may not be a webhook target; the message says why."""


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to ``address`` (port ``port``), while TLS and Host name ``host``."""

    scheme: str
    host: str  # as in the URL, lower case, without IPv6 brackets
    port: int
    path: str  # path and query, at least "/"
    address: str  # the checked address to connect to


_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _aton_part(text: str) -> int | None:
    if text[:2] in ("0x", "0X"):
        digits, base = text[2:], 16
    elif len(text) > 1 and text[0] == "0":
        digits, base = text[1:], 8
    else:
        digits, base = text, 10
    if not digits:
        return 0 if base == 16 else None  # glibc reads a bare "0x" as 0
    if not all(c in _DIGITS[base] for c in digits):
        return None
    return int(digits, base)


def legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read as ``inet_aton`` reads it (1 to 4 parts, each decimal, ``0x`` hex or ``0`` octal, the
    last filling the remaining bytes), or None when it is not such a number."""
    parts = host.split(".")
    if host.endswith(".") and len(parts) > 1:
        parts = parts[:-1]  # a trailing dot is the root label
    if not 1 <= len(parts) <= 4:
        return None
    values = [_aton_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    nums = [v for v in values if v is not None]
    value = 0
    for n in nums[:-1]:
        if n > 255:
            return None
        value = value << 8 | n
    rest = 4 - (len(nums) - 1)
    if nums[-1] >= 1 << (8 * rest):
        return None
    return ipaddress.IPv4Address(value << (8 * rest) | nums[-1])


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host names literally (IPv6 without brackets, any IPv4 form), else None."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    return legacy_ipv4(host)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def refusal(ip: IPAddress) -> str | None:
    """Why a webhook may not go to ``ip``, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            why = refusal(inner)
            if why is not None:
                return f"{why} (inside {ip})"
    if ip in METADATA:
        return f"{ip} is a cloud metadata address"
    for name, flag in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                       ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                       ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return f"{ip} is a {name} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def parse_url(url: str, allow_http: bool) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a webhook URL, or RefusedUrl."""
    if (not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS or not url.isascii() or not url.isprintable()
            or " " in url):
        # Also what keeps the request line of the attempt well-formed (adapters/webhooks.py writes it as is).
        raise RefusedUrl(f"url must be an absolute http(s) URL of at most {MAX_URL_CHARS} printable ASCII "
                         "characters, without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise RefusedUrl(f"url is not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_http else ("https",)
    if scheme not in allowed:
        raise RefusedUrl("url must use https" + (" or http" if allow_http else
                                                  " (http needs RECEIVER_WEBHOOK_ALLOW_PRIVATE=1)"))
    host = (parts.hostname or "").lower()
    if not host:
        raise RefusedUrl("url has no host")
    if parts.username is not None or parts.password is not None:
        raise RefusedUrl("url must not carry credentials (user:password@); authenticate with the signature")
    if parts.fragment:
        raise RefusedUrl("url must not have a #fragment")
    if literal_address(host) is None:
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
            raise RefusedUrl(f"url host {host[:100]!r} is not a valid host name")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


def check_url(url: str, resolve: Resolver, *, allow_private: bool) -> Target:
    """The URL checked and its address chosen; RefusedUrl says why not. ``allow_private`` lifts the address
    rules and allows http (RECEIVER_WEBHOOK_ALLOW_PRIVATE)."""
    scheme, host, port, path = parse_url(url, allow_http=allow_private)
    literal = literal_address(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            found = resolve(host, port)
        except OSError as e:
            raise RefusedUrl(f"cannot resolve {host}: {e}") from None
        addresses = []
        for a in found:
            try:
                addresses.append(ipaddress.ip_address(a.split("%", 1)[0]))
            except ValueError:
                raise RefusedUrl(f"{host} resolved to {a!r}, which is not an address") from None
        if not addresses:
            raise RefusedUrl(f"{host} resolves to no address")
    if not allow_private:
        # Every address, not just the first: which one a later connection picks is not ours to choose.
        for ip in addresses:
            why = refusal(ip)
            if why is not None:
                raise RefusedUrl(f"{host} is not allowed: {why} (RECEIVER_WEBHOOK_ALLOW_PRIVATE=1 allows it)")
    return Target(scheme, host, port, path, str(addresses[0]))
