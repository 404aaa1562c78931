"""Configuration: defaults, environment over .env, bad values -> exit 78 naming the variable."""
import re

import pytest

from cqt.config import ROOT, VARIABLES, ConfigError, is_placeholder, load_settings
from helpers import cqt_env, run_bin


def test_defaults(tmp_path):
    s = load_settings({"CQT_ENV_FILE": str(tmp_path / "none.env")})
    assert s.db == ROOT / "data" / "cqt.db"
    assert s.upbit_ws_url == "wss://api.upbit.com/websocket/v1"
    assert s.upbit_rest_url == "https://api.upbit.com"
    assert s.binance_ws_url == "wss://fstream.binance.com"
    assert s.binance_rest_url == "https://fapi.binance.com"
    assert s.coinglass_url == "https://open-api-v4.coinglass.com"
    assert s.assets == ("BTC",)
    assert s.upbit_codes == ("KRW-BTC", "KRW-USDT")
    assert s.binance_symbols == ("BTCUSDT",)
    assert s.coinglass_enabled is False and s.coinglass_api_key == ""
    assert s.report == ROOT / "reports" / "step-alt-5.md"
    assert s.dataset_dir == ROOT / "data" / "datasets"
    assert s.log_level == "INFO"


def test_environment_beats_env_file(tmp_path):
    f = tmp_path / ".env"
    f.write_text("CQT_LOG_LEVEL=DEBUG\nCQT_BINANCE_SYMBOL=ETHUSDT\n# comment\n\nCQT_DB=x/y.db\n")
    s = load_settings({"CQT_ENV_FILE": str(f), "CQT_LOG_LEVEL": "WARNING"})
    assert s.log_level == "WARNING"            # environment wins
    assert s.binance_symbols == ("ETHUSDT",)   # .env used when the environment is silent
    assert s.db == ROOT / "x" / "y.db"         # relative to the toolkit root, not the cwd
    assert s.source["CQT_LOG_LEVEL"] == "environment" and s.source["CQT_BINANCE_SYMBOL"] == ".env"


@pytest.mark.parametrize("line", ['export CQT_DB=a.db', 'CQT_DB="a.db"', "CQT_DB='a.db'", "CQT_DB=${HOME}/a.db",
                                  "garbage"])
def test_env_file_rejects_shell_syntax(tmp_path, line):
    f = tmp_path / ".env"
    f.write_text(line + "\n")
    with pytest.raises(ConfigError):
        load_settings({"CQT_ENV_FILE": str(f)})


@pytest.mark.parametrize("var,value", [
    ("CQT_UPBIT_WS_URL", "not a url"), ("CQT_BINANCE_REST_URL", "ftp://x"), ("CQT_BINANCE_WS_URL", "https://x"),
    ("CQT_LOG_LEVEL", "LOUD"), ("COINGLASS_ENABLED", "maybe"), ("CQT_BACKFILL_S", "ten"),
    ("CQT_COINGLASS_INTERVAL", "7m"), ("CQT_HEARTBEAT_S", "0"),
])
def test_bad_value_names_variable(tmp_path, var, value):
    with pytest.raises(ConfigError) as ei:
        load_settings({"CQT_ENV_FILE": str(tmp_path / "none"), var: value})
    assert ei.value.var == var and var in str(ei.value)


@pytest.mark.parametrize("program", ["cqt-collect-binance", "cqt-aggregate", "cqt-export", "altdata_check"])
def test_bad_value_exits_78_from_programs(tmp_path, program):
    env = cqt_env(tmp_path, CQT_LOG_LEVEL="LOUD")
    args = ["--output", str(tmp_path / "x.parquet")] if program == "cqt-export" else []
    r = run_bin(program, *args, env=env, timeout=60)
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert "CQT_LOG_LEVEL" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cqt_status_config_error_78(tmp_path):
    r = run_bin("cqt", "status", env=cqt_env(tmp_path, COINGLASS_ENABLED="maybe"))
    assert r.returncode == 78 and "COINGLASS_ENABLED" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("value,expected", [
    ("your_key_here", True), ("<REAL_KEY>", True), ("changeme", True), ("XXXXXXXX", True), ("TODO", True),
    ("Your_Key_Here", True), ("a1b2c3d4e5f6", False), ("3f9c2d0e8b7a41f5", False)])
def test_placeholders(value, expected):
    assert is_placeholder(value) is expected


def test_every_variable_documented():
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for v in VARIABLES:
        assert f"`{v.name}`" in readme, f"{v.name} missing from README"
    for name in re.findall(r"^([A-Z_]+)=", example, re.M):
        assert any(v.name == name for v in VARIABLES), f"{name} in .env.example is not a known variable"


def test_every_variable_read_in_code_is_in_readme():
    """Any CQT_*/COINGLASS_* name the code reads appears in the README's configuration tables."""
    readme = (ROOT / "README.md").read_text()
    # e.g. CQT_CHECK_NULL_RATE_MAX_<TABLE>_<COLUMN>
    patterns = re.findall(r"`((?:CQT|COINGLASS)_[A-Z0-9_]*)<[A-Z]+>", readme)
    missing = set()
    for f in (ROOT / "lib" / "cqt").rglob("*.py"):
        for name in re.findall(r'"((?:CQT|COINGLASS)_[A-Z0-9_]+)"', f.read_text()):
            if name.endswith("_") or name == "COINGLASS_ENDPOINTS":      # prefixes and a constant, not variables
                continue
            if f"`{name}`" not in readme and not any(name.startswith(p) for p in patterns):
                missing.add(f"{name} ({f.relative_to(ROOT)})")
    assert not missing, f"undocumented variables: {sorted(missing)}"
