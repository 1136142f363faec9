"""The parts of a request target the proxy builds and checks by hand on its request paths: urllib.parse
(with its `ipaddress`) costs a CGI process 9 M instructions (docs/architecture.md, "What a request
imports"). tests/fuzz/test_fuzz_names.py holds each to urllib.parse's own reading.
"""

from __future__ import annotations

from wid.core.names import LETTERS_DIGITS

_UNRESERVED = LETTERS_DIGITS | frozenset("-._~")
# A path segment's sub-delims, ':' and '@' (RFC 3986 pchar) and the '/' between segments go as they are.
_PATH_VERBATIM = frozenset(ord(character) for character in _UNRESERVED | frozenset("/!$&'()*+,;=:@"))
# What a query string may carry to an upstream as it is: RFC 3986's query characters and '%' escapes.
_VERBATIM_QUERY = _UNRESERVED | frozenset("%!$&'()*+,;=:@/?")


def quote_path(path: str) -> str:
    """A decoded path as a request target's path: its UTF-8 octets, each one that is not a pchar or '/' as
    %XX (upper-case hex), as urllib.parse.quote(path, safe="/-._~!$&'()*+,;=:@") writes it."""
    return "".join(chr(octet) if octet in _PATH_VERBATIM else f"%{octet:02X}" for octet in path.encode("utf-8"))


def is_verbatim_query(query_string: str) -> bool:
    """Whether a query string can go to an upstream as it is (anything else must be percent-encoded)."""
    return _VERBATIM_QUERY.issuperset(query_string)
