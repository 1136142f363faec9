"""`wid atproto ...`: watch a DID's new records, and look after the ATProto upstream's state.

    wid atproto tail DID [--pds URL] [--collection NSID]... [--limit N] [--cursor SEQ]
        One JSON object per line for each record the DID creates, updates or deletes, read from the
        event stream of its PDS (`com.atproto.sync.subscribeRepos`, a websocket of DAG-CBOR frames
        whose commits carry the records as a CAR file). Like the articles' firehose command:
        `wid atproto tail "${DID_PLC}" | jq`. Also `python -m wid.upstreams.atproto.tail DID`.
    wid atproto sessions            the DIDs that signed in, with their status (never a token)
    wid atproto client-keys list|rotate

The CBOR decoding (cbor2) and the websocket client (websocket-client) are imported here only:
never on a request path. The DID document is fetched with the same SSRF rules as the proxy
(https only; plain http on loopback only with WID_ALLOW_INSECURE_ISSUERS).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any
from urllib.parse import urlencode, urlsplit

from wid import config
from wid.core.errors import InvalidRequest, UpstreamFailed, WidError

STREAM_NSID = "com.atproto.sync.subscribeRepos"


# -- DAG-CBOR and CAR ------------------------------------------------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _cid_length(data: bytes, pos: int) -> int:
    if data[pos:pos + 2] == b"\x12\x20":  # CIDv0: a bare sha2-256 multihash
        return 34
    start = pos
    for _ in range(3):  # version, codec, multihash code
        _, pos = _varint(data, pos)
    size, pos = _varint(data, pos)
    return pos + size - start


def cid_string(cid: bytes) -> str:
    """CIDv1 in its usual text form: multibase 'b' + lower-case base32 without padding."""
    if cid[:2] == b"\x12\x20":
        alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
        number, text = int.from_bytes(cid, "big"), ""
        while number:
            number, rest = divmod(number, 58)
            text = alphabet[rest] + text
        return text
    return "b" + base64.b32encode(cid).decode("ascii").lower().rstrip("=")


def parse_car(data: bytes) -> dict[bytes, bytes]:
    """The blocks of a CAR v1 file, by binary CID."""
    header_length, pos = _varint(data, 0)
    pos += header_length
    blocks: dict[bytes, bytes] = {}
    while pos < len(data):
        length, pos = _varint(data, pos)
        end = pos + length
        cid_end = pos + _cid_length(data, pos)
        blocks[data[pos:cid_end]] = data[cid_end:end]
        pos = end
    return blocks


def _link_bytes(value: Any) -> bytes | None:
    import cbor2

    if isinstance(value, cbor2.CBORTag) and value.tag == 42 and isinstance(value.value, bytes | bytearray):
        raw = bytes(value.value)
        return raw[1:] if raw[:1] == b"\x00" else raw
    return None


def to_json(value: Any) -> Any:
    """DAG-CBOR data in the ATProto JSON form: links as {"$link"}, bytes as {"$bytes"}."""
    link = _link_bytes(value)
    if link is not None:
        return {"$link": cid_string(link)}
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii").rstrip("=")}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def decode_frame(frame: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """An event stream frame: (header {op, t}, body), two DAG-CBOR objects back to back."""
    import cbor2

    stream = io.BytesIO(frame)
    decoder = cbor2.CBORDecoder(stream)
    header = decoder.decode()
    body = decoder.decode() if stream.tell() < len(frame) else {}
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise ValueError("an event stream frame is a header object and a body object")
    return header, body


def records(header: dict[str, Any], body: dict[str, Any], did: str,
            collections: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """The record operations of one `#commit` event of `did`, as JSON-ready objects."""
    import cbor2

    if header.get("op") != 1 or header.get("t") != "#commit" or body.get("repo") != did:
        return
    blocks = parse_car(bytes(body.get("blocks") or b"")) if body.get("blocks") else {}
    for op in body.get("ops") or []:
        path = str(op.get("path", ""))
        collection, _, rkey = path.partition("/")
        if collections and collection not in collections:
            continue
        link = _link_bytes(op.get("cid"))
        record = None
        if link is not None and link in blocks:
            record = to_json(cbor2.loads(blocks[link]))
        yield {"did": did, "seq": body.get("seq"), "time": body.get("time"), "rev": body.get("rev"),
               "action": op.get("action"), "collection": collection, "rkey": rkey, "uri": f"at://{did}/{path}",
               "cid": cid_string(link) if link is not None else None, "record": record}


# -- following the stream --------------------------------------------------------------------------------------


def stream_url(pds: str, cursor: int | None = None) -> str:
    parts = urlsplit(pds)
    scheme = "wss" if parts.scheme == "https" else "ws"
    query = f"?{urlencode({'cursor': cursor})}" if cursor is not None else ""
    return f"{scheme}://{parts.netloc}/xrpc/{STREAM_NSID}{query}"


def tail(did: str, *, pds: str | None = None, cursor: int | None = None, collections: set[str] | None = None,
         limit: int | None = None, out: IO[str] = sys.stdout,
         ready: Callable[[str], None] | None = None) -> int:
    """Print the DID's record operations as NDJSON until `limit` records (or forever)."""
    import websocket  # websocket-client

    from wid.upstreams.atproto import identity
    from wid.upstreams.atproto.context import is_did_context

    if not is_did_context(did):
        raise InvalidRequest(f"{did!r} is not a did:plc or did:web", code="bad_context")
    if pds is None:
        pds = identity.fetch_document(did).pds
    identity.check_url(pds, "PDS")
    url = stream_url(pds, cursor)
    connection = websocket.create_connection(url, timeout=config.settings().atproto_timeout)
    connection.settimeout(None)  # the stream may be quiet for a long time
    if ready is not None:
        ready(url)
    printed = 0
    try:
        while limit is None or printed < limit:
            frame = connection.recv()
            if not isinstance(frame, bytes):
                continue
            header, body = decode_frame(frame)
            if header.get("op") == -1:
                raise UpstreamFailed(f"the event stream ended with {body.get('error')}: "
                                     f"{body.get('message')}", code="stream_error")
            for item in records(header, body, did, collections):
                out.write(json.dumps(item, separators=(",", ":"), ensure_ascii=False) + "\n")
                out.flush()
                printed += 1
                if limit is not None and printed >= limit:
                    break
    finally:
        connection.close()
    return 0


# -- the command -----------------------------------------------------------------------------------------------


def cmd_tail(args: argparse.Namespace) -> int:
    def announce(url: str) -> None:
        print(f"wid atproto tail: following {args.did} at {url}", file=sys.stderr, flush=True)

    try:
        return tail(args.did, pds=args.pds, cursor=args.cursor, collections=set(args.collection or []) or None,
                    limit=args.limit, ready=announce)
    except WidError as exc:
        print(f"wid atproto tail: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # websocket and decoding errors: one line, no traceback
        print(f"wid atproto tail: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def cmd_sessions(args: argparse.Namespace) -> int:
    from wid.upstreams.atproto import session as atproto_session

    for row in atproto_session.sessions():
        print(json.dumps(row, sort_keys=True))
    return 0


def cmd_client_keys(args: argparse.Namespace) -> int:
    from wid.store import audit
    from wid.upstreams.atproto import client

    if args.emergency and args.action != "rotate":
        print("wid atproto client-keys: --emergency goes with rotate only", file=sys.stderr)
        return 2
    if args.action == "rotate":
        return _rotate_client_key(args.emergency)
    if args.action == "prune":
        pruned = client.prune_client_keys()
        audit.record("operator_atproto_client_keys_prune", "info", operator=audit.operator(), pruned=pruned)
        print(f"pruned {len(pruned)} client key(s)" + (": " + ", ".join(pruned) if pruned else ""))
        return 0
    rows = client.client_keys()  # listing creates nothing: the first key comes with the first sign-in
    for row in rows:
        print(json.dumps(row, sort_keys=True))
    if not rows:
        print("wid atproto client-keys: none yet (the first is created at the first ATProto sign-in, or by rotate)",
              file=sys.stderr)
    return 0


def _rotate_client_key(emergency: bool) -> int:
    from wid.store import audit, keyring
    from wid.upstreams.atproto import client

    try:
        rotation = client.rotate_client_key(emergency=emergency)
    except keyring.RotationError as exc:
        print(f"wid atproto client-keys: {exc}", file=sys.stderr)
        return 1
    audit.record("operator_atproto_client_keys_rotate", "info", operator=audit.operator(), emergency=emergency,
                 previous=rotation.previous, kid=rotation.kid, activate_at=rotation.activate_at)
    if emergency:
        dropped = (f"client key {rotation.previous} is dropped: it is no longer published, and every session "
                   "authorized with it fails until its DID signs in again; ") if rotation.previous else ""
        print(f"{dropped}client key {rotation.kid} serves new sign-ins from now on. Authorization servers that "
              f"cached the old JWKS may refuse it (and accept the dropped key) for up to {client.JWKS_MAX_AGE}s")
    elif rotation.previous is None:
        print(f"client key {rotation.kid} serves new sign-ins from now on (the first key)")
    else:
        print(f"client key {rotation.kid} is published now and serves new sign-ins from "
              f"{keyring.stamp(rotation.activate_at)} (in {client.activation_delay()}s, once every authorization "
              f"server's cached copy of the JWKS lists it); {rotation.previous} serves them until then, then "
              "retires and keeps serving the sessions authorized with it until `prune` finds none")
    return 0


def register(subparsers: Any) -> None:
    atproto = subparsers.add_parser("atproto", help="ATProto: follow a DID's records, sessions, client keys")
    commands = atproto.add_subparsers(dest="atproto_command", required=True)
    follow = commands.add_parser("tail", help="print a DID's new records as NDJSON (from its PDS's event stream)")
    follow.add_argument("did", help="did:plc:... or did:web:...")
    follow.add_argument("--pds", help="event stream host (default: the PDS in the DID document)")
    follow.add_argument("--collection", action="append", metavar="NSID", help="only this collection (repeatable)")
    follow.add_argument("--cursor", type=int, help="replay from this event sequence number")
    follow.add_argument("--limit", type=int, help="exit after this many records")
    follow.set_defaults(func=cmd_tail)
    listing = commands.add_parser("sessions", help="DIDs signed in to this proxy (JSON lines, never a token)")
    listing.set_defaults(func=cmd_sessions)
    keys = commands.add_parser("client-keys", help="the OAuth client's ES256 keys: list, rotate, prune")
    keys.add_argument("action", choices=["list", "rotate", "prune"],
                      help="list them (JSON lines); rotate: publish a next key that serves new sign-ins once "
                      "authorization servers can know it; prune: drop keys no session needs")
    keys.add_argument("--emergency", action="store_true",
                      help="rotate: drop the active key now (its sessions must sign in again)")
    keys.set_defaults(func=cmd_client_keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wid.upstreams.atproto.tail",
                                     description="print a DID's new records")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["atproto", "tail", *(sys.argv[1:] if argv is None else argv)])
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
