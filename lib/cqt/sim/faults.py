"""Fault specifications for cqt-sim (control endpoint `POST /_sim/fault` and `--fault`).

A fault is a JSON object whose "kind" names it; the other keys are its
parameters.  `validate()` normalises one and raises FaultError with a readable
message naming the field; the server applies it.  Every fault may carry "at":
seconds from now (it is then scheduled instead of applied at once).  Every number
has bounds (BOUNDS): outside them, or not a JSON number, the fault is refused.

WebSocket faults (optional "source": "upbit" | "binance", default both; drop, stall, gap and
malformed also take "symbol": a served asset, Binance symbol or Upbit code — "ETH",
"ETHUSDT", "KRW-ETH" — to hit that symbol's streams only):
  drop            {"close_code": int?}         every connection: abort (1006) or close with the code
  stall           {"seconds": N}               connections stay open, nothing is sent for N s
  gap             {"ids": N, "stream": s?}     the next N trades are not sent on the WebSocket
                                               (REST still has them); default streams
                                               btcusdt@aggTrade and KRW-BTC@trade
  malformed       {"count": N, "kinds": [...]?, "per_frame": 4}
                                               N bad frames interleaved with normal traffic
  refuse          {"seconds": N, "rest": false} new connections are refused for N s
  server_shutdown {"delay": 1.0}               Binance: {"e":"serverShutdown"} then close
REST faults (the next "count" requests of "path"; "path" exact, "prefix*" or "*"):
  http_error      {"path", "status": 429|418|500|502|503|…, "count": 1,
                   "body": "default"|"truncated"|"non_json"|"empty", "retry_after": 1}
  truncated       {"path", "count": 1}         HTTP 200 with the real body cut in half
  non_json        {"path", "count": 1}         HTTP 200 with an HTML body
  slow            {"path", "seconds": 3, "count": 1}
  coinglass_auth  {"count": 1}                 the Coinglass key is rejected (401)
Other:
  clear           {}                           cancel every pending fault
"""
from __future__ import annotations

import re

MALFORMED_KINDS = ("not_json", "missing_keys", "wrong_types", "nan", "negative_price",
                   "zero_price", "absurd_ts")
SOURCES = ("upbit", "binance")
KINDS = ("drop", "stall", "gap", "malformed", "refuse", "server_shutdown", "http_error",
         "truncated", "non_json", "slow", "coinglass_auth", "clear")
_BODIES = ("default", "truncated", "non_json", "empty")
MAX_TEXT = 200          # characters of a stream name or REST path
SYMBOL_KINDS = ("drop", "stall", "gap", "malformed")    # faults that can name one symbol
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9-]{2,30}$")

# (minimum, maximum) of every numeric parameter; anything outside is refused (HTTP 400), so
# a typo cannot stall the sim for a year or queue a billion frames.
BOUNDS: dict[str, tuple[float, float]] = {
    "at": (0, 86_400),                  # seconds from now
    "seconds": (0, 3_600),              # stall, refuse, slow
    "delay": (0, 60),                   # server_shutdown
    "ids": (1, 1_000_000),              # gap
    "count": (1, 1_000_000),            # malformed, REST faults, coinglass_auth
    "per_frame": (1, 1_000),            # malformed
    "close_code": (1000, 4999),         # drop (RFC 6455 close codes)
    "status": (100, 599),               # http_error
    "retry_after": (0, 86_400),         # http_error
}


class FaultError(ValueError):
    """A fault spec that is not valid; `field` names the parameter at fault (None: the spec)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:40] + "…"


def _num(spec: dict, key: str, default=None, integer: bool = False):
    v = spec.get(key, default)
    kind = spec.get("kind")
    if v is None:
        raise FaultError(f"{kind}: '{key}' is required", key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FaultError(f"{kind}: '{key}' must be a number, not {_shown(v)}", key)
    lo, hi = BOUNDS[key]
    if not lo <= v <= hi:               # NaN fails this too
        raise FaultError(f"{kind}: '{key}' must be between {lo} and {hi}, not {_shown(v)}", key)
    if integer:
        if v != int(v):
            raise FaultError(f"{kind}: '{key}' must be a whole number, not {_shown(v)}", key)
        return int(v)
    return float(v)


def _text(spec: dict, key: str) -> str:
    v = spec.get(key)
    if not isinstance(v, str) or not v or len(v) > MAX_TEXT:
        raise FaultError(f"{spec.get('kind')}: '{key}' must be a non-empty string of at most {MAX_TEXT} "
                         f"characters", key)
    return v


def validate(spec) -> dict:
    """Normalise one fault spec; raise FaultError (naming the field) when it is not valid.
    Never raises anything else, whatever JSON value `spec` is."""
    if not isinstance(spec, dict):
        raise FaultError("a fault is a JSON object with a 'kind'")
    kind = spec.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise FaultError(f"unknown fault kind {_shown(kind)}; known: {', '.join(KINDS)}", "kind")
    out: dict = {"kind": kind}
    if "at" in spec:
        out["at"] = _num(spec, "at")
    src = spec.get("source")
    if src is not None:
        if not isinstance(src, str) or src not in SOURCES:
            raise FaultError(f"source must be one of {SOURCES}, not {_shown(src)}", "source")
        out["source"] = src
    if spec.get("symbol") is not None:
        sym = spec["symbol"]
        if kind not in SYMBOL_KINDS:
            raise FaultError(f"{kind}: 'symbol' applies to {', '.join(SYMBOL_KINDS)} only", "symbol")
        if not isinstance(sym, str) or not _SYMBOL_RE.match(sym):
            raise FaultError(f"{kind}: 'symbol' must be an asset, Binance symbol or Upbit code like ETH, ETHUSDT "
                             f"or KRW-ETH, not {_shown(sym)}", "symbol")
        out["symbol"] = sym
    if kind == "drop":
        if spec.get("close_code") is not None:
            out["close_code"] = _num(spec, "close_code", integer=True)
    elif kind == "stall":
        out["seconds"] = _num(spec, "seconds", 10)
    elif kind == "gap":
        out["ids"] = _num(spec, "ids", 50, integer=True)
        if spec.get("stream") is not None:
            out["stream"] = _text(spec, "stream")
    elif kind == "malformed":
        out["count"] = _num(spec, "count", 10, integer=True)
        kinds = spec.get("kinds") or list(MALFORMED_KINDS)
        if isinstance(kinds, str):
            kinds = [kinds]
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise FaultError(f"malformed: 'kinds' must be a list of names: {', '.join(MALFORMED_KINDS)}", "kinds")
        bad = [k for k in kinds if k not in MALFORMED_KINDS]
        if bad:
            raise FaultError(f"malformed: unknown kinds {[_shown(k) for k in bad[:5]]}; known: "
                             f"{', '.join(MALFORMED_KINDS)}", "kinds")
        if len(kinds) > 100:
            raise FaultError("malformed: at most 100 'kinds'", "kinds")
        out["kinds"] = list(kinds)
        out["per_frame"] = _num(spec, "per_frame", 4, integer=True)
    elif kind == "refuse":
        out["seconds"] = _num(spec, "seconds", 10)
        rest = spec.get("rest", False)
        if not isinstance(rest, bool):
            raise FaultError(f"refuse: 'rest' must be true or false, not {_shown(rest)}", "rest")
        out["rest"] = rest
    elif kind == "server_shutdown":
        out["delay"] = _num(spec, "delay", 1.0)
        out["source"] = "binance"
    elif kind in ("http_error", "truncated", "non_json", "slow"):
        path = spec.get("path")
        if not isinstance(path, str) or not path or len(path) > MAX_TEXT:
            raise FaultError(f"{kind}: 'path' is required (exact, 'prefix*' or '*', at most {MAX_TEXT} "
                             f"characters)", "path")
        out["path"] = path
        out["count"] = _num(spec, "count", 1, integer=True)
        if kind == "http_error":
            out["status"] = _num(spec, "status", 500, integer=True)
            body = spec.get("body", "default")
            if not isinstance(body, str) or body not in _BODIES:
                raise FaultError(f"http_error: body must be one of {_BODIES}", "body")
            out["body"] = body
            out["retry_after"] = _num(spec, "retry_after", 1, integer=True)
        elif kind == "truncated":
            out.update(kind="http_error", status=200, body="truncated", retry_after=0)
        elif kind == "non_json":
            out.update(kind="http_error", status=200, body="non_json", retry_after=0)
        else:
            out["seconds"] = _num(spec, "seconds", 3)
    elif kind == "coinglass_auth":
        out["count"] = _num(spec, "count", 1, integer=True)
    return out


def parse_request(body: bytes) -> dict:
    """The body of `POST /_sim/fault` -> a validated fault; FaultError (HTTP 400) for
    anything else: not UTF-8, not JSON, not an object, a bad or out-of-bounds field."""
    import json
    try:
        spec = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise FaultError("the request body is not UTF-8") from None
    except (ValueError, RecursionError):
        raise FaultError("the request body is not JSON") from None
    return validate(spec)


class MalformedQueue:
    """Bad frames still to send on one venue, as (kinds, left) batches: a count of a
    million costs one entry, not a million, and `clear` is immediate."""

    def __init__(self):
        from collections import deque
        self.batches: deque = deque()     # [kinds, next index, left]
        self.left = 0

    def add(self, kinds: list[str], count: int) -> None:
        self.batches.append([list(kinds), 0, count])
        self.left += count

    def pop(self) -> str | None:
        while self.batches:
            b = self.batches[0]
            if b[2] <= 0:
                self.batches.popleft()
                continue
            kind = b[0][b[1] % len(b[0])]
            b[1] += 1
            b[2] -= 1
            self.left -= 1
            return kind
        return None

    def clear(self) -> None:
        self.batches.clear()
        self.left = 0

    def __len__(self) -> int:
        return self.left


def path_matches(pattern: str, path: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern
