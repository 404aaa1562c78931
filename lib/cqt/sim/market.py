"""The model's market in the venues' wire formats, without sockets.

`Market` wraps a `MarketModel` (the dynamics) with each venue's formatting: the
WebSocket frames a venue sends for a time range, the latest frame of a stream (what a
snapshot or a ticker answer is made from) and the REST answer of a path at a model
time. The server serves it over sockets; `cqt.synth` and the tests use it directly.
"""
from __future__ import annotations

from typing import Iterator

from .venues.binance import frames as binance_frames, rest as binance_rest
from .venues.coinglass import rest as coinglass_rest
from .venues.upbit import frames as upbit_frames, rest as upbit_rest

# venue name -> its WebSocket frame formatter; REST modules in dispatch order
WS_FRAMES = {"upbit": upbit_frames.Frames, "binance": binance_frames.Frames}
REST_MODULES = (binance_rest, upbit_rest, coinglass_rest)


class Market:
    """A `cqt.sim.model.MarketModel` as the venues publish it: ``Market(MarketModel(seed,
    origin_ms, history_s=…))``. `model` is the dynamics."""

    def __init__(self, model):
        self.model = model
        self.frames = {venue: cls(model) for venue, cls in WS_FRAMES.items()}


    # -------------------------------------------------------------- WebSocket frames
    def ws_frames(self, venue: str, t_from_ms: int, t_to_ms: int,
                  streams=None) -> Iterator[tuple[int, str, str]]:
        """(event_ts_ms, stream, raw_text) in time order for t_from <= ts < t_to.

        venue "binance": bare event JSON as the raw `/ws/` path sends it, streams
        btcusdt@aggTrade, btcusdt@markPrice@1s, btcusdt@bookTicker, btcusdt@forceOrder
        (add "btcusdt@markPrice" via `streams` for the 3 s variant).
        venue "upbit": DEFAULT-format JSON, streams "<code>@trade|orderbook|ticker"
        for KRW-BTC and KRW-USDT.
        """
        for ts, stream, raw, _id in self.ws_frames_ids(venue, t_from_ms, t_to_ms, streams):
            yield ts, stream, raw

    def ws_frames_ids(self, venue: str, t_from_ms: int, t_to_ms: int, streams=None):
        """Like ws_frames, with a fourth item: the trade id (Binance `a`, Upbit
        `sequential_id`) for trade frames, else None."""
        fmt = self.frames.get(venue)
        if fmt is None:
            raise ValueError(f"unknown venue {venue!r}")
        want = set(fmt.streams if streams is None else streams)
        m = self.model
        k_a = max(m.k0, t_from_ms // 1000)
        k_b = (t_to_ms - 1) // 1000
        for k in range(k_a, k_b + 1):
            frames = self.block_frames(m.block(k), venue)
            edge = k == k_a or k == k_b
            for fr in frames:
                if fr[1] in want and (not edge or t_from_ms <= fr[0] < t_to_ms):
                    yield fr

    def block_frames(self, b, venue: str) -> list:
        """Formatted frames of a block for a venue: [(ts, stream, raw, id)], sorted
        (kept on the block while it is cached)."""
        fr = b.frames.get(venue)
        if fr is None:
            fr = b.frames[venue] = self.frames[venue].format(b)
        return fr

    def last_frames(self, venue: str, t_ms: int, streams, max_back_s: int = 600) -> dict[str, str]:
        """The latest frame (ts < t_ms) of each of `streams`, looking back at most
        max_back_s seconds: what an Upbit SNAPSHOT is made from."""
        m = self.model
        want = set(streams)
        found: dict[str, str] = {}
        k = (t_ms - 1) // 1000
        stop = max(m.k0, k - max_back_s)
        while k >= stop and len(found) < len(want):
            frames = self.block_frames(m.block(k), venue)
            for ts, stream, raw, _id in reversed(frames):
                if ts < t_ms and stream in want and stream not in found:
                    found[stream] = raw
            k -= 1
        return found

    # -------------------------------------------------------------- REST
    def rest(self, path: str, params: dict, now_ms: int) -> tuple[int, str]:
        """The pure answer of a REST endpoint at model time now_ms: (status, body).
        Limits, faults and authentication are the server's business."""
        for mod in REST_MODULES:
            h = mod.REST.get(path)
            if h is not None:
                return h(self, {k: str(v) for k, v in params.items()}, int(now_ms))
        return not_found(path)


def not_found(path: str) -> tuple[int, str]:
    """A path nobody answers: the 404 of the venue whose prefix it has."""
    for mod in REST_MODULES:
        if mod.owns(path):
            return mod.not_found(path)
    return 404, '{"error":"not found"}'
