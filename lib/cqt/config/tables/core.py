"""Core: the database, the endpoints, what to collect, the keys, outputs, logging.

These are converted eagerly by load_settings (a bad value fails every program, exit 78)
and are the typed fields of Settings.
"""
from __future__ import annotations

from functools import partial

from ..values import DAY_S
from ..var import Var

_V = partial(Var, component="core")

VARIABLES: tuple[Var, ...] = (
    _V("CQT_DB", "data/cqt.db", "path", "SQLite database file", example="data/cqt.db"),
    _V("CQT_UPBIT_WS_URL", "wss://api.upbit.com/websocket/v1", "url_ws", "Upbit quotation WebSocket",
       example="wss://api.upbit.com/websocket/v1"),
    _V("CQT_UPBIT_REST_URL", "https://api.upbit.com", "url_http", "Upbit REST (trade backfill)",
       example="https://api.upbit.com"),
    _V("CQT_BINANCE_WS_URL", "wss://fstream.binance.com", "url_ws",
       "Binance futures WebSocket base; `/market` and `/public` are appended", example="wss://fstream.binance.com"),
    _V("CQT_BINANCE_REST_URL", "https://fapi.binance.com", "url_http", "Binance futures REST",
       example="https://fapi.binance.com"),
    _V("CQT_COINGLASS_URL", "https://open-api-v4.coinglass.com", "url_http", "Coinglass API v4",
       example="https://open-api-v4.coinglass.com"),
    _V("CQT_SYMBOLS", "BTC", "list",
       "base assets to collect, aggregate, check and export (at most 200); every venue symbol is derived from them. "
       "Unset but a Binance list set (an older `.env`): that list's assets", example="BTC"),
    _V("CQT_BINANCE_SYMBOLS", None, "list", "Binance USDⓈ-M perpetuals, overriding the derived list; must cover "
       "every asset of `CQT_SYMBOLS`", default_doc="`<ASSET>USDT` for each asset"),
    _V("CQT_BINANCE_SYMBOL", None, "str", "legacy single-symbol form of `CQT_BINANCE_SYMBOLS` (older `.env` files); "
       "ignored once `CQT_SYMBOLS` or `CQT_BINANCE_SYMBOLS` is set", default_doc="unset"),
    _V("CQT_UPBIT_CODES", None, "list", "Upbit markets, overriding the derived list; `KRW-USDT` is always added",
       default_doc="`KRW-<ASSET>` for each asset, plus `KRW-USDT`"),
    _V("COINGLASS_ENABLED", "false", "bool", "must be exactly `true` for the run plan", example="true"),
    _V("COINGLASS_API_KEY", "", "secret", "Coinglass key; never printed, logged or stored",
       example="your_key_here"),
    _V("CQT_COINGLASS_INTERVAL", "1h", "interval", "Coinglass bar interval (your plan must allow it)", example="1h"),
    _V("CQT_COINGLASS_DELAY_S", "60", "int", "seconds after a Coinglass bar closes before features may use it",
       0, DAY_S),
    _V("CQT_REPORT", "reports/step-alt-5.md", "path", "the run report", example="reports/step-alt-5.md"),
    _V("CQT_DATASET_DIR", "data/datasets", "path", "where the nightly job writes Parquet files",
       example="data/datasets"),
    _V("CQT_LOG_LEVEL", "INFO", "level", "`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`", example="INFO"),
    _V("CQT_BACKFILL_S", "900", "int", "on a first start with an empty database, backfill this many seconds",
       0, 30 * DAY_S),
    _V("CQT_BOOKTICKER_MIN_MS", "100", "int", "keep at most one Binance bookTicker per this many ms per symbol",
       0, 60_000),
    _V("CQT_LABEL_MAX_DELAY_S", "5", "int", "export: accept a label bar up to this long after t0 + horizon", 0, 3600),
    _V("CQT_KEEP_DAYS", "14", "int", "retention of raw rows (only after they were exported)", 1, 3650),
    _V("CQT_HEARTBEAT_S", "10", "float", "seconds between heartbeat rows", 0.1, 3600),
)

# Read from the process environment before anything else (it names the .env file).
ENV_FILE = _V("CQT_ENV_FILE", None, "path", "the settings file", default_doc="`.env` in the toolkit root",
              in_env_file=False)

TABLE: tuple[Var, ...] = VARIABLES + (ENV_FILE,)
