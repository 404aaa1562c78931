"""Collectors (WebSocket): the one stream loop and the Upbit / Binance collectors."""
from __future__ import annotations

from functools import partial

from ..var import Var

_V = partial(Var, component="collectors")

TABLE: tuple[Var, ...] = (
    _V("CQT_BACKOFF_BASE_S", "1", "float", "reconnect backoff: first ceiling", 0.001),
    _V("CQT_BACKOFF_CAP_S", "60", "float", "reconnect backoff: largest ceiling", 0.001),
    _V("CQT_BACKOFF_RESET_S", "60", "float", "a connection up this long resets the backoff", 0.0),
    _V("CQT_WS_MAX_AGE_S", "82800", "float", "planned rollover age", 1.0, note="23 h"),
    _V("CQT_WS_CONNECT_TIMEOUT_S", "10", "float", "WebSocket connect + handshake timeout", 0.1),
    _V("CQT_WS_RECV_TIMEOUT_S", "0.5", "float", "receive timeout (≤ 1 s; how fast stop/watchdog are seen)", 0.01),
    _V("CQT_WS_CONNECT_INTERVAL_S", "1", "float",
       "at most one new WebSocket connection per this many seconds, all of a collector's connections together "
       "(start, reconnects, rollovers)", 0.0, 60.0),
    _V("CQT_BINANCE_STREAMS_PER_CONN", "200", "int",
       "most Binance streams on one connection (Binance allows 1024); more streams open more connections "
       "to the same entry point", 1, 1024),
    _V("CQT_STALL_AGGTRADE_S", "60", "float", "Binance aggTrade stall threshold (0 = not watched)", 0.0),
    _V("CQT_STALL_MARKPRICE_S", "5", "float", "Binance markPrice@1s stall threshold", 0.0),
    _V("CQT_STALL_BOOKTICKER_S", "30", "float", "Binance bookTicker stall threshold", 0.0),
    _V("CQT_STALL_UPBIT_TRADE_S", "300", "float", "Upbit trade stall threshold (trades can be quiet)", 0.0),
    _V("CQT_STALL_UPBIT_ORDERBOOK_S", "30", "float", "Upbit order book stall threshold", 0.0),
    _V("CQT_GAP_MIN_MS", "3000", "int",
       "reconnect windows longer than this on markPrice/bookTicker/Upbit order book are recorded as unfillable gaps",
       0),
    _V("CQT_UPBIT_PING_S", "30", "float", "send text `PING` after this long without frames", 0.1),
    _V("CQT_CA_BUNDLE", "", "str",
       "certificate authorities (PEM) the collectors and pollers trust for `wss://` and `https://`, instead of the "
       "system's; unset: `REQUESTS_CA_BUNDLE`, then `SSL_CERT_FILE`, then the system store",
       default_doc="unset (the system store)"),
    _V("CQT_REST_TIMEOUT_S", "10", "float", "timeout of each backfill request", 0.1),
    _V("CQT_UPBIT_RECONCILE_S", "180", "float",
       "while connected, compare the newest Upbit REST trade pages of each code with the stored trades this often "
       "and insert what is missing", 1.0, 86400.0),
    _V("CQT_UPBIT_RECONCILE_SETTLE_S", "10", "float",
       "reconcile only trades at least this much older (exchange time) than the newest one the stream delivered",
       0.0, 600.0),
)
