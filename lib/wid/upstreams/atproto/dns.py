"""DNS TXT lookups over UDP with the system's nameservers, for handle resolution (`_atproto.{handle}`).

Standard library only (no resolver library on request paths): one question, recursion desired, the
answer matched to the question and its id; NXDOMAIN and "no TXT record" are a ValueError.
"""

from __future__ import annotations

import random
import socket
import struct
import time

DNS_TIMEOUT = 3.0


def _nameservers() -> list[str]:
    servers: list[str] = []
    try:
        with open("/etc/resolv.conf", encoding="ascii", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    servers.append(fields[1])
    except OSError:
        pass
    return servers[:3]


def _dns_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad DNS label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def _skip_name(packet: bytes, pos: int) -> int:
    while True:
        if pos >= len(packet):
            raise ValueError("truncated DNS name")
        length = packet[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length == 0:
            return pos + 1
        pos += 1 + length


def dns_txt(name: str, timeout: float = DNS_TIMEOUT, servers: list[str] | None = None, port: int = 53) -> list[str]:
    """TXT records of `name` from the system's nameservers (UDP, recursion desired). ValueError if none."""
    question = _dns_name(name) + struct.pack(">HH", 16, 1)  # TXT, IN
    deadline = time.monotonic() + timeout
    errors: list[str] = []
    for server in servers or _nameservers() or ["127.0.0.1"]:
        ident = random.getrandbits(16)
        query = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                sock.connect((server, port))
                sock.send(query)
                while True:
                    packet = sock.recv(4096)
                    if len(packet) >= 12 and struct.unpack(">H", packet[:2])[0] == ident:
                        break
            except OSError as exc:
                errors.append(f"{server}: {type(exc).__name__}")
                if time.monotonic() >= deadline:
                    break
                continue
        flags, qdcount, ancount = struct.unpack(">HHH", packet[2:8])
        rcode = flags & 0x000F
        if not flags & 0x8000 or packet[12:12 + len(question)] != question:
            errors.append(f"{server}: answer does not match the question")
            continue
        if rcode == 3:
            raise ValueError(f"{name} does not exist (NXDOMAIN)")
        if rcode != 0:
            errors.append(f"{server}: DNS error code {rcode}")
            continue
        pos = 12
        for _ in range(qdcount):
            pos = _skip_name(packet, pos) + 4
        values: list[str] = []
        for _ in range(ancount):
            pos = _skip_name(packet, pos)
            rtype, _rclass, _ttl, rdlength = struct.unpack(">HHIH", packet[pos:pos + 10])
            pos += 10
            rdata = packet[pos:pos + rdlength]
            pos += rdlength
            if rtype != 16:
                continue
            text, i = b"", 0
            while i < len(rdata):
                text += rdata[i + 1:i + 1 + rdata[i]]
                i += 1 + rdata[i]
            values.append(text.decode("utf-8", "replace"))
        if not values:
            raise ValueError(f"{name} has no TXT record")
        return values
    raise ValueError("no nameserver answered (" + "; ".join(errors) + ")" if errors else "no nameserver")
