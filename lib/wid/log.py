"""Structured JSON logs on stderr, one object per line, each carrying the request id.

Never pass a secret here: tokens are logged by their jti only.
"""

from __future__ import annotations

import json
import sys
import time
from contextvars import ContextVar
from typing import Any

request_id: ContextVar[str] = ContextVar("request_id", default="-")


def log(event: str, level: str = "info", **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "level": level, "event": event, "request_id": request_id.get()}
    record.update(fields)
    sys.stderr.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
    sys.stderr.flush()
