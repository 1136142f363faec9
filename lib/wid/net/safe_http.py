"""One HTTP client for URLs that outsiders influence (ATProto identities and servers, OIDC issuers).

- https only; `http://` only for loopback hosts (`localhost`, 127.0.0.0/8, ::1) and only when the
  caller allows insecure targets (WID_ALLOW_INSECURE_ISSUERS: tests and demos);
- the host is resolved once and every address must be public (no private, link-local, loopback,
  multicast or reserved address, unless it is the allowed loopback case above); an IPv6 address that
  carries an IPv4 address (IPv4-mapped, -translated and -compatible, NAT64, 6to4, Teredo) is judged by
  the IPv4 address it reaches, and the local-use NAT64 prefix is refused outright (see
  `address_refusal`); the connection goes to the checked address (no second lookup an attacker's DNS
  could answer differently), and TLS is verified against the host name;
- one deadline for the whole exchange (resolve, connect, headers, body: a server that trickles is cut
  off), a size cap, no redirects followed, no proxies from the environment.

Errors are `FetchError` (an upstream failure: a refused target or a bad answer) and `FetchTimeout` (too slow).
Importing this module is cheap: sockets, threads, the HTTP/1.1 client (lib/wid/net/http1.py) and `ssl` are
loaded only to fetch (`ipaddress` is loaded by `urllib.parse` anyway).
"""

import ipaddress
import json
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from wid import config, metrics
from wid.core.errors import UpstreamFailed, UpstreamTimeout
from wid.net import tls

USER_AGENT = "wid-proxy"


class FetchError(UpstreamFailed):
    """A fetch failed or was refused: a bad answer, a refused target, an unreachable host."""

    def __init__(self, message: str, *, code: str | None = None, retryable: bool = False) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable


class FetchTimeout(UpstreamTimeout, FetchError):
    """A fetch took longer than its deadline (resolving, connecting or reading)."""

    code = "gateway_timeout"


class HttpResult(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self, what: str) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise FetchError(f"{what} answered HTTP {self.status} with a body that is not "
                             "JSON") from None

    def json_object(self, what: str) -> dict[str, Any]:
        value = self.json(what)
        if not isinstance(value, dict):
            raise FetchError(f"{what} answered HTTP {self.status} with JSON that is not an "
                             "object")
        return value


def check_url(url: str, what: str, *, allow_insecure: bool) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL the proxy may fetch; FetchError 502 otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchError(f"{what}: {url[:200]!r} is not a valid URL") from None
    host = (parts.hostname or "").lower()
    if not host or parts.username is not None or parts.password is not None or parts.fragment:
        raise FetchError(f"{what}: {url[:200]!r} is not an absolute URL without credentials")
    if parts.scheme == "https":
        pass
    elif parts.scheme == "http" and allow_insecure and config.is_loopback_host(host):
        pass
    elif parts.scheme == "http" and config.is_loopback_host(host):
        raise FetchError(f"{what}: {url[:200]!r} is plain http on loopback, allowed "
                         "only when the operator sets WID_ALLOW_INSECURE_ISSUERS (tests and demos)",
                         code="insecure_url_refused")
    else:
        raise FetchError(f"{what}: {url[:200]!r} is not an https URL", code="insecure_url_refused")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def _addresses(host: str, port: int, what: str, insecure: bool, deadline: float) -> list[tuple[Any, Any]]:
    """The addresses to connect to: all public, or loopback when insecure targets are allowed."""
    import socket

    literal: Any = None
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if literal is not None:
        infos = [(socket.AF_INET6 if literal.version == 6 else socket.AF_INET,
                  (str(literal), port) if literal.version == 4 else (str(literal), port, 0, 0))]
    else:
        infos = _getaddrinfo(host, port, what, deadline)
    loopback_ok = insecure and config.is_loopback_host(host)
    allowed: list[tuple[Any, Any]] = []
    for family, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        refusal = address_refusal(ip)
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if refusal is None or (loopback_ok and (ip.is_loopback or (mapped is not None and mapped.is_loopback))):
            allowed.append((family, sockaddr))
        else:
            raise FetchError(f"{what}: {host} resolves to {ip}, which is not a public address ({refusal}); the "
                             "proxy does not fetch from private, loopback, link-local or reserved networks",
                             code="address_refused")
    if not allowed:
        raise FetchError(f"{what}: {host} has no address")
    # IPv4 first: loopback services in tests listen on 127.0.0.1, and it is the common case elsewhere.
    allowed.sort(key=lambda info: 0 if info[0] == socket.AF_INET else 1)
    return allowed


# Where the proxy may connect. IPv6 forms that carry an IPv4 address are judged by that address: the
# packets end up there (NAT64, mapped, translated, compatible) or travel through it (6to4, Teredo), and
# `is_global` alone calls NAT64, 6to4 and IPv4-compatible addresses public.
_IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: the IPv4 address may sit anywhere in it
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # RFC 4291
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # RFC 3056: the IPv4 address is bits 16-48
_TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380: server bits 32-64, client the last 32 bits inverted
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291, deprecated; :: and ::1 are IPv6's own
_RFC1918 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_IPV4_BITS = 0xFFFFFFFF


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """The IPv4 addresses an IPv6 address carries, with the name of its form; None when it carries none."""
    n = int(ip)
    v4 = ipaddress.IPv4Address
    if ip in _MAPPED:
        return "IPv4-mapped ::ffff:0:0/96", [v4(n & _IPV4_BITS)]
    if ip in _TRANSLATED:
        return "IPv4-translated ::ffff:0:0:0/96", [v4(n & _IPV4_BITS)]
    if ip in _NAT64:
        return "NAT64 64:ff9b::/96", [v4(n & _IPV4_BITS)]
    if ip in _SIX_TO_FOUR:
        return "6to4 2002::/16", [v4((n >> 80) & _IPV4_BITS)]
    if ip in _TEREDO:
        return "Teredo 2001::/32", [v4((n >> 64) & _IPV4_BITS), v4(~n & _IPV4_BITS)]
    if ip in _COMPATIBLE and n > 1:
        return "IPv4-compatible ::/96", [v4(n & _IPV4_BITS)]
    return None


def _ipv4_class(ip: ipaddress.IPv4Address) -> str | None:
    """The class of a non-public IPv4 address; None for a public one."""
    if ip.is_global and not ip.is_multicast:
        return None
    for name, test in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                       ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                       ("private, RFC 1918", any(ip in n for n in _RFC1918)),
                       ("shared, RFC 6598 carrier-grade NAT", ip in _SHARED), ("reserved", ip.is_reserved)):
        if test:
            return name
    return "special-purpose"


def _ipv6_class(ip: ipaddress.IPv6Address) -> str | None:
    """The class of a non-public IPv6 address that carries no IPv4 address; None for a public one."""
    if ip in _IPV6_GLOBAL_UNICAST and ip.is_global:
        return None
    for name, test in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                       ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                       ("unique local, fc00::/7", ip in _UNIQUE_LOCAL), ("site-local, fec0::/10", ip.is_site_local),
                       ("reserved", ip.is_reserved)):
        if test:
            return name
    return "special-purpose"


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The class of `ip` that the proxy may not connect to (e.g. "loopback", "NAT64 64:ff9b::/96 carrying
    IPv4 169.254.169.254, link-local"); None for a public address."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _ipv4_class(ip)
    if ip in _NAT64_LOCAL:
        return "local-use NAT64 64:ff9b:1::/48, whose embedded IPv4 address has no fixed place"
    embedded = embedded_ipv4(ip)
    if embedded is None:
        return _ipv6_class(ip)
    form, addresses = embedded
    for address in addresses:
        v4_class = _ipv4_class(address)
        if v4_class is not None:
            return f"{form} carrying IPv4 {address}, {v4_class}"
    if ip in _TEREDO:  # refused before these classes were decoded; a tunnel's relay is not ours to trust
        return f"{form}, a tunnel refused whatever it carries"
    return None


def _getaddrinfo(host: str, port: int, what: str, deadline: float) -> list[tuple[Any, Any]]:
    """getaddrinfo under the deadline (it has no timeout of its own)."""
    import queue
    import socket
    import threading

    box: queue.Queue[Any] = queue.Queue()

    def run() -> None:
        try:
            box.put(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            box.put(exc)

    threading.Thread(target=run, daemon=True).start()
    try:
        result = box.get(timeout=max(0.01, deadline - time.monotonic()))
    except queue.Empty:
        raise FetchTimeout(f"{what}: resolving {host} took too long", retryable=True) from None
    if isinstance(result, OSError):
        raise FetchError(f"{what}: cannot resolve {host} ({result.strerror or result})",
                         retryable=True, code="host_unresolved")
    return [(info[0], info[4]) for info in result]


def request(method: str, url: str, *, service: str, what: str, timeout: float, allow_insecure: bool, limit: int,
            headers: dict[str, str] | None = None, body: bytes | None = None) -> HttpResult:
    """One HTTP exchange under the rules above. Never follows redirects: a 3xx is returned as is.

    `service` names the kind of server in the metrics (wid.metrics), never its host: these URLs come from
    users and documents."""
    return metrics.upstream_call(service, lambda: _request(
        method, url, what=what, timeout=timeout, allow_insecure=allow_insecure, limit=limit, headers=headers,
        body=body), timeout=FetchTimeout, failure=FetchError)


def _request(method: str, url: str, *, what: str, timeout: float, allow_insecure: bool, limit: int,
             headers: dict[str, str] | None, body: bytes | None) -> HttpResult:
    import socket
    import threading

    from wid.net.http1 import Connection, ProtocolError

    scheme, host, port = check_url(url, what, allow_insecure=allow_insecure)
    deadline = time.monotonic() + timeout
    addresses = _addresses(host, port, what, allow_insecure, deadline)
    context = tls.client_context() if scheme == "https" else None
    conn = Connection(host, port, timeout=max(0.05, deadline - time.monotonic()), tls=context)
    expired = threading.Event()

    def cut_off() -> None:  # the deadline passed: break whatever read or write is waiting
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    watchdog = threading.Timer(max(0.01, deadline - time.monotonic()), cut_off)
    watchdog.daemon = True
    watchdog.start()
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    sent = {"User-Agent": USER_AGENT, **(headers or {})}  # http1 adds Accept-Encoding: identity
    try:
        conn.connect(addresses)  # the checked addresses, never what a later lookup says
        raw = conn.request(method, target, sent, body)
        length = raw.header("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            raise FetchError(f"{what} answered with {int(length)} bytes, more than the "
                             f"{limit} this proxy accepts", code="response_too_large")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = raw.read(min(64 * 1024, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise FetchError(f"{what} answered with more than the {limit} bytes "
                                 "this proxy accepts", code="response_too_large")
            if expired.is_set():
                break
        if expired.is_set():
            raise TimeoutError
        result_headers: dict[str, str] = {}
        for name, value in raw.headers:
            key = name.lower()
            result_headers[key] = f"{result_headers[key]}, {value}" if key in result_headers else value
        return HttpResult(raw.status, result_headers, b"".join(chunks), url)
    except FetchError:
        raise
    except TimeoutError:
        raise FetchTimeout(f"{what} did not answer within {timeout:g} s",
                           retryable=True) from None
    except (OSError, ProtocolError) as exc:
        if expired.is_set():
            raise FetchTimeout(f"{what} did not answer within {timeout:g} s",
                               retryable=True) from None
        if isinstance(exc, ProtocolError):
            raise FetchError(f"{what}: {host} answered with something that is not HTTP/1.1 ({exc})",
                             retryable=True) from exc
        # The cause stays attached: callers that may show it (a certificate problem...) read __cause__.
        raise FetchError(f"{what}: cannot reach {host} ({type(exc).__name__})",
                         retryable=True) from exc
    finally:
        watchdog.cancel()
        conn.close()


def get_json(url: str, what: str, *, service: str, timeout: float, allow_insecure: bool, limit: int,
            headers: dict[str, str] | None = None) -> dict[str, Any]:
    """GET a JSON object; any status but 200 is a 502 naming it."""
    result = request("GET", url, service=service, what=what, timeout=timeout, allow_insecure=allow_insecure,
                     limit=limit, headers={"Accept": "application/json", **(headers or {})})
    if result.status != 200:
        raise FetchError(f"{what} answered HTTP {result.status}",
                         retryable=result.status >= 500)
    return result.json_object(what)
