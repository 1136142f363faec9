"""SSRF address classes (issue 15): which addresses wid.net.safe_http may connect to.

`ipaddress.is_global` calls NAT64 (64:ff9b::/96), 6to4 (2002::/16) and IPv4-compatible addresses
public, so on a network with NAT64 a name resolving to 64:ff9b::a9fe:a9fe reached 169.254.169.254.
Every IPv6 form that carries an IPv4 address is now judged by that IPv4 address, and the local-use
NAT64 prefix (64:ff9b:1::/48, where the IPv4 address has no fixed place) is refused outright.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

import pytest

from wid.net import safe_http
from wid.net.safe_http import FetchError, address_refusal, embedded_ipv4
from wid.web.errors import status_of

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
BITS = 0xFFFFFFFF

PUBLIC_V4 = ("8.8.8.8", "1.1.1.1", "65.54.227.120")
# (address, the class the refusal names)
REFUSED_V4 = (
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("169.254.0.1", "link-local"),
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("10.1.2.3", "private, RFC 1918"),
    ("172.16.0.1", "private, RFC 1918"),
    ("192.168.1.1", "private, RFC 1918"),
    ("100.64.0.1", "shared, RFC 6598 carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "special-purpose"),  # "this network"
    ("192.0.2.45", "special-purpose"),  # documentation
    ("198.18.0.1", "special-purpose"),  # benchmarking
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
)


def mapped(v4: int) -> V6:
    return V6((0xFFFF << 32) | v4)


def translated(v4: int) -> V6:
    return V6((0xFFFF << 48) | v4)


def compatible(v4: int) -> V6:
    return V6(v4)


def nat64(v4: int) -> V6:
    return V6((0x0064FF9B << 96) | v4)


def six_to_four(v4: int) -> V6:
    return V6((0x2002 << 112) | (v4 << 80) | 0x1234)  # any subnet and interface id


def teredo_client(v4: int) -> V6:
    """A Teredo address with a public server (65.54.227.120) and `v4` as the client."""
    return teredo(int(V4("65.54.227.120")), v4)


def teredo_server(v4: int) -> V6:
    """A Teredo address with `v4` as the server and a public client (8.8.8.8)."""
    return teredo(v4, int(V4("8.8.8.8")))


def teredo(server: int, client: int) -> V6:
    # 2001:0000 | server IPv4 | flags | port (inverted) | client IPv4 (inverted)
    return V6((0x20010000 << 96) | (server << 64) | (0x8000 << 48) | ((~40000 & 0xFFFF) << 32) | (~client & BITS))


FORMS: dict[str, tuple[Callable[[int], V6], str]] = {
    "mapped": (mapped, "IPv4-mapped ::ffff:0:0/96"),
    "translated": (translated, "IPv4-translated ::ffff:0:0:0/96"),
    "compatible": (compatible, "IPv4-compatible ::/96"),
    "nat64": (nat64, "NAT64 64:ff9b::/96"),
    "6to4": (six_to_four, "6to4 2002::/16"),
    "teredo-client": (teredo_client, "Teredo 2001::/32"),
    "teredo-server": (teredo_server, "Teredo 2001::/32"),
}


# -- IPv4 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", PUBLIC_V4)
def test_public_ipv4_is_allowed(address: str) -> None:
    assert address_refusal(V4(address)) is None


@pytest.mark.parametrize(("address", "cls"), REFUSED_V4)
def test_ipv4_classes_are_refused_by_name(address: str, cls: str) -> None:
    assert address_refusal(V4(address)) == cls


# -- IPv6 forms carrying an IPv4 address --------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("address", PUBLIC_V4)
def test_each_form_carrying_a_public_ipv4_is_allowed_but_teredo(form: str, address: str) -> None:
    build, name = FORMS[form]
    ip = build(int(V4(address)))
    if form.startswith("teredo"):  # refused as before: a tunnel, whatever it carries
        assert address_refusal(ip) == f"{name}, a tunnel refused whatever it carries", ip
    else:
        assert address_refusal(ip) is None, ip


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("address", "cls"), REFUSED_V4)
def test_each_form_carrying_a_refused_ipv4_is_refused_naming_both(form: str, address: str, cls: str) -> None:
    build, name = FORMS[form]
    ip = build(int(V4(address)))
    refusal = address_refusal(ip)
    if form == "compatible" and int(V4(address)) <= 1:
        # ::0.0.0.0 and ::0.0.0.1 are IPv6's own :: and ::1, refused as such.
        assert refusal in {"unspecified", "loopback"}
        return
    assert refusal == f"{name} carrying IPv4 {address}, {cls}", ip


def test_the_metadata_address_through_nat64_is_refused() -> None:
    # The case in issue 15: what a NAT64 resolver answers for a name pointing at 169.254.169.254.
    assert address_refusal(ipaddress.ip_address("64:ff9b::a9fe:a9fe")) == (
        "NAT64 64:ff9b::/96 carrying IPv4 169.254.169.254, link-local")
    assert address_refusal(ipaddress.ip_address("64:ff9b::169.254.169.254")) is not None
    assert address_refusal(ipaddress.ip_address("2002:a9fe:a9fe::1")) == (
        "6to4 2002::/16 carrying IPv4 169.254.169.254, link-local")
    assert address_refusal(ipaddress.ip_address("::169.254.169.254")) == (
        "IPv4-compatible ::/96 carrying IPv4 169.254.169.254, link-local")
    assert address_refusal(ipaddress.ip_address("::ffff:0:169.254.169.254")) == (
        "IPv4-translated ::ffff:0:0:0/96 carrying IPv4 169.254.169.254, link-local")


@pytest.mark.parametrize("address", [
    "2001:0000:4136:e378:8000:63bf:3fff:fdd2",  # RFC 4380's example: server 65.54.227.120, client 192.0.2.45
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # client 8.8.8.8
    "2001:0:a00:1:8000:63bf:f7f7:f7f7",  # server 10.0.0.1
])
def test_teredo_decoding_agrees_with_the_standard_library(address: str) -> None:
    ip = V6(address)
    assert ip.teredo is not None
    assert embedded_ipv4(ip) == ("Teredo 2001::/32", list(ip.teredo))


@pytest.mark.parametrize("address", ["2002:c000:022d::1", "2002:0a00:0001:ffff::", "2002:0808:0808::"])
def test_6to4_decoding_agrees_with_the_standard_library(address: str) -> None:
    ip = V6(address)
    assert embedded_ipv4(ip) == ("6to4 2002::/16", [ip.sixtofour])


def test_teredo_is_refused_naming_a_private_server_or_client() -> None:
    public, private = int(V4("8.8.8.8")), int(V4("10.0.0.1"))
    assert address_refusal(teredo(public, public)) == "Teredo 2001::/32, a tunnel refused whatever it carries"
    assert address_refusal(teredo(private, public)) == "Teredo 2001::/32 carrying IPv4 10.0.0.1, private, RFC 1918"
    assert address_refusal(teredo(public, private)) == "Teredo 2001::/32 carrying IPv4 10.0.0.1, private, RFC 1918"


@pytest.mark.parametrize("address", [
    "64:ff9b:1::a9fe:a9fe",
    "64:ff9b:1::808:808",  # even a public IPv4 in its last 32 bits: the prefix fixes no place for it
    "64:ff9b:1:808:808::",
    "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
])
def test_the_local_use_nat64_prefix_is_refused_outright(address: str) -> None:
    assert address_refusal(V6(address)) == (
        "local-use NAT64 64:ff9b:1::/48, whose embedded IPv4 address has no fixed place")


# -- native IPv6 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["2606:4700:4700::1111", "2001:4860:4860::8888", "2a00:1450:4001:80b::200e"])
def test_public_ipv6_is_allowed(address: str) -> None:
    assert embedded_ipv4(V6(address)) is None
    assert address_refusal(V6(address)) is None


@pytest.mark.parametrize(("address", "cls"), [
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fd00:ec2::254", "unique local, fc00::/7"),  # AWS's IPv6 metadata address
    ("fc00::1", "unique local, fc00::/7"),
    ("fec0::1", "site-local, fec0::/10"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "special-purpose"),  # documentation
    ("100::1", "reserved"),  # discard-only
    ("4000::1", "reserved"),  # outside 2000::/3, the only global unicast space
    ("64:ff9a::a9fe:a9fe", "reserved"),  # next to NAT64, not NAT64
])
def test_ipv6_classes_are_refused_by_name(address: str, cls: str) -> None:
    assert address_refusal(V6(address)) == cls


# -- through the fetcher: refused before any connection, the host and the class named ---------------


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address the fetcher connects to; each connection fails (nothing listens in these tests)."""
    tried: list[Any] = []

    def connect(sock: socket.socket, address: Any) -> None:
        tried.append(address[0])
        raise ConnectionRefusedError

    monkeypatch.setattr(socket.socket, "connect", connect)
    return tried


def resolve_to(monkeypatch: pytest.MonkeyPatch, *addresses: str) -> None:
    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port, 0, 0) if ":" in a else (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def fetch(url: str, *, insecure: bool = False) -> FetchError:
    with pytest.raises(FetchError) as caught:
        safe_http.request("GET", url, service="issuer_keys", what="issuer discovery", timeout=5,
                          allow_insecure=insecure, limit=1000)
    return caught.value


@pytest.mark.parametrize(("answers", "refused", "cls"), [
    (("64:ff9b::a9fe:a9fe",), "64:ff9b::a9fe:a9fe", "NAT64 64:ff9b::/96 carrying IPv4 169.254.169.254, link-local"),
    (("8.8.8.8", "64:ff9b::a9fe:a9fe"), "64:ff9b::a9fe:a9fe", "NAT64 64:ff9b::/96"),  # every answer must be public
    (("2002:a9fe:a9fe::1",), "2002:a9fe:a9fe::1", "6to4 2002::/16 carrying IPv4 169.254.169.254"),
    (("2001:0:4136:e378:8000:63bf:f5ff:fffe",), "2001:0:4136:e378:8000:63bf:f5ff:fffe",
     "Teredo 2001::/32 carrying IPv4 10.0.0.1"),
    (("::7f00:1",), "::7f00:1", "IPv4-compatible ::/96 carrying IPv4 127.0.0.1, loopback"),
    (("64:ff9b:1::a9fe:a9fe",), "64:ff9b:1::a9fe:a9fe", "local-use NAT64 64:ff9b:1::/48"),
    (("::ffff:169.254.169.254",), "::ffff:169.254.169.254", "IPv4-mapped ::ffff:0:0/96 carrying IPv4 169.254.169.254"),
])
def test_a_name_resolving_to_an_embedded_private_address_is_never_contacted(
        monkeypatch: pytest.MonkeyPatch, connections: list[Any], answers: tuple[str, ...], refused: str,
        cls: str) -> None:
    resolve_to(monkeypatch, *answers)
    error = fetch("https://issuer.example.com/.well-known/openid-configuration")
    assert error.code == "address_refused" and status_of(error) == 502
    shown = ipaddress.ip_address(refused)  # as the standard library prints it (mapped forms vary by version)
    assert f"issuer discovery: issuer.example.com resolves to {shown}, which is not a public address" in error.message
    assert cls in error.message
    assert connections == []


def test_a_literal_nat64_metadata_url_is_never_contacted(connections: list[Any]) -> None:
    error = fetch("https://[64:ff9b::a9fe:a9fe]/latest/meta-data/")
    assert error.code == "address_refused" and "169.254.169.254, link-local" in error.message
    assert connections == []


def test_a_public_answer_in_an_embedded_form_is_connected_to(monkeypatch: pytest.MonkeyPatch,
                                                             connections: list[Any]) -> None:
    resolve_to(monkeypatch, "64:ff9b::808:808", "2002:808:808::1")
    error = fetch("https://issuer.example.com/")
    assert error.code == "bad_gateway" and "cannot reach issuer.example.com" in error.message
    assert connections == ["64:ff9b::808:808", "2002:808:808::1"]


def test_insecure_loopback_allows_loopback_itself_but_not_loopback_behind_nat64(
        monkeypatch: pytest.MonkeyPatch, connections: list[Any]) -> None:
    # With WID_ALLOW_INSECURE_ISSUERS, http://localhost may be fetched: at ::1, 127.0.0.1 or its mapped
    # form, never at a NAT64 or 6to4 address that only names 127.0.0.1 (that is another host).
    resolve_to(monkeypatch, "::1", "127.0.0.1", "::ffff:127.0.0.1")
    assert fetch("http://localhost:1/", insecure=True).code == "bad_gateway"
    assert connections == ["127.0.0.1", "::1", "::ffff:127.0.0.1"]
    for answer in ("64:ff9b::7f00:1", "2002:7f00:1::1"):
        resolve_to(monkeypatch, answer)
        error = fetch("http://localhost:1/", insecure=True)
        assert error.code == "address_refused" and "127.0.0.1, loopback" in error.message
    assert len(connections) == 3
