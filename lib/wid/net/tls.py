"""The TLS context of the proxy's own connections (net/upstream.py, net/safe_http.py).

Python's defaults (TLS 1.2 or later, the certificate verified, the host name checked) with the system's
CAs. OpenSSL's default reads them from a bundle file, parsing every certificate in it (about 140) when
the context is made: 250 M instructions, which a CGI process paid for every call on an https upstream.
A CA directory as `update-ca-certificates` leaves /etc/ssl/certs (a link per CA, named by the hash of
its subject) holds the same CAs, and OpenSSL reads from it only the one a server's chain names. So the
directory is used when it holds such links, unless SSL_CERT_FILE names a bundle other than the system's
own: an operator's bundle (a proxy inspecting TLS, a private CA) is read as OpenSSL would. SSL_CERT_DIR
names another directory.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

_HEX_DIGITS = frozenset("0123456789abcdef")


def client_context() -> ssl.SSLContext:
    import ssl  # only a connection that uses TLS pays for the module

    paths = ssl.get_default_verify_paths()
    bundle = os.environ.get("SSL_CERT_FILE")
    system_bundle = not bundle or os.path.realpath(bundle) == os.path.realpath(paths.openssl_cafile)
    directory = paths.capath  # SSL_CERT_DIR, else OpenSSL's own; None when it does not exist
    if system_bundle and directory and _holds_hashed_links(directory):
        return ssl.create_default_context(capath=directory)
    return ssl.create_default_context()


def _holds_hashed_links(directory: str) -> bool:
    """Whether OpenSSL can look a CA up in `directory`: it holds a name like 9d04f354.0 (or .r0 for a CRL)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    return any(len(name) > 9 and name[8] == "." and _HEX_DIGITS.issuperset(name[:8]) for name in names)
