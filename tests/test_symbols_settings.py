"""CQT_SYMBOLS and the per-venue symbol lists: derived by default, overridable, an older `.env`
keeps working unchanged, and a list that leaves an asset out is one line naming it (exit 78)."""
import pytest

from cqt.config import ConfigError, load_settings
from cqt.ops import gather_status
from helpers import cqt_env, run_bin


def _load(tmp_path, **env):
    return load_settings({"CQT_ENV_FILE": str(tmp_path / "none.env"), **env})


def test_derived_from_the_assets(tmp_path):
    s = _load(tmp_path, CQT_SYMBOLS=" btc, ETH,sol ,ETH")
    assert s.assets == ("BTC", "ETH", "SOL")               # upper case, order kept, duplicates dropped
    assert s.binance_symbols == ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    assert s.upbit_codes == ("KRW-BTC", "KRW-ETH", "KRW-SOL", "KRW-USDT")   # KRW-USDT always, last
    assert s.binance_symbol_of("eth") == "ETHUSDT" and s.upbit_code_of("SOL") == "KRW-SOL"
    assert s.usdt_code == "KRW-USDT"


def test_overrides_may_add_markets_but_must_cover_every_asset(tmp_path):
    s = _load(tmp_path, CQT_SYMBOLS="BTC", CQT_BINANCE_SYMBOLS="BTCUSDT,XRPUSDT", CQT_UPBIT_CODES="KRW-USDT,KRW-BTC")
    assert s.binance_symbols == ("BTCUSDT", "XRPUSDT") and s.upbit_codes == ("KRW-BTC", "KRW-USDT")
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, CQT_SYMBOLS="BTC,ETH", CQT_UPBIT_CODES="KRW-BTC")
    assert err.value.var == "CQT_UPBIT_CODES" and "KRW-ETH" in str(err.value)
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, CQT_SYMBOLS="BTC,ETH", CQT_BINANCE_SYMBOLS="BTCUSDT")
    assert err.value.var == "CQT_BINANCE_SYMBOLS" and "ETHUSDT" in str(err.value)


def test_an_older_env_file_needs_no_change(tmp_path):
    old = tmp_path / "old.env"
    old.write_text("CQT_UPBIT_CODES=KRW-BTC,KRW-USDT\nCQT_BINANCE_SYMBOL=BTCUSDT\n")
    s = load_settings({"CQT_ENV_FILE": str(old)})
    assert (s.assets, s.binance_symbols, s.upbit_codes) == (("BTC",), ("BTCUSDT",), ("KRW-BTC", "KRW-USDT"))
    # the legacy single symbol names the asset when CQT_SYMBOLS is unset ...
    s = _load(tmp_path, CQT_BINANCE_SYMBOL="ETHUSDT")
    assert (s.assets, s.binance_symbols, s.upbit_codes) == (("ETH",), ("ETHUSDT",), ("KRW-ETH", "KRW-USDT"))
    # ... and is ignored once CQT_SYMBOLS is added to the old file
    s = load_settings({"CQT_ENV_FILE": str(old), "CQT_SYMBOLS": "BTC,ETH", "CQT_UPBIT_CODES": "KRW-BTC,KRW-ETH"})
    assert s.binance_symbols == ("BTCUSDT", "ETHUSDT")


@pytest.mark.parametrize("name,value", [("CQT_SYMBOLS", "BT-C"), ("CQT_SYMBOLS", ",,"),
                                        ("CQT_BINANCE_SYMBOLS", "btc-usdt"), ("CQT_UPBIT_CODES", "KRWBTC"),
                                        ("CQT_SYMBOLS", ",".join(f"A{i}" for i in range(201)))])
def test_bad_lists_name_the_variable(tmp_path, name, value):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, **{name: value})
    assert err.value.var == name


def test_programs_exit_78_with_one_line(tmp_path):
    r = run_bin("cqt", "status", env=cqt_env(tmp_path, CQT_SYMBOLS="BTC,ETH", CQT_UPBIT_CODES="KRW-BTC"))
    assert r.returncode == 78
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "CQT_UPBIT_CODES" in lines[0] and "KRW-ETH" in lines[0], r.stderr


def test_status_and_env_check_show_every_symbol(tmp_path):
    env = cqt_env(tmp_path, CQT_SYMBOLS="BTC,ETH")
    r = run_bin("cqt", "env", "check", env=env)
    assert "BTC, ETH  (binance BTCUSDT, ETHUSDT; upbit KRW-BTC, KRW-ETH, KRW-USDT)" in r.stdout
    from cqt import db
    conn = db.open_db(tmp_path / "cqt.db")
    conn.execute("INSERT INTO binance_agg_trades VALUES ('ETHUSDT', 1, 9000, 3500.0, 1.0, 'buy', 1, 1, 9000, 9001)")
    conn.close()
    st = gather_status(tmp_path / "cqt.db", now=10_000, settings=_load(tmp_path, CQT_SYMBOLS="BTC,ETH"))
    assert st["symbols"] == [
        {"symbol": "BTC", "upbit trade": None, "binance aggTrade": None, "market_1s": None},
        {"symbol": "ETH", "upbit trade": None, "binance aggTrade": 1000, "market_1s": None}]
