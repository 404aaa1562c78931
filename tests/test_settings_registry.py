"""The settings registry: every variable the code reads is declared once; the README's tables and
`.env.example` are generated from it; call sites agree with the declarations."""
from __future__ import annotations

import ast
import math
import operator
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cqt.config import (
    BY_NAME,
    PATTERNS,
    REGISTRY,
    ROOT,
    VARIABLES,
    ConfigError,
    RegistryError,
    default_maximum,
    docs,
    load_settings,
    lookup,
    parse_env_file,
)
from cqt.config.tables import SECTIONS, TABLES

NAME_RE = re.compile(r"^(?:CQT|COINGLASS)_[A-Z0-9_]+$")
# Names of Python constants that look like variables (and are spelled out in lists of names).
NOT_VARIABLES = {"COINGLASS_ENDPOINTS", "COINGLASS_INTERVALS"}
READERS = {"get_int", "get_float", "get_str", "get_bool", "get_path"}
SCANNED = [p for top in ("lib", "bin") for p in sorted((ROOT / top).rglob("*")) if p.is_file() and (
    p.suffix == ".py" or (top == "bin" and p.read_bytes()[:2] == b"#!" and b"python" in p.read_bytes()[:80]))]

# What the README documented before the registry (name -> default as written; None: empty or computed).
# Operators' .env files rely on these: none may disappear or change its default.
DOCUMENTED = {
    'CQT_DB': 'data/cqt.db', 'CQT_UPBIT_WS_URL': 'wss://api.upbit.com/websocket/v1',
    'CQT_UPBIT_REST_URL': 'https://api.upbit.com', 'CQT_BINANCE_WS_URL': 'wss://fstream.binance.com',
    'CQT_BINANCE_REST_URL': 'https://fapi.binance.com', 'CQT_COINGLASS_URL': 'https://open-api-v4.coinglass.com',
    # CQT_UPBIT_CODES and CQT_BINANCE_SYMBOL are derived from CQT_SYMBOLS now (the same values for BTC)
    'CQT_UPBIT_CODES': None, 'CQT_BINANCE_SYMBOL': None, 'COINGLASS_ENABLED': 'false',
    'COINGLASS_API_KEY': None, 'CQT_COINGLASS_INTERVAL': '1h', 'CQT_COINGLASS_DELAY_S': '60',
    'CQT_REPORT': 'reports/step-alt-5.md', 'CQT_DATASET_DIR': 'data/datasets', 'CQT_LOG_LEVEL': 'INFO',
    'CQT_BACKFILL_S': '900', 'CQT_BOOKTICKER_MIN_MS': '100', 'CQT_LABEL_MAX_DELAY_S': '5', 'CQT_KEEP_DAYS': '14',
    'CQT_HEARTBEAT_S': '10', 'CQT_ENV_FILE': None,
    'CQT_BACKOFF_BASE_S': '1', 'CQT_BACKOFF_CAP_S': '60', 'CQT_BACKOFF_RESET_S': '60', 'CQT_WS_MAX_AGE_S': '82800',
    'CQT_WS_CONNECT_TIMEOUT_S': '10', 'CQT_WS_RECV_TIMEOUT_S': '0.5', 'CQT_STALL_AGGTRADE_S': '60',
    'CQT_STALL_MARKPRICE_S': '5', 'CQT_STALL_BOOKTICKER_S': '30', 'CQT_STALL_UPBIT_TRADE_S': '300',
    'CQT_STALL_UPBIT_ORDERBOOK_S': '30', 'CQT_GAP_MIN_MS': '3000', 'CQT_UPBIT_PING_S': '30',
    'CQT_REST_TIMEOUT_S': '10', 'CQT_UPBIT_RECONCILE_S': '180', 'CQT_UPBIT_RECONCILE_SETTLE_S': '10',
    'CQT_POLL_OI_S': '10', 'CQT_POLL_RATIOS_S': '60', 'CQT_POLL_PREMIUM_S': '60', 'CQT_POLL_FUNDING_S': '600',
    'CQT_POLL_RATIO_REFETCH': '3', 'CQT_POLL_TIMEOUT_S': '10', 'CQT_BINANCE_DATA_LIMIT': '900',
    'CQT_BINANCE_FUNDING_LIMIT': '450', 'CQT_POLL_COINGLASS_S': '60', 'CQT_COINGLASS_EXCHANGES': 'Binance,OKX,Bybit',
    'CQT_COINGLASS_EXCHANGE': 'Binance', 'CQT_COINGLASS_SYMBOL': None, 'CQT_COINGLASS_PLAN': None,
    'CQT_COINGLASS_RATE_PER_MIN': None,
    'CQT_AGGREGATE_GRACE_S': '2', 'CQT_AGGREGATE_MAX_CATCHUP_S': '21600', 'CQT_AGGREGATE_CATCHUP_STEP_S': '600',
    'CQT_AGGREGATE_CHUNK_S': '3600', 'CQT_AGGREGATE_HORIZON_S': '120', 'CQT_AGGREGATE_CARRY_S': '600',
    'CQT_AGGREGATE_USDT_CARRY_S': '3600', 'CQT_AGGREGATE_OI_CARRY_S': '300', 'CQT_AGGREGATE_LS_PERIOD': '5m',
    'CQT_AGGREGATE_CG_SYMBOL': None, 'CQT_AGGREGATE_CG_EXCHANGE': 'Binance', 'CQT_AGGREGATE_START_WAIT_S': '120',
    'CQT_AGGREGATE_LATE_WINDOW_S': '3600', 'CQT_AGGREGATE_LATE_SCAN_S': '30',
    'CQT_AGGREGATE_MAX_REBUILD_S': '34560000',
    'CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_LIQ_NOTIONAL_60S': '1.0',
    'CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_CG_OI_CHG': '0.05',
    'CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_CG_FUNDING': '0.05', 'CQT_SCHEDULE_PIPELINE_CHECKS': None,
    'CQT_SCHEDULE_NIGHTLY': None, 'CQT_CHECK_FILL_LATENCY_S': '2', 'CQT_CHECK_BINANCE_AGGTRADE_LAG_MAX_S': '10',
    'CQT_CHECK_BINANCE_AGGTRADE_FILL_MIN': '0.9', 'CQT_CHECK_BINANCE_MARKPRICE_LAG_MAX_S': '10',
    'CQT_CHECK_BINANCE_MARKPRICE_FILL_MIN': '0.98', 'CQT_CHECK_BINANCE_BOOKTICKER_LAG_MAX_S': '10',
    'CQT_CHECK_BINANCE_BOOKTICKER_FILL_MIN': '0.9', 'CQT_CHECK_BINANCE_FORCEORDER_LAG_MAX_S': '3600',
    'CQT_CHECK_UPBIT_KRWBTC_TRADE_LAG_MAX_S': '30', 'CQT_CHECK_UPBIT_KRWBTC_TRADE_FILL_MIN': '0.5',
    'CQT_CHECK_UPBIT_KRWBTC_ORDERBOOK_LAG_MAX_S': '10', 'CQT_CHECK_UPBIT_KRWBTC_ORDERBOOK_FILL_MIN': '0.9',
    'CQT_CHECK_UPBIT_KRWUSDT_TRADE_LAG_MAX_S': '900', 'CQT_CHECK_REST_LAG_FACTOR': '2',
    'CQT_CHECK_REST_FILL_MIN': '0.9', 'CQT_CHECK_SKEW_MAX_S': '2', 'CQT_CHECK_REJECT_RATIO_MAX': '0.02',
    'CQT_CHECK_OPEN_GAPS_MAX': '0', 'CQT_CHECK_GAP_GRACE_S': '120', 'CQT_CHECK_FEATURE_LATENCY_S': '5',
    'CQT_CHECK_FEATURE_LAG_MAX_S': '10', 'CQT_CHECK_COVERAGE_MIN': '0.98', 'CQT_CHECK_NULL_RATE_MAX': '0.01',
    'CQT_CHECK_KIMCHI_ABS_MAX': '0.2', 'CQT_CHECK_FUNDING_ABS_MAX': '0.03', 'CQT_CHECK_LEAK_SAMPLES': '50',
    'CQT_CHECK_LEAK_TOLERANCE': '1e-9', 'CQT_CHECK_LEAK_WARMUP_SHORT': '1', 'CQT_CHECK_LEAK_WARMUP_LONG': '3',
    'CQT_CHECK_COINGLASS_MIN_OK_CALLS': '1', 'CQT_CHECK_COINGLASS_OK_AGE_MAX_S': '600',
    'CQT_CHECK_COINGLASS_ERROR_RATIO_MAX': '0.1', 'CQT_CHECK_NULL_RATE_MAX_<TABLE>_<COLUMN>': None,
    'CQT_CHECK_LEAK_BUDGET_S': '30', 'CQT_CHECK_BOOK_FROZEN_S': '120', 'CQT_CHECK_BOOK_MOVE_BPS': '10',
    'CQT_CHECK_LABEL_MIN_SHARE': '0.05', 'CQT_CHECK_INTEGRITY_BUDGET_S': '60',
    'CQT_EXPORT_MAX_AGE_UPBIT_TRADE_S': '60', 'CQT_EXPORT_MAX_AGE_UPBIT_BOOK_S': '10',
    'CQT_EXPORT_MAX_AGE_BINANCE_S': '10', 'CQT_EXPORT_MAX_AGE_MARK_S': '10', 'CQT_EXPORT_MAX_AGE_USDT_KRW_S': '600',
    'CQT_EXPORT_HORIZON_S': '120', 'CQT_EXPORT_ALLOW_MISSING': None, 'CQT_EXPORT_TEST_STALL_S': '0',
    'CQT_REPORT_JOURNAL': 'auto', 'CQT_NIGHTLY_CHECKS_CMD': None, 'CQT_NIGHTLY_CHECK_TIMEOUT_S': '900',
    'CQT_CAPTURE_DIR': 'data/captures',
}


def _same(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


# ------------------------------------------------------------------------------ the declarations
def test_documented_variables_keep_name_and_default():
    for name, default in DOCUMENTED.items():
        var = BY_NAME.get(name)
        assert var is not None, f"{name} was documented and is no longer declared"
        if default is None:
            assert var.default in (None, ""), (name, var.default)
        else:
            assert var.default is not None and _same(var.default, default), (name, var.default, default)


def test_declarations_are_sane():
    assert len({v.name for v in REGISTRY}) == len(REGISTRY)
    assert {c for _t, _k, comps in SECTIONS for c in comps} == set(TABLES)
    for v in REGISTRY:
        assert v.help.strip() and "\n" not in v.help, v.name
        assert v.component in TABLES, v.name
        if v.kind in ("int", "float"):
            top = v.maximum if v.maximum is not None else default_maximum(v.name, v.kind)
            assert v.minimum is None or v.minimum <= top, v.name
            if v.default:
                num = float(v.default)
                assert math.isfinite(num) and (v.minimum is None or v.minimum <= num <= top), v.name
                if v.kind == "int":
                    assert str(int(v.default)) == v.default, v.name
        if v.kind == "bool" and v.default:
            assert v.default in ("true", "false"), v.name
    assert [v.name for v in VARIABLES] == [v.name for v in TABLES["core"] if v.name != "CQT_ENV_FILE"]


def test_every_declared_default_loads(tmp_path):
    """Every declaration read with no value set gives its declared default, typed."""
    s = load_settings({"CQT_ENV_FILE": str(tmp_path / "none.env")})
    for v in REGISTRY:
        if v.is_pattern or v.default is None:
            continue
        got = s.get(v.name)
        if v.kind in ("int", "float"):
            assert got == float(v.default), v.name
        elif v.kind == "path":
            assert got == ROOT / v.default, v.name


def test_thresholds_table_agrees_with_registry():
    """checks/thresholds.py still keeps its own table: it must say exactly what the registry says."""
    from cqt.checks import thresholds
    for t in thresholds.THRESHOLDS:
        v = BY_NAME.get(t.env)
        assert v is not None and v.component == "checks", t.env
        assert float(v.default) == float(t.default) and v.minimum == t.minimum and v.help == t.help, t.env
    for key, default in thresholds.NULL_RATE_DEFAULTS.items():
        v = BY_NAME.get(thresholds.null_rate_env(*key.split(".")))
        assert v is not None and float(v.default) == default, key
    assert lookup(thresholds.null_rate_env("predictions", "rv_300s")).is_pattern


# ------------------------------------------------------------------------------ reading through Settings
def test_get_takes_default_and_bounds_from_the_declaration(tmp_path):
    s = load_settings({"CQT_ENV_FILE": str(tmp_path / "none.env"), "CQT_UPBIT_RECONCILE_S": "90000",
                       "CQT_AGGREGATE_GRACE_S": "3601", "CQT_POLL_OI_S": "0.5"})
    assert s.get_float("CQT_POLL_RATIOS_S") == 60.0 and s.get_int("CQT_GAP_MIN_MS") == 3000
    assert s.get_str("CQT_COINGLASS_EXCHANGE") == "Binance" and s.get_path("CQT_CAPTURE_DIR") == ROOT / "data/captures"
    with pytest.raises(ConfigError, match="above the maximum 86400") as ei:
        s.get_float("CQT_UPBIT_RECONCILE_S")
    assert ei.value.var == "CQT_UPBIT_RECONCILE_S"
    # a caller's looser bounds do not widen the declared ones
    with pytest.raises(ConfigError, match="above the maximum 3600"):
        s.get_float("CQT_AGGREGATE_GRACE_S", 2.0, 0.0)
    with pytest.raises(ConfigError, match="below the minimum 1"):
        s.get_float("CQT_POLL_OI_S", 10.0, 0.001)
    # a family: the caller computes the default, the declaration gives the bounds
    assert s.get_float("CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_RV_300S", 0.25) == 0.25


def test_get_refuses_a_default_other_than_the_declared_one(tmp_path):
    s = load_settings({"CQT_ENV_FILE": str(tmp_path / "none.env")})
    for call in (lambda: s.get_float("CQT_POLL_OI_S", 11.0), lambda: s.get_int("CQT_GAP_MIN_MS", 1),
                 lambda: s.get_str("CQT_COINGLASS_EXCHANGE", "OKX"), lambda: s.get_path("CQT_CAPTURE_DIR", "x")):
        with pytest.raises(RegistryError, match="declared"):
            call()
    with pytest.raises(RegistryError, match="computed by the caller"):
        s.get_int("CQT_COINGLASS_RATE_PER_MIN")
    with pytest.raises(RegistryError, match="not declared"):
        s.get_float("CQT_NOT_A_SETTING_S")
    assert s.get_float("CQT_NOT_A_SETTING_S", 3.0) == 3.0       # undeclared names still work with a default


def test_component_settings_are_typed(tmp_path):
    s = load_settings({"CQT_ENV_FILE": str(tmp_path / "none.env"), "CQT_POLL_OI_S": "20"})
    pollers = s.component("pollers")
    assert pollers["CQT_POLL_OI_S"] == 20.0 and pollers["CQT_POLL_RATIO_REFETCH"] == 3
    assert "CQT_COINGLASS_RATE_PER_MIN" not in pollers          # computed where it is used
    assert s.component("core")["CQT_SYMBOLS"] == ("BTC",)
    assert s.upbit_codes == ("KRW-BTC", "KRW-USDT")      # computed from it


# ------------------------------------------------------------------------------ generated files
def test_readme_and_env_example_are_generated_from_the_registry():
    stale = docs.drift()
    assert not stale, f"{stale} differ from the registry: run .venv/bin/python -m cqt.config.docs --write"


def test_docs_command_check_and_usage():
    env = {"PYTHONPATH": str(ROOT / "lib"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "cqt.config.docs", "--check"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "cqt.config.docs"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr


def test_readme_blocks_must_all_be_there():
    text = (ROOT / "README.md").read_text()
    with pytest.raises(ValueError, match="missing"):
        docs.render_readme(text.replace("<!-- cqt:vars pollers -->", "<!-- pollers -->"))
    with pytest.raises(ValueError, match="unknown"):
        docs.render_readme(text + "\n<!-- cqt:vars nosuch -->\n<!-- /cqt:vars -->\n")


def test_readme_tables_show_every_declaration_once():
    readme = (ROOT / "README.md").read_text()
    for v in REGISTRY:
        assert readme.count(f"| `{v.name}` |") == 1, v.name


def test_env_example_parses_and_loads(tmp_path):
    values = parse_env_file(ROOT / ".env.example")
    assert values["COINGLASS_ENABLED"] == "true" and values["COINGLASS_API_KEY"] == "your_key_here"
    s = load_settings({"CQT_ENV_FILE": str(ROOT / ".env.example")})
    assert s.coinglass_enabled and s.coinglass_key_state == "placeholder"
    text = (ROOT / ".env.example").read_text()
    for v in REGISTRY:
        if v.in_env_file and not v.is_pattern:
            assert re.search(rf"^(# )?{v.name}=", text, re.M), v.name
    assert "CQT_ENV_FILE=" not in text


# ------------------------------------------------------------------------------ the code reads only declared names
def _fstring_template(node: ast.JoinedStr) -> str | None:
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            parts.append(value.value)
        else:
            parts.append("\0")
    text = "".join(parts)
    return text if NAME_RE.match(text.replace("\0", "X")) else None


def _covered(template: str) -> bool:
    """An f-string name: a declared family of the same shape, or declared names it can spell."""
    shape = template.replace("\0", "*")
    if any(re.sub(r"<[A-Z]+>", "*", p.name) == shape for p in PATTERNS):
        return True
    rx = re.compile("^" + "[A-Z0-9_]+".join(re.escape(p) for p in template.split("\0")) + "$")
    return any(rx.match(v.name) for v in REGISTRY if not v.is_pattern)


def _names_in(path: Path) -> list[tuple[int, str]]:
    problems = []
    tree = ast.parse(path.read_text(), str(path))
    in_fstring = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if id(node) in in_fstring:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAME_RE.match(node.value):
            name = node.value
            if name in NOT_VARIABLES:
                continue
            if name.endswith("_"):      # a prefix: names are made from it
                if not any(v.name.startswith(name) for v in REGISTRY):
                    problems.append((node.lineno, f"prefix {name!r} of no declared variable"))
            elif lookup(name) is None:
                problems.append((node.lineno, f"{name!r} is not declared"))
        elif isinstance(node, ast.JoinedStr):
            template = _fstring_template(node)
            if template is not None and "\0" in template and not _covered(template):
                problems.append((node.lineno, f"f-string {template.replace(chr(0), '{}')!r} matches no declaration"))
    return sorted(problems)


def test_code_reads_only_declared_names():
    """Every CQT_* / COINGLASS_* string in lib/ and bin/ (literal, prefix or f-string) is declared."""
    assert len(SCANNED) > 30
    problems = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in SCANNED for line, what in _names_in(p)]
    assert not problems, "declare these in lib/cqt/config/tables/: " + "; ".join(problems)


def test_scan_catches_an_undeclared_name(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('x = s.get_float("CQT_NO_SUCH_S", 1.0)\ny = f"CQT_NOPE_{k}_LIMIT"\nz = "CQT_ZZZ_" + k\n'
                 'ok = f"CQT_CHECK_NULL_RATE_MAX_{t}_{c}", f"CQT_CHECK_{k}_LAG_MAX_S", "CQT_POLL_OI_S"\n')
    assert [line for line, _ in _names_in(f)] == [1, 2, 3]


# ------------------------------------------------------------------------------ call sites agree with declarations
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv}


class _Consts:
    """Names bound once in a module to a number expression (module constants, `day = 86_400`)."""

    def __init__(self, tree: ast.AST):
        seen: dict[str, list[ast.expr]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                seen.setdefault(node.targets[0].id, []).append(node.value)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                seen.setdefault(node.target.id, []).append(node.value)
        self.exprs = {k: v[0] for k, v in seen.items() if len(v) == 1}

    def value(self, node: ast.expr, depth: int = 0):
        """The node's value, or raise ValueError when it is not a constant expression."""
        if depth > 20:
            raise ValueError
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.value(node.operand, depth + 1)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = self.value(node.left, depth + 1), self.value(node.right, depth + 1)
            if not all(isinstance(x, (int, float)) for x in (a, b)):
                raise ValueError
            return _OPS[type(node.op)](a, b)
        if isinstance(node, ast.Name) and node.id in self.exprs:
            return self.value(self.exprs[node.id], depth + 1)
        raise ValueError


def _reads(path: Path):
    """(line, reader, name, default node, minimum node, maximum node) for each get_* call with a literal name."""
    tree = ast.parse(path.read_text(), str(path))
    aliases = {t.id: n.value.attr for n in ast.walk(tree) if isinstance(n, ast.Assign)
               for t in n.targets if isinstance(t, ast.Name)
               and isinstance(n.value, ast.Attribute) and n.value.attr in READERS}
    consts = _Consts(tree)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        reader = f.attr if isinstance(f, ast.Attribute) else aliases.get(f.id) if isinstance(f, ast.Name) else None
        if reader not in READERS or not node.args:
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str) and NAME_RE.match(first.value)):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        args = node.args
        out.append((node.lineno, reader, first.value, args[1] if len(args) > 1 else kw.get("default"),
                    args[2] if len(args) > 2 else kw.get("minimum"), kw.get("maximum"), consts))
    return out


KIND_OF_READER = {"get_int": ("int",), "get_float": ("float",), "get_bool": ("bool",), "get_path": ("path",),
                  "get_str": ("str", "path", "list", "secret", "url_ws", "url_http", "level", "interval")}


def _call_site_problems(path: Path) -> list[str]:
    problems = []
    for line, reader, name, default, minimum, maximum, consts in _reads(path):
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{line}: {name}"
        var = lookup(name)
        if var is None:
            problems.append(f"{where} is not declared")
            continue
        if var.kind not in KIND_OF_READER[reader]:
            problems.append(f"{where} is declared {var.kind} but read with {reader}")
        for what, node, declared in (("default", default, var.default), ("minimum", minimum, var.minimum),
                                     ("maximum", maximum, var.maximum)):
            if node is None or (what == "default" and declared is None):
                continue
            try:
                given = consts.value(node)
            except ValueError:      # computed at run time: Settings.get_* checks the default itself
                continue
            if declared is None or not _same(str(given), str(declared)):
                problems.append(f"{where} passes {what} {given!r}, the declaration says {declared!r}")
    return problems


def test_call_sites_pass_the_declared_default_and_bounds():
    """A literal default or bound at a get_* call must be the declared one (passing none is the norm)."""
    problems = [p for path in SCANNED for p in _call_site_problems(path)]
    assert not problems, "; ".join(problems)


def test_call_site_scan_catches_a_different_default(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("DAY = 86_400\n"
                 "a = s.get_float('CQT_POLL_OI_S', 10.0, minimum=1.0)\n"        # as declared
                 "b = s.get_float('CQT_POLL_OI_S', 12.0)\n"                     # default differs
                 "c = s.get_int('CQT_AGGREGATE_CHUNK_S', 3600, 1, maximum=2 * DAY)\n"   # maximum differs
                 "g = s.get_float\n"
                 "d = g('CQT_GAP_MIN_MS', 3000, 0)\n"                           # declared int, read as float
                 "e = s.get_int('CQT_COINGLASS_RATE_PER_MIN', plan_limit, minimum=1)\n")   # computed: fine
    assert [p.split(":")[1] for p in _call_site_problems(f)] == ["3", "4", "6"]


# ------------------------------------------------------------------------------ bounds and the foundation
CORE = {v.name for v in VARIABLES}


@pytest.mark.parametrize("name", [v.name for v in REGISTRY if v.kind in ("int", "float") and v.default is not None])
def test_every_declared_number_is_bounded(tmp_path, name):
    """Finite, at least the minimum, at most the maximum (declared, else the default ceiling): ConfigError naming it."""
    var = BY_NAME[name]
    top = var.maximum if var.maximum is not None else default_maximum(name, var.kind)
    above = str(int(top) + 1) if var.kind == "int" else repr(float(top) * 2 + 1)   # 2**53 + 1 rounds to 2**53
    cases = ["inf", "nan", "1e999", above] + ([str(var.minimum - 1)] if var.minimum is not None else [])
    for value in cases:
        env = {"CQT_ENV_FILE": str(tmp_path / "none.env"), name: value}
        with pytest.raises(ConfigError) as ei:
            s = load_settings(env)      # core variables fail here, the others where they are read
            assert name not in CORE
            s.get(name)
        assert ei.value.var == name and "\n" not in str(ei.value), value


def test_config_imports_nothing_else_of_cqt():
    """The foundation: cqt.config knows no commands, venues or checks (only the pure symbol spelling)."""
    for path in (ROOT / "lib" / "cqt" / "config").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                depth = len(path.relative_to(ROOT / "lib" / "cqt" / "config").parts) - 1
                assert node.level == 0 or node.level <= depth + 1 or node.module == "symbols", (path, node.module)
                assert node.level > 0 or not (node.module or "").startswith("cqt"), (path, node.module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("cqt") for a in node.names), path
