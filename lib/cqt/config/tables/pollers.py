"""Pollers (REST): the Binance and Coinglass pollers."""
from __future__ import annotations

from functools import partial

from ..var import Var

_V = partial(Var, component="pollers")

TABLE: tuple[Var, ...] = (
    _V("CQT_POLL_OI_S", "10", "float", "seconds between open-interest polls", 1.0),
    _V("CQT_POLL_RATIOS_S", "60", "float",
       "seconds between polls of each of the four 5-minute ratio series (must keep `/futures/data` under 80 % of "
       "its limit for one symbol; more symbols stretch it)", 1.0),
    _V("CQT_POLL_PREMIUM_S", "60", "float", "seconds between premium-index polls", 1.0),
    _V("CQT_POLL_FUNDING_S", "600", "float", "seconds between funding-history polls", 1.0),
    _V("CQT_POLL_RATIO_REFETCH", "3", "int", "5-minute periods re-fetched (and revised) on every ratio poll", 1),
    _V("CQT_POLL_TIMEOUT_S", "10", "float", "HTTP timeout of one request, both pollers", 0.1),
    _V("CQT_BINANCE_DATA_LIMIT", "900", "int", "our cap on `/futures/data/*` requests per 5 min (server limit 1 000)",
       10),
    _V("CQT_BINANCE_FUNDING_LIMIT", "450", "int",
       "our cap on `/fapi/v1/fundingRate` requests per 5 min (server limit 500, shared with fundingInfo)", 5),
    _V("CQT_POLL_COINGLASS_S", "60", "float",
       "seconds between polls of each Coinglass endpoint and coin (stretched when the coins need more than 80 % of "
       "`CQT_COINGLASS_RATE_PER_MIN`)", 1.0),
    _V("CQT_COINGLASS_EXCHANGES", "Binance,OKX,Bybit", "str", "`exchange_list` of the aggregated liquidation endpoint"),
    _V("CQT_COINGLASS_EXCHANGE", "Binance", "str", "exchange of the pair endpoints (funding, long/short)"),
    _V("CQT_COINGLASS_SYMBOL", "", "str",
       "legacy single-coin form: the coin of the aggregated endpoints, honoured only while `CQT_SYMBOLS` names one "
       "asset (with several: exit 78)", default_doc="each asset of `CQT_SYMBOLS` is its own coin"),
    _V("CQT_COINGLASS_PLAN", "", "str",
       "`hobbyist`, `startup`, `standard` or `professional`: checks the interval and request rate against the plan "
       "at start (exit 78 naming the limit)", default_doc="(unset)"),
    _V("CQT_COINGLASS_RATE_PER_MIN", None, "int", "Coinglass requests per minute the poller allows itself", 1,
       default_doc="plan limit, else 30"),
)
