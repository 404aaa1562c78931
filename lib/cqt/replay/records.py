"""Reading one capture line: `read_record` checks every field the replay relies on, or raises
BadRecord with a reason naming the fault."""
from __future__ import annotations

import base64
import binascii

import orjson

from ..timeutil import MAX_TIME_MS, MIN_TIME_MS
from ..venues.registry import REST_SOURCES


class BadRecord(Exception):
    """A capture line that is not a replayable record; `reason` says why."""

    def __init__(self, reason: str, recv_ts_ms: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.recv_ts_ms = recv_ts_ms


def _kind(v) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a fractional number", str: "a string", list: "a list",
            dict: "an object"}.get(type(v), type(v).__name__)


def read_record(line: bytes) -> dict:
    """One capture line -> a record whose every field has the type the replay relies on:
    recv_ts_ms an int in [2009, 2100), source a str, raw a str (or the bytes of raw_b64),
    and for REST records path a str, status an int or null, params an object or null.
    Raises BadRecord otherwise; never anything else."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRecord("capture line is not UTF-8") from None
        raise BadRecord("capture line is not JSON (cut or damaged)") from None
    if type(rec) is not dict:
        raise BadRecord(f"capture line is {_kind(rec)}, not a record object")
    ts = rec.get("recv_ts_ms")
    if type(ts) is not int:
        raise BadRecord("capture record lacks recv_ts_ms" if ts is None else
                        f"capture record: recv_ts_ms is {_kind(ts)}, not an integer")
    if not MIN_TIME_MS <= ts < MAX_TIME_MS:
        raise BadRecord("capture record: recv_ts_ms outside 2009-01-01..2100-01-01")
    src = rec.get("source")
    if type(src) is not str:
        raise BadRecord("capture record lacks source" if src is None else
                        f"capture record: source is {_kind(src)}, not a string", ts)
    if "raw" not in rec:
        raise BadRecord("capture record lacks raw", ts)
    b64 = rec.get("raw_b64")
    if b64:
        if type(b64) is not str:
            raise BadRecord(f"capture record: raw_b64 is {_kind(b64)}, not a string", ts)
        try:
            rec["raw"] = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRecord("capture record: raw_b64 is not base64", ts) from None
    elif type(rec["raw"]) is not str:
        raise BadRecord(f"capture record: raw is {_kind(rec['raw'])}, not a string", ts)
    if src in REST_SOURCES:
        if type(rec.get("path")) is not str:
            raise BadRecord(f"capture record: path is {_kind(rec.get('path'))}, not a string", ts)
        status = rec.get("status")
        if status is not None and type(status) is not int:
            raise BadRecord(f"capture record: status is {_kind(status)}, not an integer", ts)
        params = rec.get("params")
        if params is not None and type(params) is not dict:
            raise BadRecord(f"capture record: params is {_kind(params)}, not an object", ts)
    return rec
