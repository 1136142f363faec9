"""Is PORT this proxy's alone? Caddy sets SO_REUSEPORT, so a second proxy on a taken PORT would start
without a word and the kernel would split requests between two issuers with different keys."""

from __future__ import annotations

import socket


def check_port_free(port: int) -> str | None:
    """Bind PORT as Caddy does but without SO_REUSEPORT: None if free, else why not (naming PORT)."""
    family, address = (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")  # noqa: S104
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # IPv6 compiled in but disabled on this host
        family, address = socket.AF_INET, "0.0.0.0"  # noqa: S104
        probe = socket.socket(family, socket.SOCK_STREAM)
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go does: TIME_WAIT is no conflict
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            probe.bind((address, port))
        except OSError as exc:
            return (f"PORT {port} is already in use ({exc.strerror}): another proxy or program listens there; "
                    "stop it or set PORT to a free port")
    return None
