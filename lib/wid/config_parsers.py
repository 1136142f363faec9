"""How each setting's value is written: parsers for lib/wid/config.py, which holds the bounds.

Each parser returns the value or raises ValueError("must be ..."); wid.config prefixes the variable's
name and, unless it is a secret, the value found. Standard library only (on every request path).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable

KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024


def _digits(text: str, most: int) -> bool:
    """One to `most` ASCII digits (str.isdigit alone also takes '\u00b2' and other scripts' digits)."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def whole(low: int, high: int, unit: str) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not _digits(raw, 12) or not low <= int(raw) <= high:
            raise ValueError(f"must be a whole number of {unit} from {low} to {high}")
        return int(raw)
    return parse


def decimal(low: float, high: float, unit: str) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        units, point, fraction = raw.partition(".")
        if not _digits(units, 6) or (point and not _digits(fraction, 6)) or not low <= float(raw) <= high:
            raise ValueError(f"must be a number of {unit} from {low:g} to {high:g}")
        return float(raw)
    return parse


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return raw
    return parse


def flag(raw: str) -> bool:
    value = raw.lower()
    if value not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        raise ValueError("must be 1, true, yes or on (or 0, false, no, off)")
    return value in {"1", "true", "yes", "on"}


_HOST_PUNCTUATION = frozenset("-._")
_IPV6_CHARACTERS = frozenset("0123456789abcdefABCDEF:.")
_NOT_IN_TARGET = frozenset("#\\")


def split_url(value: str) -> tuple[str, str, int | None, str] | None:
    """(scheme, host, port, path and query) of an absolute http(s) URL without credentials or fragment, or
    None. Read strictly by hand (every request reads its settings and most call an upstream; urllib.parse
    costs a CGI process 9 M instructions): the scheme in lower case; a host of letters, digits, '-', '.'
    and '_', or an IPv6 address in brackets; a port of at most five digits up to 65535; a path and query
    of visible characters without '#' or a backslash. urlsplit reads each such URL the same way
    (tests/fuzz/test_fuzz_names.py checks it), and would silently drop the tabs and line breaks refused
    here. The host is lower-cased, as urlsplit's `hostname`; an IPv6 address loses its brackets."""
    scheme, separator, rest = value.partition("://")
    authority, slash, path = rest.partition("/")
    if scheme not in ("http", "https") or not separator or not all(
            ch.isprintable() and not ch.isspace() and ch not in _NOT_IN_TARGET for ch in path):
        return None
    if authority.startswith("["):
        host, bracket, port = authority[1:].partition("]")
        if not bracket or ":" not in host or not _IPV6_CHARACTERS.issuperset(host):
            return None
        if port and not port.startswith(":"):
            return None
        port = port[1:]
    else:
        host, _, port = authority.partition(":")
        if not host or not all(ch.isalnum() or ch in _HOST_PUNCTUATION for ch in host):
            return None
    if port and not (_digits(port, 5) and int(port) <= 65535):
        return None
    return scheme, host.lower(), int(port) if port else None, slash + path


def _is_url(value: str) -> bool:
    """An absolute http(s) URL with a host and no credentials, query or fragment (see split_url)."""
    parts = split_url(value)
    return parts is not None and "?" not in parts[3]


# What split_url takes, said as a user can check a value against it.
_URL_RULE = ("an absolute http(s) URL without credentials, query or fragment: the scheme in lower case, a host of "
             "letters, digits, '-', '.' and '_' (or an IPv6 address in brackets), a port up to 65535, and no "
             "space, control character or backslash")


def base_url(raw: str) -> str:
    if not _is_url(raw):
        raise ValueError(f"must be {_URL_RULE}")
    return raw.rstrip("/")


def endpoint(raw: str) -> str:
    if not _is_url(raw) or raw.endswith("/"):
        raise ValueError(f"must be {_URL_RULE}, and no trailing slash")
    return raw


def issuers(raw: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(raw.split()))
    bad = [v for v in values if not _is_url(v)]
    if bad:
        raise ValueError(f"must be issuer URLs separated by spaces, each {_URL_RULE}; {bad[0]!r} is not one")
    return values


def owner_claims(raw: str) -> dict[str, tuple[str, ...]]:
    declared: dict[str, tuple[str, ...]] = {}
    for entry in raw.split():
        issuer, sep, names = entry.rpartition("=")
        claims = tuple(name for name in names.split(",") if name)
        if not sep or not issuer.startswith(("https://", "http://")) or not claims or any(
                not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", name) for name in claims) or issuer in declared:
            raise ValueError(f"must be space-separated ISSUER=claim[,claim...] entries (an issuer URL, '=', then "
                             f"claim names separated by commas; each issuer once); {entry[:200]!r} is not one")
        declared[issuer] = claims
    return declared


# Patterns used on some paths only are strings compiled at first use (re caches them): a CGI process that
# never needs one does not pay for compiling it (docs/architecture.md, "What a request imports").
_DO_SCOPE = r"^(read|write|[a-z][a-z0-9_]*:[a-z][a-z0-9_]*)$"


def do_scopes(raw: str) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(s for s in re.split(r"[\s,]+", raw) if s))
    bad = [s for s in values if not re.match(_DO_SCOPE, s)]
    if bad:
        raise ValueError(f"must be DigitalOcean scope names such as 'database:read', separated by spaces; "
                         f"malformed: {bad}")
    return values


def atproto_scope(raw: str) -> str:
    scope = " ".join(raw.split())
    if "atproto" not in scope.split():
        raise ValueError("must be space-separated scopes including 'atproto'")
    return scope


def database_uri(raw: str) -> str:
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]{0,19})://", raw)
    if scheme is None or scheme[1].lower() not in {"postgresql", "postgres"}:
        found = f"scheme {scheme[1]!r} is not supported" if scheme else "it has no scheme://"
        raise ValueError(f"must start with postgresql:// (or be unset for SQLite in WID_DATA_DIR); {found}")
    return raw


def without_credentials(uri: str | None) -> str:
    """A database URI as it may be shown: scheme, host, port and database; no user, password or query."""
    from urllib.parse import urlsplit  # only `wid config` shows one

    parts = urlsplit(uri or "")
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def fernet_key(raw: str) -> str:
    try:
        key = base64.urlsafe_b64decode(raw.encode())
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ValueError("must be 32 random bytes in urlsafe base64 (Fernet key format); make one with: "
                         "python3 -c 'import base64,os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'")
    return raw


def client_credential(raw: str) -> str:
    if len(raw) > 512 or not raw.isprintable() or any(c.isspace() for c in raw):
        raise ValueError("must be the OAuth application's value as DigitalOcean shows it (no spaces)")
    return raw


def bearer_secret(raw: str) -> str:
    """A shared secret a client sends as `Authorization: Bearer <secret>`: long enough not to be guessed,
    and only characters RFC 6750's b64token allows (so it reaches us unchanged in the header)."""
    if not 32 <= len(raw) <= 512 or not re.match(_B64TOKEN, raw):
        raise ValueError("must be 32 to 512 characters of A-Z a-z 0-9 - . _ ~ + / = (for example the output "
                         "of `openssl rand -hex 32`)")
    return raw


_B64TOKEN = r"^[A-Za-z0-9._~+/-]+=*$"


def directory(raw: str) -> str:
    if "\0" in raw:
        raise ValueError("must be a directory path")
    return os.path.abspath(raw)  # lexically: no system call on every request


_CADDY_UNITS = {"": 1, "K": 10**3, "KI": KIB, "M": 10**6, "MI": MIB, "G": 10**9, "GI": GIB}


def caddy_size(raw: str) -> str:
    caddy_size_bytes(raw)
    return raw


def caddy_size_bytes(raw: str) -> int:
    """Bytes of a size in the subset of Caddy's syntax we accept: 64MB (10^6), 64MiB (2^20), 67108864."""
    number = raw.rstrip("BbIiKkMmGg")
    unit = raw[len(number):].upper()
    unit = unit[:-1] if unit.endswith("B") else unit  # 64M and 64MB, 64Mi and 64MiB are the same size
    if not (len(raw) <= 20 and number.isascii() and number.isdigit() and unit in _CADDY_UNITS):
        raise ValueError("must be a size such as 64MB, 64MiB or 67108864")
    return int(number) * _CADDY_UNITS[unit]
