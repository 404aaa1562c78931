"""Replay of a capture (JSON Lines, optionally .gz), shared with the collectors'
`--capture` and `bin/cqt replay`:

  WebSocket frame: {"recv_ts_ms": 1700000000123, "source": "upbit" | "binance_ws", "raw": "<frame>"}
  REST answer:     {"recv_ts_ms": …, "source": "binance_rest" | "upbit_rest" | "coinglass",
                    "path": "/fapi/v1/openInterest", "params": {…}, "status": 200, "raw": "<body>"}

Frames are sent in file order, paced by recv_ts_ms / speed (speed 0: as fast as
possible); REST requests are answered from the recorded answers for the path:
the one whose params match best (exact match first, then most equal params,
then the latest recorded).
"""
from __future__ import annotations

from ..capture import iter_capture

WS_SOURCES = {"upbit": "upbit", "binance_ws": "binance"}
REST_SOURCES = ("binance_rest", "upbit_rest", "coinglass")


class CaptureError(ValueError):
    pass


class Capture:
    """A loaded capture: ws frames in file order and REST answers by path.
    Reading (gzip by magic bytes, a truncated tail, `raw_b64` for non-UTF-8
    frames) is cqt.capture's."""

    def __init__(self, path: str):
        self.path = str(path)
        self.frames: list[tuple[int, str, str | bytes]] = []     # (recv_ts_ms, venue, raw)
        self.rest: dict[str, list[tuple[dict, int, str, int]]] = {}
        self.bad_lines = 0

        def on_error(err):
            self.bad_lines += 1
        n = 0
        for rec in iter_capture(path, on_error=on_error):
            ts, src, raw = rec["recv_ts_ms"], rec["source"], rec["raw"]
            if src in WS_SOURCES:
                self.frames.append((ts, WS_SOURCES[src], raw))
            elif src in REST_SOURCES:
                p = rec.get("path")
                if not p:
                    self.bad_lines += 1
                    continue
                params = {str(k): str(v) for k, v in (rec.get("params") or {}).items()}
                body = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                self.rest.setdefault(p, []).append((params, int(rec.get("status") or 200), body, ts))
            else:
                self.bad_lines += 1
                continue
            n += 1
        if n == 0:
            raise CaptureError(f"{path}: no capture records")

    def answer(self, path: str, params: dict) -> tuple[int, str] | None:
        recs = self.rest.get(path)
        if not recs:
            return None
        params = {str(k): str(v) for k, v in params.items()}
        best, best_key = None, None
        for i, (p, status, raw, ts) in enumerate(recs):
            exact = p == params
            same = sum(1 for k, v in params.items() if p.get(k) == v)
            key = (exact, same, ts, i)
            if best_key is None or key > best_key:
                best, best_key = (status, raw), key
        return best
