"""Three assets end to end against a real cqt-sim: both collectors store every asset's
trades, and cqt-aggregate writes market_1s and predictions rows for each asset, each from
its own market (its own price level, its own Binance perpetual)."""
from __future__ import annotations

import pytest

from helpers import query, run_bin
from simproc import start_tls_sim as start_sim  # over TLS
from test_collect_support import (
    collector_env,
    collectors,  # noqa: F401 - a pytest fixture, requested by name
    no_traceback,
    read_log,
    stop,
    wait_rows,
)

ASSETS = ("BTC", "ETH", "SOL")


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_three_assets_collected_and_aggregated_each_from_its_own_market(tmp_path, collectors):  # noqa: F811
    db = tmp_path / "cqt.db"
    with start_sim(tmp_path, "--seed", "29", "--history", "120", "--symbols", ",".join(ASSETS)) as sim:
        env = collector_env(tmp_path, sim, CQT_SYMBOLS=",".join(ASSETS), CQT_BACKFILL_S=60)
        procs = [collectors("cqt-collect-binance", env), collectors("cqt-collect-upbit", env)]
        for a in ASSETS:
            wait_rows(db, "binance_agg_trades", 20, where=f"WHERE symbol='{a}USDT'", timeout=40)
            wait_rows(db, "binance_mark_price", 10, where=f"WHERE symbol='{a}USDT'", timeout=40)
            wait_rows(db, "upbit_trades", 10, where=f"WHERE code='KRW-{a}'", timeout=40)
            wait_rows(db, "upbit_orderbook", 10, where=f"WHERE code='KRW-{a}'", timeout=40)
        wait_rows(db, "upbit_trades", 1, where="WHERE code='KRW-USDT'", timeout=40)
        for p, log in procs:
            assert p.poll() is None, read_log(log)[-3000:]
            rc, _ = stop(p)
            assert rc == 0, read_log(log)[-3000:]
            no_traceback(read_log(log))

    # the seconds every asset's Upbit and Binance trades cover
    lo = max(query(db, "SELECT MIN(trade_ts_ms) FROM upbit_trades WHERE code = ?", (f"KRW-{a}",))[0][0]
             for a in ASSETS)
    hi = min(query(db, "SELECT MAX(trade_ts_ms) FROM upbit_trades WHERE code = ?", (f"KRW-{a}",))[0][0]
             for a in ASSETS)
    lo, hi = (lo // 1000 + 1) * 1000, (hi // 1000) * 1000
    assert hi - lo >= 20_000, (lo, hi)
    r = run_bin("cqt-aggregate", "--rebuild", "--from", str(lo), "--to", str(hi), env=env, timeout=90)
    assert r.returncode == 0, r.stderr[-3000:]

    closes = {}
    for a in ASSETS:
        n_bars, n_pred = (query(db, f"SELECT COUNT(*) FROM {t} WHERE symbol = ? AND ts_ms BETWEEN ? AND ?",
                                (a, lo, hi))[0][0] for t in ("market_1s", "predictions"))
        assert n_bars >= (hi - lo) // 1000 and n_pred >= (hi - lo) // 1000, (a, n_bars, n_pred)
        close, bn_last, kimchi = query(
            db, "SELECT AVG(close), AVG(binance_last), AVG(ABS(kimchi_premium)) FROM market_1s "
                "WHERE symbol = ? AND ts_ms BETWEEN ? AND ?", (a, lo, hi))[0]
        # the asset's own market: its KRW close near its own Upbit trades, its Binance price near
        # its own perpetual's, and so a small kimchi premium (another asset's price would make it huge)
        up = query(db, "SELECT AVG(price) FROM upbit_trades WHERE code = ? AND trade_ts_ms BETWEEN ? AND ?",
                   (f"KRW-{a}", lo, hi))[0][0]
        bn = query(db, "SELECT AVG(price) FROM binance_agg_trades WHERE symbol = ? AND trade_ts_ms BETWEEN ? AND ?",
                   (f"{a}USDT", lo, hi))[0][0]
        assert abs(close / up - 1) < 0.02 and abs(bn_last / bn - 1) < 0.02, (a, close, up, bn_last, bn)
        assert kimchi < 0.2, (a, kimchi)
        closes[a] = close
        filled = query(db, "SELECT COUNT(ret_1s), COUNT(kimchi_premium), COUNT(bn_ret_1s) FROM predictions "
                           "WHERE symbol = ? AND ts_ms BETWEEN ? AND ?", (a, lo + 10_000, hi))[0]
        assert min(filled) > 0, (a, filled)
    assert closes["BTC"] > closes["ETH"] > closes["SOL"], closes
