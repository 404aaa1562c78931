"""The feature catalogue: one record per column of the derived tables `market_1s` and
`predictions`, and above all one record per feature.

Everything else is read from here, never written a second time:

- the `predictions` (and `market_1s`) column order the aggregate writes, and a test that
  the schema after migrations has exactly these columns (tests/test_catalogue.py);
- the raw tables each feature reads and its trailing look-back (the leak check's
  structural part, feature_check's warm-up exclusion);
- the valid range and null-rate limit of each column (feature_check; the bounds that an
  operator may override are named by their CQT_CHECK_* variable in cqt.checks.thresholds);
- the column descriptions of the exported dataset (`descriptions()`);
- the table in docs/features.md (`markdown_table()`; a test keeps the two equal).

Adding a feature: one FEATURES entry here, its computation in cqt.features.compute_range,
a migration adding the column (lib/cqt/migrations/). Nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass

#: trailing windows (seconds) of the feature families
RET_WINDOWS = (1, 5, 30, 60, 300)
RV_WINDOWS = (60, 300)
FLOW_WINDOWS = (10, 60)
BN_RET_WINDOWS = (1, 5, 30, 60)
KIMCHI_CHG_S = 60
OI_CHG_S = 300
LIQ_WINDOW_S = 60
#: the longest trailing window of any feature
WINDOW_S = max((*RET_WINDOWS, *RV_WINDOWS, *FLOW_WINDOWS, *BN_RET_WINDOWS, KIMCHI_CHG_S, OI_CHG_S, LIQ_WINDOW_S))

# valid-range kinds (feature_check turns each into its violation test)
POSITIVE = "positive"        # > 0
NONNEG = "nonneg"            # >= 0
UNIT = "unit"                # in [-1, 1]
AGE = "age"                  # >= 0 ms; negative = a value from after the row's time
FLAG = "flag"                # 0 or 1
ABS_BELOW = "abs_below"      # |x| < bound
ABS_AT_MOST = "abs_at_most"  # |x| <= bound


@dataclass(frozen=True)
class Valid:
    """The values a column may hold besides NULL (and always finite). For the ABS kinds
    `bound` is the default limit and `env` the check variable that overrides it."""
    kind: str
    bound: float | None = None
    env: str | None = None

    def text(self, bound: float | None = None) -> str:
        b = self.bound if bound is None else bound
        return {POSITIVE: "> 0", NONNEG: ">= 0", UNIT: "in [-1, 1]", FLAG: "0 or 1",
                AGE: ">= 0 (a negative age means a value from after the row's time)",
                ABS_BELOW: f"|x| < {b:g}" if b is not None else "",
                ABS_AT_MOST: f"|x| <= {b:g}" if b is not None else "",
                }[self.kind]


KIMCHI_VALID = Valid(ABS_BELOW, 0.2, "CQT_CHECK_KIMCHI_ABS_MAX")
FUNDING_VALID = Valid(ABS_AT_MOST, 0.03, "CQT_CHECK_FUNDING_ABS_MAX")
_POS, _NONNEG, _UNIT, _AGE = Valid(POSITIVE), Valid(NONNEG), Valid(UNIT), Valid(AGE)


@dataclass(frozen=True)
class Column:
    """One column of a derived table. For a feature (a `predictions` column after
    ts_ms/horizon_sec/model/score): `sources` are the raw tables it reads and `window_s`
    its trailing look-back in seconds (0 = a value at t, carried at most its carry limit)."""
    name: str
    unit: str
    description: str
    valid: Valid | None = None           # None: any finite number
    sources: tuple[str, ...] = ()
    window_s: int = 0
    null_rate_max: float | None = None   # None: CQT_CHECK_NULL_RATE_MAX
    null_note: str = ""                  # why the column may be NULL more often than the default allows
    null_by_design: bool = False         # NULL is a value here; judged by a consistency rule instead
    sql_type: str = "REAL"
    not_null: bool = False


_F = Column
_UT = ("upbit_trades",)
_BN = ("binance_agg_trades",)
_COINGLASS_NULL = ("Coinglass bars are hourly and usable only after close + CQT_COINGLASS_DELAY_S: a fresh "
                   "collection has none for up to ~1 h; coinglass_check judges the source itself")

FEATURES: tuple[Column, ...] = (
    *(_F(f"ret_{k}s", "log return", f"Upbit KRW-<symbol> log return of close over {k} s ending at t0",
         sources=_UT, window_s=k) for k in RET_WINDOWS),
    *(_F(f"rv_{k}s", "log return", f"realized volatility: std of 1 s log returns over {k} s ending at t0 "
                                   "(not annualized)", _NONNEG, _UT, k) for k in RV_WINDOWS),
    *(_F(f"flow_imb_{k}s", "ratio", f"taker flow imbalance (buy - sell) / (buy + sell) of Upbit volume over {k} s",
         _UNIT, _UT, k) for k in FLOW_WINDOWS),
    _F("book_imbalance", "ratio", "Upbit order book (bid size - ask size) / (bid size + ask size) at t0",
       _UNIT, ("upbit_orderbook",)),
    _F("spread_bps", "bps", "Upbit best ask - best bid in basis points of mid at t0", _NONNEG, ("upbit_orderbook",)),
    _F("kimchi_premium", "ratio", "Upbit close / (Binance last x KRW per USDT) - 1 at t0", KIMCHI_VALID,
       ("upbit_trades", "binance_agg_trades")),
    _F("kimchi_chg_60s", "ratio", "change of the kimchi premium over 60 s ending at t0", None,
       ("upbit_trades", "binance_agg_trades"), KIMCHI_CHG_S),
    *(_F(f"bn_ret_{k}s", "log return", f"Binance <symbol>USDT log return of last price over {k} s", None, _BN, k)
      for k in BN_RET_WINDOWS),
    _F("basis_bps", "bps", "(mark - index) / index x 1e4 at t0", None, ("binance_mark_price",)),
    _F("funding_rate", "rate", "Binance funding rate (latest known at t0)", FUNDING_VALID, ("binance_mark_price",)),
    _F("oi_chg_300s", "ratio", "relative change of Binance open interest over 5 min (as available at t0)", None,
       ("binance_open_interest",), OI_CHG_S),
    _F("ls_ratio", "ratio", "Binance global long/short account ratio (latest available at t0)", _POS,
       ("binance_ratios",)),
    _F("liq_notional_60s", "USDT", "Binance forced-order notional (USDT) over 60 s ending at t0", _NONNEG,
       ("binance_liquidations", "binance_agg_trades"), LIQ_WINDOW_S, null_rate_max=1.0,
       null_note="liquidations are sparse; the forceOrder stream is judged by altdata_check"),
    _F("cg_oi_chg", "ratio", "Coinglass aggregated open interest close/open - 1 of the latest bar available at t0",
       None, ("coinglass_open_interest",), null_rate_max=0.05, null_note=_COINGLASS_NULL),
    _F("cg_funding", "rate", "Coinglass funding close of the latest bar available at t0", None,
       ("coinglass_funding",), null_rate_max=0.05, null_note=_COINGLASS_NULL),
)

#: the columns of `predictions` before the features
PREDICTION_HEAD: tuple[Column, ...] = (
    Column("symbol", "", "the asset (base asset, e.g. BTC) the row describes", sql_type="TEXT", not_null=True),
    Column("ts_ms", "ms", "bar time t (UTC epoch ms): the second the features describe", sql_type="INTEGER",
           not_null=True),
    Column("horizon_sec", "s", "the horizon the score looks ahead", _POS, sql_type="INTEGER", not_null=True),
    Column("model", "", "the model that made the score", sql_type="TEXT", not_null=True),
    Column("score", "", "baseline model score from the features at t0 (in (-1, 1); not a feature)"),
)

_NO_TRADE = "NULL when the second had no trade (has_trade = 0)"
_M = Column
MARKET: tuple[Column, ...] = (
    _M("symbol", "", "the asset (base asset, e.g. BTC): Upbit KRW-<symbol>, Binance <symbol>USDT",
       sql_type="TEXT", not_null=True),
    _M("ts_ms", "ms", "bar end t; the bar covers Upbit KRW-<symbol> trades in (t-1 s, t]", sql_type="INTEGER",
       not_null=True),
    *(_M(c, "KRW", f"{c} of the Upbit KRW-<symbol> trades in the second", _POS, null_by_design=True,
         null_note=_NO_TRADE) for c in ("open", "high", "low")),
    _M("close", "KRW", "last Upbit KRW-<symbol> trade price, carried forward within the carry limit", _POS),
    _M("volume", "<symbol>", "Upbit KRW-<symbol> volume in the second", _NONNEG, not_null=True),
    _M("trade_count", "trades", "Upbit KRW-<symbol> trades in the second", _NONNEG, sql_type="INTEGER", not_null=True),
    _M("vwap", "KRW", "volume-weighted price of the trades in the second", _POS, null_by_design=True,
       null_note=_NO_TRADE),
    _M("buy_volume", "<symbol>", "taker buy volume in the second", _NONNEG, not_null=True),
    _M("sell_volume", "<symbol>", "taker sell volume in the second", _NONNEG, not_null=True),
    _M("has_trade", "flag", "1 = a real trade in this second, 0 = close carried forward", Valid(FLAG),
       sql_type="INTEGER", not_null=True),
    _M("close_age_ms", "ms", "t - time of the trade that set close", _AGE, sql_type="INTEGER"),
    _M("best_bid", "KRW", "best bid of the latest Upbit KRW-<symbol> order book at or before t", _POS),
    _M("best_ask", "KRW", "best ask of the latest Upbit KRW-<symbol> order book at or before t", _POS),
    _M("mid", "KRW", "(best bid + best ask) / 2", _POS),
    _M("spread_bps", "bps", "(ask - bid) / mid x 1e4", _NONNEG),
    _M("book_imbalance", "ratio", "(total bid size - total ask size) / (sum) over the delivered levels", _UNIT),
    _M("book_age_ms", "ms", "t - time of the order book", _AGE, sql_type="INTEGER"),
    _M("binance_last", "USDT", "last Binance aggTrade price at or before t", _POS),
    _M("binance_age_ms", "ms", "t - time of that trade", _AGE, sql_type="INTEGER"),
    _M("mark_price", "USDT", "latest Binance mark price at or before t", _POS),
    _M("index_price", "USDT", "latest Binance index price at or before t", _POS),
    _M("funding_rate", "rate", "latest Binance funding rate at or before t", FUNDING_VALID),
    _M("mark_age_ms", "ms", "t - time of the mark price event", _AGE, sql_type="INTEGER"),
    _M("usdt_krw", "KRW", "last Upbit KRW-USDT trade price", _POS),
    _M("usdt_krw_age_ms", "ms", "t - time of that trade", _AGE, sql_type="INTEGER"),
    _M("kimchi_premium", "ratio", "close / (binance_last x usdt_krw) - 1", KIMCHI_VALID),
)

TABLES: dict[str, tuple[Column, ...]] = {"market_1s": MARKET, "predictions": (*PREDICTION_HEAD, *FEATURES)}

FEATURE_COLUMNS: tuple[str, ...] = tuple(f.name for f in FEATURES)
PREDICTION_COLUMNS: tuple[str, ...] = tuple(c.name for c in TABLES["predictions"])
MARKET_COLUMNS: tuple[str, ...] = tuple(c.name for c in MARKET)
MARKET_INT_COLUMNS = frozenset(c.name for c in MARKET if c.sql_type == "INTEGER")
#: raw tables each feature reads
FEATURE_SOURCES: dict[str, tuple[str, ...]] = {f.name: f.sources for f in FEATURES}
#: trailing window of each feature in seconds (0 = a value at t, carried at most its carry limit)
FEATURE_WINDOW_S: dict[str, int] = {f.name: f.window_s for f in FEATURES}

_BY_TABLE = {t: {c.name: c for c in cols} for t, cols in TABLES.items()}


def column(table: str, name: str) -> Column | None:
    """The record of `table.name`, or None for a column the catalogue does not know."""
    return _BY_TABLE.get(table, {}).get(name)


def descriptions() -> dict[str, str]:
    """feature -> one-line description (the exported dataset's column descriptions)."""
    return {f.name: f.description for f in FEATURES}


def null_rate_limits() -> dict[str, float]:
    """"table.column" -> null-rate limit, for the columns whose limit is not the default."""
    return {f"{t}.{c.name}": c.null_rate_max for t, cols in TABLES.items() for c in cols
            if c.null_rate_max is not None}


def null_by_design() -> dict[str, str]:
    """"table.column" -> why, for the columns where NULL is a value (no null rate is judged)."""
    return {f"{t}.{c.name}": c.null_note for t, cols in TABLES.items() for c in cols if c.null_by_design}


def markdown_table() -> str:
    """The features as a Markdown table (docs/features.md holds exactly this)."""
    lines = ["| feature | unit | sources | look-back | valid | null-rate limit | description |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in FEATURES:
        valid = f.valid.text().replace("|", "\\|") if f.valid else "finite"   # a pipe would end the cell
        if f.valid and f.valid.env:
            valid += f" (`{f.valid.env}`)"
        look = f"{f.window_s} s" if f.window_s else "at t (carried)"
        null = f"{f.null_rate_max:g}" if f.null_rate_max is not None else "default"
        lines.append(f"| `{f.name}` | {f.unit} | {', '.join(f'`{s}`' for s in f.sources)} | {look} | {valid} | "
                     f"{null} | {f.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":      # python -m cqt.catalogue > table, pasted into docs/features.md
    print(markdown_table(), end="")
