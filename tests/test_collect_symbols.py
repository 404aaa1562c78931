"""Many symbols in one collector, without a network: how Binance streams are spread over
connections, the market-list check, connection pacing, and the bookkeeping that carries the
venue symbol (resume_state, gaps, rejects, ingest_stats, heartbeat detail)."""
from __future__ import annotations

import http.server
import json
import logging
import threading

import pytest
import websocket

from cqt.stream import ConnectPacer, Endpoint, Gap, LoopSettings, StreamLoop, StreamRule, venue_symbol
from cqt.venues.binance import markets as binance_markets
from cqt.venues.binance.collect import (
    BinanceConfig,
    endpoints,
    pack_streams,
    reject_symbol_of,
    symbols_overrides,
)
from cqt.venues.upbit import markets as upbit_markets
from cqt.venues.upbit.collect import codes_overrides, reject_code_of

T0 = 1_700_000_000_000


def _cfg(symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"), per_conn=200, **kw) -> BinanceConfig:
    base = dict(symbols=tuple(symbols), ws_base="wss://fstream.example", rest_base="https://fapi.example",
                loop=LoopSettings(connect_interval_s=0.0), stall_aggtrade_s=60.0, stall_markprice_s=5.0,
                stall_bookticker_s=30.0, gap_min_ms=3000, bookticker_min_ms=100, backfill_s=0, rest_timeout_s=5.0,
                streams_per_conn=per_conn)
    base.update(kw)
    return BinanceConfig(**base)


def _wire_streams(ep: Endpoint) -> list[str]:
    route, _, query = ep.url.partition("/stream?streams=")
    assert route.endswith(("/market", "/public")), ep.url
    return query.split("/")


# ------------------------------------------------------------------ Binance: streams over connections
def test_pack_streams_keeps_a_symbols_streams_together_and_never_exceeds_the_limit():
    groups = [[f"s{i}@a", f"s{i}@b", f"s{i}@c"] for i in range(5)]
    assert pack_streams(groups, 200) == [sum(groups, [])]
    assert pack_streams(groups, 4) == groups                      # 3 fit, a 4th symbol would not
    assert pack_streams(groups, 6) == [groups[0] + groups[1], groups[2] + groups[3], groups[4]]
    cut = pack_streams(groups, 2)                                 # a group larger than the limit is cut
    assert sum(cut, []) == sum(groups, []) and all(len(c) <= 2 for c in cut)
    assert pack_streams(groups, 1) == [[s] for s in sum(groups, [])]
    assert pack_streams([], 5) == []
    with pytest.raises(ValueError):
        pack_streams(groups, 0)


def test_three_symbols_fit_on_one_market_and_one_public_connection():
    eps = endpoints(_cfg())
    assert [ep.name for ep in eps] == ["market", "public"]
    market, public = eps
    assert market.url.startswith("wss://fstream.example/market/stream?streams=")
    assert _wire_streams(market) == [f"{s}@{k}" for s in ("btcusdt", "ethusdt", "solusdt")
                                     for k in ("aggTrade", "markPrice@1s", "forceOrder")]
    assert _wire_streams(public) == ["btcusdt@bookTicker", "ethusdt@bookTicker", "solusdt@bookTicker"]
    # rules keyed by the parser's stream names; forceOrder has none (never a liveness signal)
    assert set(market.rules) == {f"{s}@{k}" for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")
                                 for k in ("aggTrade", "markPrice")}
    assert market.rules["ETHUSDT@markPrice"] == StreamRule(stall_s=5.0, gap_min_ms=3000)
    assert public.rules["SOLUSDT@bookTicker"] == StreamRule(stall_s=30.0, gap_min_ms=3000, thin_ms=100)


@pytest.mark.parametrize("per_conn", [1, 2, 3, 4, 7, 200, 1024])
def test_a_small_limit_opens_more_connections_each_stream_exactly_once(per_conn):
    symbols = tuple(f"S{i}USDT" for i in range(11))
    eps = endpoints(_cfg(symbols, per_conn))
    routes = {"market": [], "public": []}
    for ep in eps:
        streams = _wire_streams(ep)
        assert 1 <= len(streams) <= per_conn, (ep.name, len(streams))
        routes[ep.url.split("/")[3]].extend(streams)
        # each connection watches exactly the streams it carries
        assert set(ep.rules) <= {f"{w.split('@')[0].upper()}@{w.split('@')[1]}" for w in streams}
    assert sorted(routes["market"]) == sorted(f"{s.lower()}@{k}" for s in symbols
                                              for k in ("aggTrade", "markPrice@1s", "forceOrder"))
    assert sorted(routes["public"]) == sorted(f"{s.lower()}@bookTicker" for s in symbols)
    names = [ep.name for ep in eps]
    assert len(set(names)) == len(names)
    n_market = sum(1 for n in names if n.startswith("market"))
    assert (names[0] == "market") == (n_market == 1)
    if per_conn >= 3:       # a symbol's market streams share a connection
        for ep in eps:
            syms = {w.split("@")[0] for w in _wire_streams(ep) if "@aggTrade" in w}
            for s in syms:
                assert {f"{s}@aggTrade", f"{s}@markPrice@1s", f"{s}@forceOrder"} <= set(_wire_streams(ep))


def test_streams_per_connection_setting_is_bounded(tmp_path):
    from cqt.config import ConfigError, load_settings
    env = {"CQT_DB": str(tmp_path / "x.db"), "CQT_ENV_FILE": str(tmp_path / "none.env")}
    assert BinanceConfig.from_settings(load_settings(env)).streams_per_conn == 200
    cfg = BinanceConfig.from_settings(load_settings({**env, "CQT_SYMBOLS": "BTC,ETH",
                                                     "CQT_BINANCE_STREAMS_PER_CONN": "4"}))
    assert cfg.symbols == ("BTCUSDT", "ETHUSDT") and cfg.streams_per_conn == 4
    for bad in ("0", "1025", "x"):
        with pytest.raises(ConfigError, match="CQT_BINANCE_STREAMS_PER_CONN"):
            BinanceConfig.from_settings(load_settings({**env, "CQT_BINANCE_STREAMS_PER_CONN": bad}))


def test_symbols_options():
    assert symbols_overrides(None, None) == {}
    assert symbols_overrides("ethusdt, SOLUSDT", None) == {"binance_symbols": "ETHUSDT,SOLUSDT",
                                                           "symbols": "ETH,SOL"}
    assert symbols_overrides(None, "ETHUSDT") == {"binance_symbols": "ETHUSDT", "symbols": "ETH"}
    from cqt.config import ConfigError
    with pytest.raises(ConfigError):
        symbols_overrides("BTCUSDT", "ETHUSDT")
    with pytest.raises(ConfigError):
        symbols_overrides(" , ", None)
    assert codes_overrides(None) == {}
    assert codes_overrides("KRW-ETH,KRW-SOL") == {"upbit_codes": "KRW-ETH,KRW-SOL", "symbols": "ETH,SOL"}
    assert codes_overrides("KRW-USDT") == {"upbit_codes": "KRW-USDT"}


def test_rejected_frames_name_their_symbol_only_when_it_is_collected():
    find = reject_symbol_of(("BTCUSDT", "ETHUSDT"))
    assert find(b'{"stream":"ethusdt@aggTrade","data":{"e":"aggTrade","p":"nan"}}') == "ETHUSDT"
    assert find('{"e":"markPriceUpdate","s":"BTCUSDT","p":"x"}') == "BTCUSDT"
    assert find(b'{"stream":"dogeusdt@aggTrade","data":{}}') is None
    assert find(b"not json at all") is None and find(b"") is None and find(None) is None
    code = reject_code_of(("KRW-BTC", "KRW-USDT"))
    assert code(b'{"type":"trade","code":"KRW-BTC","trade_price":"x"}') == "KRW-BTC"
    assert code('{"ty":"orderbook","cd":"KRW-USDT"}') == "KRW-USDT"
    assert code(b'{"code":"KRW-XRP"}') is None and code(b"{") is None


# ------------------------------------------------------------------ market lists (pure)
def _info(*entries):
    return {"timezone": "UTC", "symbols": [dict(symbol=s, status=st, contractType=ct) for s, st, ct in entries]}


def test_binance_market_list_names_each_symbol_it_does_not_trade_as_a_perpetual():
    info = _info(("BTCUSDT", "TRADING", "PERPETUAL"), ("ETHUSDT", "TRADING", "PERPETUAL"),
                 ("LUNAUSDT", "SETTLING", "PERPETUAL"), ("BTCUSDT_250627", "TRADING", "CURRENT_QUARTER"),
                 ("NEWUSDT", "PENDING_TRADING", "PERPETUAL"))
    assert binance_markets.symbol_problems(info, ("BTCUSDT", "ETHUSDT")) == []
    assert binance_markets.symbol_problems(info, ("BTCUSDT", "XYZUSDT", "LUNAUSDT", "BTCUSDT_250627",
                                                  "NEWUSDT")) == [
        "XYZUSDT is not listed", "LUNAUSDT is not trading (status SETTLING)",
        "BTCUSDT_250627 is not a perpetual (contractType CURRENT_QUARTER)",
        "NEWUSDT is not trading (status PENDING_TRADING)"]
    for bad in ({}, [], {"symbols": "x"}, None, {"code": -1, "msg": "x"}):
        with pytest.raises(ValueError):
            binance_markets.symbol_problems(bad, ("BTCUSDT",))


def test_upbit_market_list_names_each_code_it_does_not_list():
    listed = [{"market": "KRW-BTC", "korean_name": "비트코인", "english_name": "Bitcoin"},
              {"market": "KRW-USDT"}, {"market": "BTC-ETH"}]
    assert upbit_markets.code_problems(listed, ("KRW-BTC", "KRW-USDT")) == []
    assert upbit_markets.code_problems(listed, ("KRW-BTC", "KRW-ETH", "KRW-XYZ")) == [
        "KRW-ETH is not listed", "KRW-XYZ is not listed"]
    for bad in ([], {}, None, [1, 2], {"error": {"name": "x"}}):
        with pytest.raises(ValueError):
            upbit_markets.code_problems(bad, ("KRW-BTC",))


# ------------------------------------------------------------------ market check over HTTP (local server)
class _Answer(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b"{}"
    paths: list = []

    def do_GET(self):  # noqa: N802 - the http.server hook name
        type(self).paths.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def answer():
    """answer(status, body) -> base URL of a local server giving that answer to any GET."""
    servers = []

    def start(status: int, body) -> str:
        handler = type("H", (_Answer,), {"status": status, "paths": [],
                                         "body": body if isinstance(body, bytes) else json.dumps(body).encode()})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        start.handler = handler
        return f"http://127.0.0.1:{srv.server_address[1]}"
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _check(base: str, symbols=("BTCUSDT", "ETHUSDT")):
    from cqt.collector import markets_or_exit
    return markets_or_exit("cqt-collect-binance", base, binance_markets.PATH,
                           lambda info: binance_markets.symbol_problems(info, symbols),
                           venue="Binance USD-M futures", fix="change CQT_SYMBOLS", timeout_s=5.0)


def test_market_check_passes_listed_symbols(answer):
    base = answer(200, _info(("BTCUSDT", "TRADING", "PERPETUAL"), ("ETHUSDT", "TRADING", "PERPETUAL")))
    assert _check(base) is None
    assert answer.handler.paths == ["/fapi/v1/exchangeInfo"]


def test_market_check_unknown_symbol_is_one_line_and_exit_78(answer, capsys):
    base = answer(200, _info(("BTCUSDT", "TRADING", "PERPETUAL"), ("LUNAUSDT", "SETTLING", "PERPETUAL")))
    with pytest.raises(SystemExit) as exc:
        _check(base, ("BTCUSDT", "XYZUSDT", "LUNAUSDT"))
    assert exc.value.code == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err == (
        "cqt-collect-binance: XYZUSDT is not listed; LUNAUSDT is not trading (status SETTLING) "
        "on Binance USD-M futures; change CQT_SYMBOLS\n")


def test_market_check_names_at_most_ten_problems(answer, capsys):
    base = answer(200, _info(("BTCUSDT", "TRADING", "PERPETUAL")))
    with pytest.raises(SystemExit):
        _check(base, tuple(f"X{i}USDT" for i in range(14)))
    err = capsys.readouterr().err
    assert err.count("is not listed") == 10 and "; and 4 more on " in err and err.count("\n") == 1


@pytest.mark.parametrize("status,body,why", [(503, {"code": -1}, "http 503"), (200, b"<html>", "unreadable"),
                                             (200, {"symbols": None}, "unreadable"),
                                             (429, {"code": -1003}, "429")])
def test_market_list_that_cannot_be_read_is_a_warning_not_an_exit(answer, status, body, why):
    warning = _check(answer(status, body))
    assert warning.startswith("market list not checked: GET /fapi/v1/exchangeInfo ") and why in warning
    assert warning.endswith("starting with the configured symbols")


def test_market_list_of_an_unreachable_venue_is_a_warning(capsys):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                   # nothing listens there now
    warning = _check(f"http://127.0.0.1:{port}")
    assert "connection refused" in warning
    assert capsys.readouterr().err == ""       # nothing printed before the service's logging is set up


def test_symbol_fix_names_where_the_symbols_came_from(tmp_path):
    from cqt.collector import symbol_fix
    from cqt.config import load_settings
    env = {"CQT_DB": str(tmp_path / "x.db"), "CQT_ENV_FILE": str(tmp_path / "none.env")}
    fix = symbol_fix(load_settings(env), "CQT_BINANCE_SYMBOLS", "CQT_BINANCE_SYMBOL")
    assert fix.startswith("change CQT_SYMBOLS") and "CQT_BINANCE_SYMBOLS" in fix
    fix = symbol_fix(load_settings({**env, "CQT_BINANCE_SYMBOLS": "BTCUSDT"}), "CQT_BINANCE_SYMBOLS",
                     "CQT_BINANCE_SYMBOL")
    assert fix.startswith("change CQT_BINANCE_SYMBOLS")
    fix = symbol_fix(load_settings({**env, "CQT_BINANCE_SYMBOL": "BTCUSDT"}), "CQT_BINANCE_SYMBOLS",
                     "CQT_BINANCE_SYMBOL")
    assert fix.startswith("change CQT_BINANCE_SYMBOL ")
    assert symbol_fix(load_settings(env, binance_symbols="BTCUSDT"), "CQT_BINANCE_SYMBOLS") == "change --symbols"
    assert symbol_fix(load_settings({**env, "CQT_UPBIT_CODES": "KRW-BTC"}), "CQT_UPBIT_CODES",
                      option="--codes").startswith("change CQT_UPBIT_CODES")


# ------------------------------------------------------------------ connection pacing
class _Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_pacer_spreads_a_burst_of_connects_one_per_interval():
    clock = _Clock()
    pacer = ConnectPacer(1.0, clock)
    assert [pacer.reserve() for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]     # four drops at once
    clock.t += 10.0
    assert pacer.reserve() == 0.0
    clock.t += 0.25
    assert pacer.try_take() == pytest.approx(0.75)                         # a rollover comes back later
    assert pacer.reserve() == pytest.approx(0.75)                          # nothing was taken by try_take
    clock.t += 2.0
    assert pacer.try_take() == 0.0 and pacer.try_take() == pytest.approx(1.0)
    free = ConnectPacer(0.0, clock)
    assert [free.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]


def test_every_connect_of_a_loop_waits_for_its_slot():
    """Three endpoints whose connects all fail: the attempts, across endpoints, are never
    closer than the pacing interval (virtual clock: time moves only in the loop's waits)."""
    clock = _Clock()
    attempts: list[tuple[str, float]] = []
    loop = None

    def connect(url, **kw):
        attempts.append((url, clock.t))
        raise ConnectionRefusedError(111, "Connection refused")

    def wait(seconds: float) -> bool:
        clock.t += seconds
        if len(attempts) >= 12:
            loop.stop_event.set()
        return loop.stop_event.is_set()

    cfg = LoopSettings(backoff_base_s=0.001, backoff_cap_s=0.001, connect_interval_s=1.0)
    eps = [Endpoint(f"e{i}", f"ws://127.0.0.1:1/{i}", "binance_ws", parse=None) for i in range(3)]
    loop = StreamLoop(_FakeService(), eps, None, cfg, clock=clock, connect=connect, wait=wait)
    # the receive threads take turns: one attempt each, round robin, as a storm would interleave
    for _ in range(4):
        for c in loop.conns:
            ws = loop._open(c)
            assert ws is None
    times = [t for _, t in attempts]
    assert len(times) == 12 and {u for u, _ in attempts} == {ep.url for ep in eps}
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(times, times[1:])), times


# ------------------------------------------------------------------ bookkeeping per symbol: the stream loop
class _Writer:
    def __init__(self):
        self.many: list[tuple[str, list]] = []

    def put_many(self, sql, rows, nrows=None):
        self.many.append((sql, list(rows)))

    def call(self, fn):
        pass


class _Rejects:
    def __init__(self):
        self.got = []

    def record(self, source, reason, raw, ts_ms=None, symbol=None):
        self.got.append((source, reason, symbol))


class _FakeService:
    def __init__(self):
        self.name = "cqt-collect-binance"
        self.writer = _Writer()
        self.stopping = threading.Event()
        self.rejects = _Rejects()
        self.counts: list[tuple[str, str, int, int, int]] = []

    def count(self, source, frames=0, rows=0, rejects=0, *, symbol=""):
        self.counts.append((source, symbol, frames, rows, rejects))


class _Socket:
    """Hands out the given frames, then reports timeouts until the loop is told to stop."""

    def __init__(self, frames, when_empty):
        self.frames = list(frames)
        self.when_empty = when_empty

    def send(self, msg):
        pass

    def settimeout(self, t):
        pass

    def recv_data(self):
        if self.frames:
            return websocket.ABNF.OPCODE_TEXT, self.frames.pop(0).encode()
        self.when_empty()
        raise websocket.WebSocketTimeoutException("timed out")

    def close(self, timeout=None):
        pass

    def shutdown(self):
        pass


def _agg(sym: str, agg_id: int, t: int, price: str = "100.5") -> str:
    return json.dumps({"stream": f"{sym.lower()}@aggTrade", "data": {
        "e": "aggTrade", "E": t, "s": sym, "a": agg_id, "p": price, "q": "0.010", "f": agg_id * 2,
        "l": agg_id * 2 + 1, "T": t - 1, "m": False}})


def _mark(sym: str, t: int) -> str:
    return json.dumps({"stream": f"{sym.lower()}@markPrice@1s", "data": {
        "e": "markPriceUpdate", "E": t, "s": sym, "p": "100.0", "i": "100.1", "P": "100.0", "r": "0.0001",
        "T": t + 3_600_000}})


class _Gaps:
    def __init__(self):
        self.gaps: list[Gap] = []

    def on_gap(self, gap: Gap) -> None:
        self.gaps.append(gap)


def _run_market(frames, symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT")):
    svc = _FakeService()
    cfg = _cfg(symbols)
    gaps = _Gaps()
    loop = None

    def connect(url, **kw):
        return _Socket(frames, loop.stop_event.set)
    loop = StreamLoop(svc, [endpoints(cfg)[0]], gaps, cfg.loop, service=svc.name, connect=connect)
    loop._run(loop.conns[0])
    return svc, loop, gaps


def test_resume_rows_counts_rejects_and_gaps_carry_the_venue_symbol():
    from cqt.stream import RESUME_SQL
    from cqt.timeutil import now_ms
    t = now_ms()
    frames = [_agg("BTCUSDT", 10, t), _agg("ETHUSDT", 500, t), _agg("BTCUSDT", 11, t + 1),
              _mark("ETHUSDT", t), _agg("SOLUSDT", 7, t), _agg("SOLUSDT", 9, t + 2),           # SOL id 8 missing
              _agg("ETHUSDT", 501, t + 3, price="nan"),                                        # rejected
              '{"result":null,"id":1}']                                                        # control frame
    svc, loop, gaps = _run_market(frames)

    resume = {row[1]: row for sql, rows in svc.writer.many if sql == RESUME_SQL for row in rows}
    assert {k: (v[0], v[2], v[3]) for k, v in resume.items()} == {
        "BTCUSDT@aggTrade": ("cqt-collect-binance", "BTCUSDT", 11),
        "ETHUSDT@aggTrade": ("cqt-collect-binance", "ETHUSDT", 500),
        "SOLUSDT@aggTrade": ("cqt-collect-binance", "SOLUSDT", 9),
        "ETHUSDT@markPrice": ("cqt-collect-binance", "ETHUSDT", None)}

    per_symbol: dict[str, list[int]] = {}
    for source, sym, frames_n, rows, rejects in svc.counts:
        assert source == "binance_ws"
        acc = per_symbol.setdefault(sym, [0, 0, 0])
        for i, v in enumerate((frames_n, rows, rejects)):
            acc[i] += v
    assert per_symbol == {"BTCUSDT": [2, 2, 0], "ETHUSDT": [3, 2, 1], "SOLUSDT": [2, 2, 0], "": [1, 0, 0]}
    assert len(svc.rejects.got) == 1 and svc.rejects.got[0][2] == "ETHUSDT"

    assert [(g.stream, g.symbol, g.from_id, g.to_id) for g in gaps.gaps] == [("SOLUSDT@aggTrade", "SOLUSDT", 8, 8)]

    snap = loop.snapshot()
    assert set(snap["symbols"]) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    eth = snap["symbols"]["ETHUSDT"]
    assert eth["frames"] == 2 and eth["rows"] == 2
    assert eth["streams"]["aggTrade"]["last_id"] == 500 and "markPrice" in eth["streams"]
    assert snap["symbols"]["BTCUSDT"]["streams"]["aggTrade"]["last_id"] == 11


def test_a_reconnect_of_one_connection_leaves_the_other_connections_streams_alone():
    """Two market connections of the same source: a reconnect of the first marks only its own
    streams as 'after a reconnect' (the second one is still up and gap-free)."""
    cfg = _cfg(("BTCUSDT", "ETHUSDT"), per_conn=3)
    eps = endpoints(cfg)
    assert [ep.name for ep in eps] == ["market-1", "market-2", "public"]
    loop = StreamLoop(_FakeService(), eps, None, cfg.loop)
    first, second = loop.conns[0], loop.conns[1]
    loop.state("ETHUSDT@aggTrade").frames = 5          # the second connection has delivered
    loop._mark_connected(first, "reconnect")
    assert first.streams["BTCUSDT@aggTrade"].after_connect == "reconnect"
    assert second.streams["ETHUSDT@aggTrade"].after_connect is None
    assert venue_symbol("KRW-BTC@trade") == "KRW-BTC" and venue_symbol("nosymbol") is None


# ------------------------------------------------------------------ bookkeeping per symbol: the tables
def test_gaps_rejects_and_ingest_stats_rows_carry_the_symbol(tmp_path):
    from cqt.backfill import GapBook
    from cqt.config import load_settings
    from cqt.db import connect
    from cqt.logsetup import EventHandler
    from cqt.runtime import Service

    settings = load_settings({"CQT_DB": str(tmp_path / "cqt.db"), "CQT_ENV_FILE": str(tmp_path / "none.env")})
    svc = Service("cqt-collect-binance", settings)
    try:
        book = GapBook(svc.writer)
        book.open(Gap("binance_ws", "ETHUSDT@aggTrade", "id_jump", T0, 5, 9))
        book.open(Gap("binance_ws", "SOLUSDT@markPrice", "reconnect", T0, None, None, T0 - 9000, T0),
                  status="unfillable")
        svc.rejects.record("binance_ws", "bad_price", b'{"s":"ETHUSDT"}', T0, symbol="ETHUSDT")
        svc.rejects.record("binance_ws", "not_json", b"{", T0)
        svc.count("binance_ws", frames=3, rows=3, symbol="BTCUSDT")
        svc.count("binance_ws", frames=2, rows=1, rejects=1, symbol="ETHUSDT")
        svc.count("binance_ws", frames=1)
        svc.count("binance_ws", frames=4, rows=4, symbol="BTCUSDT")
        svc.count("binance_rest", frames=1, rows=5, symbol="ETHUSDT")
        svc._heartbeat_once()
        assert svc.writer.flush(10)
    finally:
        svc.finish(0)
        for h in [h for h in logging.getLogger().handlers if isinstance(h, EventHandler)]:
            logging.getLogger().removeHandler(h)
    conn = connect(tmp_path / "cqt.db", readonly=True)
    try:
        assert conn.execute("SELECT stream, symbol, status FROM gaps ORDER BY id").fetchall() == [
            ("ETHUSDT@aggTrade", "ETHUSDT", "open"), ("SOLUSDT@markPrice", "SOLUSDT", "unfillable")]
        assert conn.execute("SELECT reason, symbol FROM rejects ORDER BY id").fetchall() == [
            ("bad_price", "ETHUSDT"), ("not_json", None)]
        stats = conn.execute("SELECT source, symbol, SUM(frames), SUM(rows), SUM(rejects) FROM ingest_stats "
                             "GROUP BY source, symbol ORDER BY source, symbol").fetchall()
        hb = json.loads(conn.execute("SELECT detail FROM heartbeats ORDER BY ts_ms LIMIT 1").fetchone()[0])
    finally:
        conn.close()
    assert stats == [("binance_rest", "ETHUSDT", 1, 5, 0), ("binance_ws", "", 1, 0, 0),
                     ("binance_ws", "BTCUSDT", 7, 7, 0), ("binance_ws", "ETHUSDT", 2, 1, 1)]
    assert hb["totals"]["binance_ws"] == {"frames": 10, "rows": 8, "rejects": 1}
    assert hb["symbol_totals"]["binance_ws"]["BTCUSDT"] == {"frames": 7, "rows": 7, "rejects": 0}
    assert "" not in hb["symbol_totals"]["binance_ws"]
