"""Every number and time has bounds: settings (finite, min, max), URL/path/.env errors, time options,
and `cqt-aggregate --rebuild` cut to the data's own range, refused beyond a bound, 74 on a bad disk."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from cqt.aggregate.rebuilds import clamp_to_data, data_range
from cqt.clicktypes import TIME
from cqt.config import (
    MAX_EXACT_INT,
    TEN_YEARS_S,
    VARIABLES,
    ConfigError,
    default_maximum,
    load_settings,
    parse_env_file,
)
from cqt.features import FeatureParams
from cqt.timeutil import MAX_TIME_MS, MIN_TIME_MS, parse_time_ms
from fixtures_raw import make_raw_db
from helpers import cqt_env, query, run_bin, tmpfs

S = 1_700_000_000_000          # 2023-11-14T22:13:20Z: the raw fixture's first second
DATA_S = 600
NUMERIC = [v for v in VARIABLES if v.kind in ("int", "float")]
# Every network setting points at a closed local port: nothing here may reach the internet.
OFFLINE = {"CQT_UPBIT_WS_URL": "ws://127.0.0.1:9", "CQT_UPBIT_REST_URL": "http://127.0.0.1:9",
           "CQT_BINANCE_WS_URL": "ws://127.0.0.1:9", "CQT_BINANCE_REST_URL": "http://127.0.0.1:9",
           "CQT_COINGLASS_URL": "http://127.0.0.1:9"}
PROP = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return cqt_env(tmp_path, **{**OFFLINE, **extra})


def assert_one_line(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], (n, lines[0])


def assert_usage_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """click's usage error: exit 2, no traceback, exactly one `Error:` line naming the problem."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, r.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])


def load(tmp_path: Path, **env: str):
    return load_settings({"CQT_ENV_FILE": str(tmp_path / "none.env"), **env})


# ------------------------------------------------------------------------------ number settings
def test_every_numeric_variable_declares_both_bounds():
    for v in NUMERIC:
        assert v.minimum is not None and v.maximum is not None, v.name
        assert v.minimum <= float(v.default) <= v.maximum, v.name


@pytest.mark.parametrize("var", [v.name for v in NUMERIC])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "1e999", "-1e999", "99999999999999999999"])
def test_numeric_variable_refuses_non_finite_and_huge(tmp_path, var, value):
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, **{var: value})
    assert ei.value.var == var and var in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("var", [v.name for v in NUMERIC])
def test_numeric_variable_maximum_is_inclusive(tmp_path, var):
    v = next(x for x in NUMERIC if x.name == var)
    top = int(v.maximum) if v.kind == "int" else v.maximum
    load(tmp_path, **{var: str(top)})
    with pytest.raises(ConfigError, match="above the maximum"):
        load(tmp_path, **{var: str(top + 1)})


def test_get_int_get_float_maximum_and_default_ceiling(tmp_path):
    s = load(tmp_path, CQT_POLL_OI_S="inf", CQT_WS_CONNECT_TIMEOUT_S="1e999", CQT_X_S="315360001",
             CQT_X_MS="315360000001", CQT_X_COUNT=str(2 ** 53 + 1), CQT_Y_S="50", CQT_Z_S="-nan")
    for name in ("CQT_POLL_OI_S", "CQT_WS_CONNECT_TIMEOUT_S", "CQT_Z_S"):
        with pytest.raises(ConfigError, match="not a finite number") as ei:
            s.get_float(name, 10.0, 1.0)
        assert ei.value.var == name
    with pytest.raises(ConfigError, match="above the maximum 315360000"):
        s.get_float("CQT_X_S", 1.0)
    with pytest.raises(ConfigError, match="above the maximum 315360000000"):
        s.get_int("CQT_X_MS", 1)
    with pytest.raises(ConfigError, match=f"above the maximum {2 ** 53}"):
        s.get_int("CQT_X_COUNT", 1)
    assert s.get_float("CQT_Y_S", 1.0, 0.0, maximum=50) == 50.0
    with pytest.raises(ConfigError, match="above the maximum 49"):
        s.get_int("CQT_Y_S", 1, 0, maximum=49)
    with pytest.raises(ConfigError, match="below the minimum 60"):
        s.get_int("CQT_Y_S", 1, 60)
    assert s.get_float("CQT_UNSET_S", 7.5, maximum=1.0) == 7.5     # the default is the caller's own
    assert default_maximum("CQT_A_S", "float") == TEN_YEARS_S
    assert default_maximum("CQT_A_MS", "int") == TEN_YEARS_S * 1000
    assert default_maximum("CQT_A_LIMIT", "int") == MAX_EXACT_INT


@pytest.mark.parametrize("program,var,value", [
    ("cqt-collect-binance", "CQT_BACKFILL_S", "99999999999999999999"),   # was an OverflowError in the writer
    ("cqt-collect-binance", "CQT_HEARTBEAT_S", "inf"),                   # killed the heartbeat thread
    ("cqt-collect-binance", "CQT_WS_CONNECT_TIMEOUT_S", "inf"),          # never connected, ERROR storm
    ("cqt-collect-upbit", "CQT_BACKFILL_S", "1e999"),
    ("cqt-poll-binance", "CQT_POLL_OI_S", "inf"),                        # was exit 1, restarted forever
    ("cqt-aggregate", "CQT_AGGREGATE_GRACE_S", "nan"),
])
def test_service_refuses_unbounded_setting_78(tmp_path, program, var, value):
    r = run_bin(program, env=env_for(tmp_path, **{var: value}), timeout=60)
    assert_one_line(r, 78, var)


# ------------------------------------------------------------------------------ URL, path, .env
@pytest.mark.parametrize("value,why", [
    ("ws://[::1", "Invalid IPv6"), ("ws://127.0.0.1:99999", "out of range"), ("ws://127.0.0.1:abc", "Port"),
    ("ws://:9000", "not a ws/wss URL"), ("ws://127.0.0.1:0", "port 0"), ("ws://a b", "white space")])
def test_bad_url_names_variable(tmp_path, value, why):
    with pytest.raises(ConfigError, match=why) as ei:
        load(tmp_path, CQT_BINANCE_WS_URL=value)
    assert ei.value.var == "CQT_BINANCE_WS_URL"
    assert load(tmp_path, CQT_BINANCE_WS_URL="ws://[::1]:9000/").binance_ws_url == "ws://[::1]:9000"


@pytest.mark.parametrize("var", ["CQT_DB", "CQT_REPORT", "CQT_DATASET_DIR"])
@pytest.mark.parametrize("value,why", [
    ("a\x00b.db", "NUL byte"), ("/" + "a" * 100_000, "bytes long"), ("/tmp/" + "b" * 256 + "/x.db", "component"),
    ("/tmp/\ud800.db", "cannot be encoded")])
def test_unusable_path_names_variable(tmp_path, var, value, why):
    with pytest.raises(ConfigError, match=why) as ei:
        load(tmp_path, **{var: value})
    assert ei.value.var == var and len(str(ei.value)) < 200


def test_env_file_invalid_utf8_names_file_and_line(tmp_path):
    f = tmp_path / "site.env"
    f.write_bytes(b"# ok\nCQT_LOG_LEVEL=INFO\nCQT_DB=caf\xe9.db\n")
    with pytest.raises(ConfigError, match="not valid UTF-8") as ei:
        load_settings({"CQT_ENV_FILE": str(f)})
    assert ei.value.var == "site.env line 3"
    f.write_bytes(b"\xef\xbb\xbfCQT_LOG_LEVEL=DEBUG\n")          # a UTF-8 BOM (Windows editors) is fine
    assert load_settings({"CQT_ENV_FILE": str(f)}).log_level == "DEBUG"
    f.write_bytes(b"CQT_DB=a\x00b.db\n")
    with pytest.raises(ConfigError, match="NUL byte"):
        load_settings({"CQT_ENV_FILE": str(f)})
    with pytest.raises(ConfigError, match="not a usable path") as ei:
        load_settings({"CQT_ENV_FILE": str(f) + "\x00"})
    assert ei.value.var == "CQT_ENV_FILE"


def test_env_file_read_is_capped(tmp_path):
    with pytest.raises(ConfigError, match="larger than"):
        load_settings({"CQT_ENV_FILE": "/dev/zero"})            # an endless file: refused, not read to the end
    assert load_settings({"CQT_ENV_FILE": "/dev/null"}).log_level == "INFO"


PROGRAMS = [("cqt-collect-binance", ()), ("cqt-aggregate", ()), ("altdata_check", ()),
            ("cqt-export", ("--output", "OUT"))]


@pytest.mark.parametrize("program,args", PROGRAMS)
@pytest.mark.parametrize("case", ["url", "port", "utf8", "nul", "long"])
def test_bad_setting_is_one_line_78_from_programs(tmp_path, program, args, case):
    env_file = tmp_path / "test.env"
    extra, needle = {}, ""
    if case == "url":
        extra, needle = {"CQT_BINANCE_WS_URL": "ws://[::1"}, "CQT_BINANCE_WS_URL"
    elif case == "port":
        extra, needle = {"CQT_BINANCE_REST_URL": "http://127.0.0.1:99999"}, "CQT_BINANCE_REST_URL"
    elif case == "utf8":
        env_file.write_bytes(b"CQT_LOG_LEVEL=INFO\nCQT_SYMBOL_NOTE=\xff\xfe\n")
        needle = "test.env line 2"
    elif case == "nul":                                    # the environment cannot carry a NUL; .env can
        env_file.write_bytes(b"CQT_DB=" + str(tmp_path).encode() + b"/a\x00b.db\n")
        needle = "NUL byte"
    else:
        extra, needle = {"CQT_DB": "/" + "d" * 100_000}, "CQT_DB"
    env = env_for(tmp_path, **extra)
    if case == "nul":
        env.pop("CQT_DB")
    argv = [str(tmp_path / "x.parquet") if a == "OUT" else a for a in args]
    r = run_bin(program, *argv, env=env, timeout=60)
    assert_one_line(r, 78, needle)


# ------------------------------------------------------------------------------ time options
@pytest.mark.parametrize("text", ["99999999999999999", "1970-01-01", "2100-01-01", "2100-01-01T00:00:00Z",
                                  "2008-12-31T23:59:59.999Z", "-99999999999", "1e18", "nan", "NaN", "inf", "-1",
                                  "9" * 5000, "yesterday", "", "2026-13-01", "0001-01-01T00:00+01:00"])
def test_time_refuses_out_of_range_and_garbage(text):
    with pytest.raises(click.BadParameter) as ei:
        TIME.convert(text, None, None)
    assert "\n" not in str(ei.value.message) and len(ei.value.message) < 200


def test_time_accepts_the_range_edges():
    assert TIME.convert("2009-01-01", None, None) == MIN_TIME_MS == 1_230_768_000_000
    assert TIME.convert("2099-12-31T23:59:59.999Z", None, None) == MAX_TIME_MS - 1
    assert TIME.convert(str(S), None, None) == S and TIME.convert(S, None, None) == S
    assert TIME.convert("2023-11-14T22:13:20+00:00", None, None) == S
    for bad in (float("nan"), float("inf"), -1, MAX_TIME_MS, 10 ** 30):
        with pytest.raises(click.BadParameter):
            TIME.convert(bad, None, None)


@PROP
@given(st.one_of(st.text(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                 st.from_regex(r"\A-?[0-9]{1,40}\Z"), st.datetimes().map(lambda d: d.isoformat()),
                 st.datetimes().map(lambda d: d.isoformat() + "Z"), st.from_regex(r"\A[0-9T:.+\-Z ]{0,40}\Z")))
def test_time_property_int_in_range_or_bad_parameter(value):
    try:
        ms = TIME.convert(value, None, None)
    except click.BadParameter:
        return
    assert isinstance(ms, int) and MIN_TIME_MS <= ms < MAX_TIME_MS


def test_parse_time_ms_has_the_same_bounds():
    with pytest.raises(ValueError, match="accepted range"):
        parse_time_ms("1970-01-01")
    assert parse_time_ms("2026-01-01") == 1_767_225_600_000


@pytest.mark.parametrize("program,args", [
    ("altdata_check", ("--as-of", "99999999999999999")), ("coinglass_check", ("--as-of", "99999999999999999")),
    ("feature_check", ("--as-of", "99999999999999999")), ("feature_leak_check", ("--as-of", "99999999999999999")),
    ("run_pipeline_checks.sh", ("--as-of", "99999999999999999")),
    ("cqt-export", ("--output", "OUT", "--to", "99999999999999999")),
    ("cqt-export", ("--output", "OUT", "--from", "nan")),
    ("cqt-aggregate", ("--rebuild", "--from", "2023-01-01", "--to", "99999999999999999")),
    ("cqt-aggregate", ("--rebuild", "--from", "1970-01-01", "--to", "2024-01-01")),
    ("cqt-aggregate", ("--rebuild", "--from", "2100-01-01", "--to", "2100-01-02")),
    ("cqt-aggregate", ("--rebuild", "--from", "-5", "--to", "inf")),
])
def test_time_option_out_of_range_exit_2(tmp_path, program, args):
    argv = [str(tmp_path / "x.parquet") if a == "OUT" else a for a in args]
    r = run_bin(program, *argv, env=env_for(tmp_path), timeout=60)
    assert_usage_error(r)
    assert not (tmp_path / "cqt.db").exists() or query(tmp_path / "cqt.db", "SELECT COUNT(*) FROM market_1s")[0][0] == 0


# ------------------------------------------------------------------------------ --rebuild
@pytest.fixture(scope="module")
def db_template(tmp_path_factory):
    """The raw tables the --rebuild tests start from (`db` is a copy: conftest.py)."""
    path = tmp_path_factory.mktemp("bounds") / "raw.db"
    make_raw_db(path, S, DATA_S, seed=5)
    return path


def first_last_stream_bar(path: Path) -> tuple[int, int]:
    lo = hi = None
    for table, col in (("upbit_trades", "trade_ts_ms"), ("upbit_orderbook", "ts_ms"),
                       ("binance_agg_trades", "trade_ts_ms"), ("binance_mark_price", "event_ts_ms"),
                       ("binance_liquidations", "event_ts_ms")):
        a, b = query(path, f"SELECT MIN({col}), MAX({col}) FROM {table}")[0]
        if a is not None:
            lo, hi = (a if lo is None else min(lo, a)), (b if hi is None else max(hi, b))
    return -(-lo // 1000) * 1000, -(-hi // 1000) * 1000


def test_rebuild_is_cut_to_the_data_range(db, tmp_path):
    lo, hi = first_last_stream_bar(db)
    r = run_bin("cqt-aggregate", "--rebuild", "--from", "2009-01-01", "--to", "2099-12-31", "--json",
                "--db", db, env=env_for(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "rebuild range cut to the data" in r.stderr and "Traceback" not in r.stderr
    out = json.loads(r.stdout)
    assert (out["from_ms"], out["to_ms"]) == (lo, hi) and out["seconds"] == (hi - lo) // 1000 + 1 <= DATA_S + 2
    a, b, n = query(db, "SELECT MIN(ts_ms), MAX(ts_ms), COUNT(*) FROM market_1s")[0]
    assert (a, b, n) == (lo, hi, out["seconds"])          # no empty bars before the data, none after it


def test_rebuild_without_data_in_range_writes_nothing(db, tmp_path):
    r = run_bin("cqt-aggregate", "--rebuild", "--from", "2024-06-01", "--to", "2099-12-31", "--json",
                "--db", db, env=env_for(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "nothing to rebuild" in r.stderr and json.loads(r.stdout)["seconds"] == 0
    assert query(db, "SELECT COUNT(*) FROM market_1s")[0][0] == 0


def test_rebuild_refuses_a_span_beyond_the_bound(db, tmp_path):
    # one stray trade years before the rest: cut to the data, the span is still ~12 years
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO upbit_trades VALUES ('KRW-BTC', 1, ?, 1.0, 1.0, 'buy', ?)",
                 (1_300_000_000_000, 1_300_000_000_000))
    conn.commit()
    conn.close()
    r = run_bin("cqt-aggregate", "--rebuild", "--from", "2009-01-01", "--to", "2099-12-31",
                "--db", db, env=env_for(tmp_path, CQT_LOG_LEVEL="WARNING"), timeout=60)
    assert_one_line(r, 2, "CQT_AGGREGATE_MAX_REBUILD_S=34560000")
    assert query(db, "SELECT COUNT(*) FROM market_1s")[0][0] == 0
    # the bound is a setting
    r = run_bin("cqt-aggregate", "--rebuild", "--from", str(S), "--to", str(S + 200_000), "--db", db,
                env=env_for(tmp_path, CQT_LOG_LEVEL="WARNING", CQT_AGGREGATE_MAX_REBUILD_S="100"), timeout=60)
    assert_one_line(r, 2, "CQT_AGGREGATE_MAX_REBUILD_S=100")
    r = run_bin("cqt-aggregate", "--rebuild", "--from", str(S), "--to", str(S + 200_000), "--db", db,
                env=env_for(tmp_path, CQT_AGGREGATE_MAX_REBUILD_S="inf"), timeout=60)
    assert_one_line(r, 78, "CQT_AGGREGATE_MAX_REBUILD_S")


def test_clamp_never_writes_future_bars(db):
    conn = sqlite3.connect(db)
    future = S + 86_400_000
    conn.execute("INSERT INTO binance_agg_trades (symbol, agg_id, trade_ts_ms, price, qty, side, first_trade_id, "
                 "last_trade_id, event_ts_ms, recv_ts_ms) VALUES ('BTCUSDT', ?, ?, 1.0, 1.0, 'buy', 1, 1, ?, ?)",
                 (10 ** 12, future, future, future))
    conn.commit()
    p = FeatureParams()
    lo, hi = data_range(conn, p)
    assert hi == future
    now = S + DATA_S * 1000 + 30_500                              # an injected clock, before the stray row
    assert clamp_to_data(conn, S - 10**9, future + 10**9, p, now) == (lo, S + DATA_S * 1000 + 30_000)
    assert clamp_to_data(conn, S - 10**9, S - 10**6, p, now) is None           # before the data
    assert clamp_to_data(conn, now + 5_000, future, p, now) is None            # after the last complete second
    conn.close()


# ------------------------------------------------------------------------------ --rebuild on a bad disk
def test_rebuild_on_read_only_disk_exits_74(db_template, tmp_path):
    with tmpfs(tmp_path / "ro", "32m") as mnt:
        shutil.copy(db_template, mnt / "cqt.db")
        r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
        r = run_bin("cqt-aggregate", "--rebuild", "--from", str(S), "--to", str(S + DATA_S * 1000),
                    "--db", mnt / "cqt.db", env=env_for(tmp_path), timeout=60)
        assert_one_line(r, 74, "rebuild failed")


def test_rebuild_on_full_disk_exits_74_not_cannot_rollback(db_template, tmp_path):
    with tmpfs(tmp_path / "full", "8m") as mnt:
        db = mnt / "cqt.db"
        shutil.copy(db_template, db)
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)   # fill the disk, then free 64 KiB
        try:
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 65536)
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - 65536))
        finally:
            os.close(fd)
        r = run_bin("cqt-aggregate", "--rebuild", "--from", str(S), "--to", str(S + DATA_S * 1000),
                    "--db", db, env=env_for(tmp_path, CQT_LOG_LEVEL="WARNING"), timeout=60)
        assert "cannot rollback" not in r.stderr
        assert_one_line(r, 74, "rebuild failed")


# ------------------------------------------------------------------------------ properties
@PROP
@given(st.binary(max_size=400) | st.lists(st.text(max_size=30), max_size=8).map(lambda ls: "\n".join(ls).encode()))
def test_env_parser_property_dict_or_config_error(tmp_path, data):
    f = tmp_path / "fuzz.env"
    f.write_bytes(data)
    try:
        values = parse_env_file(f)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(values, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in values.items())


VALUES = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), max_size=3),  # os.environ escapes
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10 ** 30), max_value=10 ** 30).map(str),
    st.sampled_from(["inf", "-inf", "nan", "1e999", "ws://[::1", "ws://h:99999", "http://h:abc", "true", "1h",
                     "DEBUG", "wss://x", "https://x", "KRW-BTC", "\x00", " ", "0", "-0", "1e-400"]),
)


@PROP
@given(var=st.sampled_from(VARIABLES), value=VALUES)
def test_load_settings_property_settings_or_error_naming_variable(tmp_path, var, value):
    try:
        s = load(tmp_path, **{var.name: value})
    except ConfigError as exc:
        assert exc.var == var.name, (exc.var, var.name, str(exc))
        assert "\n" not in str(exc)
        return
    if var.kind in ("int", "float"):
        got = {"CQT_COINGLASS_DELAY_S": s.coinglass_delay_s, "CQT_BACKFILL_S": s.backfill_s,
               "CQT_BOOKTICKER_MIN_MS": s.bookticker_min_ms, "CQT_LABEL_MAX_DELAY_S": s.label_max_delay_s,
               "CQT_KEEP_DAYS": s.keep_days, "CQT_HEARTBEAT_S": s.heartbeat_s}[var.name]
        assert math.isfinite(got) and var.minimum <= got <= var.maximum
