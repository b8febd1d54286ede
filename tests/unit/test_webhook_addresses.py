"""Which webhook URLs and addresses are refused (SSRF), with an injected resolver: no DNS, no sockets."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from standardwebhooks.webhooks import Webhook

from receiver.adapters.webhook_addresses import RefusedUrl, check_url, legacy_ipv4, refusal
from receiver.adapters.webhooks import parse_status_line, signed_headers


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"a literal address must not be resolved ({host})")


def dns(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"{host}: Name or service not known")
        return table[host]
    return resolve


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/hook", "https://127.8.9.10/", "https://10.0.0.1/", "https://172.16.5.4/",
    "https://192.168.1.1/", "https://169.254.169.254/latest/meta-data", "https://100.100.100.200/",
    "https://100.64.0.1/", "https://0.0.0.0/", "https://224.0.0.1/", "https://240.0.0.1/",
    "https://255.255.255.255/", "https://192.0.2.1/",
    "https://[::1]/", "https://[::]/", "https://[fe80::1]/", "https://[fc00::1]/", "https://[fd00:ec2::254]/",
    "https://[ff02::1]/", "https://[2001:db8::1]/",
    # IPv4 inside IPv6: mapped, NAT64, 6to4
    "https://[::ffff:127.0.0.1]/", "https://[::ffff:7f00:1]/", "https://[::ffff:169.254.169.254]/",
    "https://[64:ff9b::a00:1]/", "https://[2002:7f00:1::]/",
    # The forms inet_aton reads: one decimal number, hex, octal, short dotted
    "https://2130706433/", "https://0x7f.1/", "https://017700000001/", "https://0x7f000001/", "https://127.1/",
    "https://0177.0.0.1/", "https://0/", "https://0xa9.0xfe.0xa9.0xfe/",
])
def test_private_loopback_link_local_and_metadata_addresses_are_refused(url):
    with pytest.raises(RefusedUrl, match="not allowed"):
        check_url(url, no_dns, allow_private=False)


@pytest.mark.parametrize(("text", "ip"), [
    ("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("017700000001", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"), ("10.1.2", "10.1.0.2"), ("8.8.8.8", "8.8.8.8"), ("0x", "0.0.0.0"),
])
def test_legacy_ipv4_forms_are_read_as_a_c_resolver_reads_them(text, ip):
    assert legacy_ipv4(text) == ipaddress.IPv4Address(ip)


@pytest.mark.parametrize("text", ["example.com", "256.1.1.1", "1.2.3.4.5", "08", "0x1g", "1..2", "4294967296", ""])
def test_names_and_out_of_range_numbers_are_not_ipv4(text):
    assert legacy_ipv4(text) is None


def test_a_name_resolving_to_a_private_address_is_refused_even_if_another_is_public():
    resolve = dns({"inside.example.com": ["10.0.0.7"], "mixed.example.com": ["93.184.216.34", "127.0.0.1"],
                   "v6.example.com": ["::ffff:192.168.0.1"], "meta.example.com": ["169.254.169.254"]})
    for host in ("inside", "mixed", "v6", "meta"):
        with pytest.raises(RefusedUrl, match="not allowed"):
            check_url(f"https://{host}.example.com/h", resolve, allow_private=False)


def test_a_public_name_is_allowed_and_pinned_to_the_checked_address():
    resolve = dns({"hooks.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    t = check_url("https://Hooks.Example.com:8443/in?x=1", resolve, allow_private=False)
    assert (t.scheme, t.host, t.port, t.path, t.address) == ("https", "hooks.example.com", 8443, "/in?x=1",
                                                              "93.184.216.34")


def test_unresolvable_names_are_refused_with_the_reason():
    with pytest.raises(RefusedUrl, match="cannot resolve nowhere.example"):
        check_url("https://nowhere.example/", dns({}), allow_private=False)


@pytest.mark.parametrize(("url", "why"), [
    ("http://93.184.216.34/", "must use https"), ("ftp://example.com/", "must use https"),
    ("https://user:pw@93.184.216.34/", "credentials"), ("https:///nohost", "no host"),
    ("https://93.184.216.34/#frag", "fragment"), ("https://bad_host!.com/", "not a valid host name"),
    ("https://93.184.216.34:99999/", "not a valid URL"), ("https://exa mple.com/", "ASCII"),
    ("x" * 3000, "at most"), ("https://é.com/", "ASCII"),
])
def test_malformed_or_non_https_urls_are_refused(url, why):
    with pytest.raises(RefusedUrl, match=why):
        check_url(url, dns({}), allow_private=False)


def test_allow_private_lifts_the_address_rule_and_allows_http():
    t = check_url("http://127.0.0.1:9000/hook", no_dns, allow_private=True)
    assert (t.scheme, t.address, t.port, t.path) == ("http", "127.0.0.1", 9000, "/hook")
    assert check_url("http://localhost/", dns({"localhost": ["127.0.0.1"]}), allow_private=True).address == "127.0.0.1"
    with pytest.raises(RefusedUrl, match="must use https or http"):
        check_url("ftp://127.0.0.1/", no_dns, allow_private=True)


def test_public_addresses_have_no_refusal():
    for ip in ("93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"):
        assert refusal(ipaddress.ip_address(ip)) is None


def test_signed_headers_verify_with_the_standard_webhooks_library():
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    now = dt.datetime.now(dt.UTC)
    body = b'{"type":"snapshot.created","timestamp":"2026-11-28T12:00:00.000Z","data":{}}'
    headers = signed_headers(secret, "msg_1", body, now)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["type"] == "snapshot.created"
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body + b" ", headers)


@pytest.mark.parametrize(("line", "status"), [(b"HTTP/1.1 204 No Content", 204), (b"HTTP/1.0 500", 500)])
def test_status_lines(line, status):
    assert parse_status_line(line) == status


@pytest.mark.parametrize("line", [b"", b"SSH-2.0-OpenSSH", b"HTTP/1.1 20 OK", b"HTTP/1.1 abc"])
def test_bad_status_lines(line):
    with pytest.raises(ValueError):
        parse_status_line(line)
