"""Aggregation: the cqt-aggregate service (every asset of CQT_SYMBOLS) and the feature parameters it passes on."""
from __future__ import annotations

from functools import partial

from ..values import DAY_S
from ..var import Var

_V = partial(Var, component="aggregate")

TABLE: tuple[Var, ...] = (
    _V("CQT_AGGREGATE_GRACE_S", "2", "float",
       "seconds after a second ends before the service writes it (late messages still count)", 0.0, 3600),
    _V("CQT_AGGREGATE_MAX_CATCHUP_S", "21600", "int",
       "after a restart, catch up at most this many seconds; older gaps are logged with the `--rebuild` command to "
       "fill them", 1, 30 * DAY_S),
    _V("CQT_AGGREGATE_CATCHUP_STEP_S", "600", "int", "seconds written per step while catching up", 1, DAY_S),
    _V("CQT_AGGREGATE_CHUNK_S", "3600", "int", "`--rebuild` chunk (one read + one write transaction each)", 1, DAY_S),
    # at most a day each: a carry or horizon sets how far back every computation reads
    _V("CQT_AGGREGATE_HORIZON_S", "120", "int",
       "`predictions.horizon_sec` (the horizon the score is meant for; the export's label horizon)", 1, DAY_S),
    _V("CQT_AGGREGATE_CARRY_S", "600", "int",
       "an Upbit close, Upbit book, Binance last price or mark price is carried forward at most this long; then NULL",
       1, DAY_S),
    _V("CQT_AGGREGATE_USDT_CARRY_S", "3600", "int", "the same for the KRW-USDT last trade (a sparse market)", 1, DAY_S),
    _V("CQT_AGGREGATE_OI_CARRY_S", "300", "int", "the same for Binance open interest (polled every ~10 s)", 1, DAY_S),
    _V("CQT_AGGREGATE_LS_PERIOD", "5m", "str", "`binance_ratios.period` used for `ls_ratio` (carried 3 periods)"),
    _V("CQT_AGGREGATE_CG_SYMBOL", None, "str",
       "`coinglass_open_interest.symbol` read for the asset; only with one asset in `CQT_SYMBOLS` (with several: "
       "exit 78, each asset reads its own coin)", default_doc="the asset (`BTC`)"),
    _V("CQT_AGGREGATE_CG_EXCHANGE", "Binance", "str",
       "`coinglass_funding.exchange` (its symbol is the asset's Binance symbol, `BTCUSDT`)"),
    _V("CQT_AGGREGATE_START_WAIT_S", "120", "float",
       "first start of an asset only (no `market_1s` row of it): wait at most this long for the collectors' start-up "
       "backfill and first Upbit/Binance trades of it (the other assets write meanwhile); `0` = no wait", 0.0, DAY_S),
    _V("CQT_AGGREGATE_LATE_WINDOW_S", "3600", "int", "how far back (written seconds) the service counts late data",
       1, 7 * DAY_S),
    _V("CQT_AGGREGATE_LATE_SCAN_S", "30", "float",
       "how often it recounts the whole late window (the cached span is checked every step)", 0.1, 3600),
    _V("CQT_AGGREGATE_MAX_REBUILD_S", "34560000", "int",
       "`--rebuild` refuses (exit 2) a range longer than this once cut to the data", 1, 3650 * DAY_S,
       note="400 days"),
)
