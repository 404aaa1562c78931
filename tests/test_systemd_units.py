"""The systemd unit files: rendered with real paths, `systemd-analyze verify` clean, security
scores within the targets, the required settings present, MemoryDenyWriteExecute= safe."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cqt import install_layout, install_units
from cqt.cli import PROGRAMS
from helpers import ROOT, debian_tool

pytestmark = pytest.mark.timeout(60)

LONG_RUNNING = ("cqt-collect-upbit", "cqt-collect-binance", "cqt-poll-binance", "cqt-poll-coinglass",
                "cqt-aggregate", "cqt-scheduler")
NETWORK = ("cqt-collect-upbit", "cqt-collect-binance", "cqt-poll-binance", "cqt-poll-coinglass")
NO_NETWORK = ("cqt-aggregate", "cqt-scheduler", "cqt-nightly", "cqt-checks")
ONESHOT = ("cqt-nightly", "cqt-checks")
TARGET_WANTS = {"cqt-collect-upbit.service", "cqt-collect-binance.service", "cqt-poll-binance.service",
                "cqt-poll-coinglass.service", "cqt-aggregate.service", "cqt-dashboard.service"}
# Long-running without sd_notify (Streamlit's server): Type=exec, listens on loopback TCP.
LISTENERS = ("cqt-dashboard",)
# Every service carries these exact settings (the hardening list).
HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "PrivateUsers": "yes", "PrivateMounts": "yes", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
    "ProtectClock": "yes", "ProtectHostname": "yes", "ProtectProc": "invisible", "ProcSubset": "pid",
    "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "RemoveIPC": "yes",
    "CapabilityBoundingSet": "", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native", "UMask": "0027", "LogRateLimitIntervalSec": "0",
    "User": "@USER@", "Group": "@GROUP@",
}
RUNTIME_STOP_S = 4.5 + 3.0     # runtime.STOP_DEADLINE_S + the writer's close timeout


def seconds(v: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?", v.strip())
    assert m, f"cannot read a time span from {v!r}"
    mult = {"ms": 0.001, None: 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * mult


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value (keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("["):
            section = s.strip("[]")
            out.setdefault(section, {})
            continue
        assert section, f"{path.name}: key outside a section: {s}"
        key, _, val = s.partition("=")
        out[section].setdefault(key.strip(), []).append(val.strip())
    return out


def one(unit: dict, section: str, key: str) -> str:
    vals = unit.get(section, {}).get(key)
    assert vals, f"{key}= missing in [{section}]"
    return vals[-1]


TEMPLATES = {p.stem: p for p in install_units.unit_templates(ROOT) if p.suffix == ".service"}


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    exe, why = debian_tool("systemd", "systemd-analyze")
    if exe is None:
        pytest.skip(why)
    return exe


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The units rendered for the checkout as prefix, with the production user name."""
    tmp = tmp_path_factory.mktemp("units")
    lay = install_layout.make_layout(str(ROOT), "cqt", None)
    lay.group = "cqt"
    lay.data_dirs = {"@DATADIR@": tmp / "data", "@DATASETDIR@": tmp / "data" / "datasets",
                     "@REPORTDIR@": tmp / "reports"}
    out = tmp / "etc"
    out.mkdir()
    for name, text in install_units.render_units(lay).items():
        (out / name).write_text(text)
    return out


def test_every_long_running_program_has_a_unit_named_after_it():
    for name in LONG_RUNNING + LISTENERS + ONESHOT[:1]:
        assert name in PROGRAMS, name
        assert name in TEMPLATES, f"systemd/{name}.service missing"
        unit = parse_unit(TEMPLATES[name])
        assert one(unit, "Service", "ExecStart").split()[0] == f"@PREFIX@/bin/{name}"
        assert one(unit, "Service", "SyslogIdentifier") == name
    assert "cqt-checks" in TEMPLATES and (ROOT / "systemd" / "cqt.target").exists()
    for timer in ("cqt-nightly", "cqt-checks"):
        t = parse_unit(ROOT / "systemd" / f"{timer}.timer")
        assert one(t, "Timer", "Unit") == f"{timer}.service"


def test_target_wants_the_collectors_and_the_aggregator():
    unit = parse_unit(ROOT / "systemd" / "cqt.target")
    wants = {w for line in unit["Unit"]["Wants"] for w in line.split()}
    assert wants == TARGET_WANTS
    for name in LONG_RUNNING + LISTENERS:     # stop/restart of the target reaches every service
        assert one(parse_unit(TEMPLATES[name]), "Unit", "PartOf") == "cqt.target"


@pytest.mark.parametrize("name", sorted(set(LONG_RUNNING) | set(ONESHOT) | set(LISTENERS)))
def test_service_settings(name):
    unit = parse_unit(TEMPLATES[name])
    svc = unit["Service"]
    for key, want in HARDENING.items():
        assert one(unit, "Service", key) == want, f"{name}: {key}={svc.get(key)} (want {want!r})"
    filters = svc.get("SystemCallFilter", [])
    assert "@system-service" in filters and "~@privileged @resources" in filters
    assert one(unit, "Service", "EnvironmentFile") == "@ENVFILE@"
    assert "CQT_ENV_FILE=@ENVFILE@" in svc.get("Environment", [])
    assert one(unit, "Service", "WorkingDirectory") == "@PREFIX@"
    rw = one(unit, "Service", "ReadWritePaths").split()
    assert set(rw) == {"@DATADIR@", "@DATASETDIR@", "@REPORTDIR@"}
    # StartLimit* in [Service] are ignored by systemd (with a warning)
    assert not {"StartLimitIntervalSec", "StartLimitBurst"} & set(svc)
    families = one(unit, "Service", "RestrictAddressFamilies").split()
    if name in NETWORK:
        assert families == ["AF_UNIX", "AF_INET", "AF_INET6"]
        assert "PrivateNetwork" not in svc
    elif name in LISTENERS:    # serves TCP, talks to nobody but local clients
        assert families == ["AF_UNIX", "AF_INET", "AF_INET6"]
        assert one(unit, "Service", "IPAddressDeny") == "any"
        assert one(unit, "Service", "IPAddressAllow") == "localhost"
    else:
        assert families == ["AF_UNIX"]
        assert one(unit, "Service", "PrivateNetwork") == "yes"
        assert one(unit, "Service", "IPAddressDeny") == "any"
    if name in LISTENERS:
        assert one(unit, "Service", "Type") == "exec"
        assert one(unit, "Service", "Restart") == "always"
        assert one(unit, "Service", "RestartPreventExitStatus") == "78"
    elif name in LONG_RUNNING:
        assert one(unit, "Service", "Type") == "notify"
        assert one(unit, "Service", "NotifyAccess") == "main"
        assert one(unit, "Service", "Restart") in ("always", "on-failure")
        assert one(unit, "Service", "RestartPreventExitStatus") == "78"
        assert seconds(one(unit, "Service", "WatchdogSec")) >= 10
        restart_s = seconds(one(unit, "Service", "RestartSec"))
        burst = int(one(unit, "Unit", "StartLimitBurst"))
        interval = seconds(one(unit, "Unit", "StartLimitIntervalSec"))
        assert burst >= 2 and interval > burst * restart_s, "the start limit could never trigger"
        assert seconds(one(unit, "Service", "TimeoutStopSec")) > RUNTIME_STOP_S
    else:
        assert one(unit, "Service", "Type") == "oneshot"
        assert 0 < seconds(one(unit, "Service", "TimeoutStartSec")) <= 2 * 3600


def test_every_setting_line_is_explained_where_not_obvious():
    """Each unit carries comments: at least one comment line per four settings of [Service]."""
    for name, path in TEMPLATES.items():
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        comments = sum(ln.startswith("#") for ln in lines)
        settings = sum("=" in ln and not ln.startswith("#") for ln in lines)
        assert comments * 4 >= settings, f"{name}: {comments} comment lines for {settings} settings"


def test_render_replaces_every_placeholder_and_rejects_unknown_ones(rendered):
    names = sorted(p.name for p in rendered.iterdir())
    assert names == sorted(p.name for p in install_units.unit_templates(ROOT))
    for p in rendered.iterdir():
        text = p.read_text()
        assert text.startswith(install_units.MARKER)
        settings = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        assert not re.search(r"@[A-Z_]+@", settings), f"{p.name}: placeholder left"
        if p.suffix == ".service":
            assert f"ExecStart={ROOT}/" in settings and "User=cqt" in settings
    with pytest.raises(install_layout.InstallError, match="@NOPE@"):
        install_units.render("x=@NOPE@", {"@PREFIX@": "/x"}, "t")


def test_systemd_analyze_verify_is_silent(systemd_analyze, rendered, tmp_path):
    files = sorted(str(p) for p in rendered.iterdir())
    p = subprocess.run([systemd_analyze, "verify", "--man=no", *files], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout == "" and p.stderr == "", p.stdout + p.stderr


def exposure(systemd_analyze: str, unit_file: Path) -> float:
    p = subprocess.run([systemd_analyze, "security", "--offline=true", "--no-pager", str(unit_file)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout)
    assert m, p.stdout[-500:] + p.stderr
    return float(m.group(1))


def test_systemd_analyze_security_scores(systemd_analyze, rendered):
    scores = {}
    for p in sorted(rendered.glob("*.service")):
        scores[p.stem] = exposure(systemd_analyze, p)
    print("systemd-analyze security --offline=true:", scores)
    for name in NETWORK + LISTENERS:
        assert scores[name] <= 2.0, scores
    for name in NO_NETWORK:
        assert scores[name] <= 1.0, scores


# ------------------------------------------------------------------------------ MemoryDenyWriteExecute
MDWE_PROBE = r"""
import importlib, json, mmap, sys
out = {}
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    out["wx_mmap"] = "allowed"
except OSError:
    out["wx_mmap"] = "denied"
import ctypes
out["ctypes_callback"] = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)(41)
import numpy, pandas, pyarrow, pyarrow.parquet, orjson, aiohttp, websocket, requests, apscheduler, psutil, sqlite3
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
df = pandas.DataFrame({"a": numpy.arange(20000, dtype=float), "b": numpy.random.default_rng(1).random(20000)})
df["c"] = df["b"].rolling(30).std()
pyarrow.parquet.write_table(pyarrow.Table.from_pandas(df), sys.argv[1] + "/x.parquet")
out["parquet_rows"] = len(pandas.read_parquet(sys.argv[1] + "/x.parquet"))
fig, ax = plt.subplots(); ax.plot(df["a"][:100], df["b"][:100]); fig.savefig(sys.argv[1] + "/x.png")
out["orjson"] = orjson.loads(orjson.dumps({"k": [1, 2.5]}))["k"][1]
con = sqlite3.connect(sys.argv[1] + "/x.db"); con.execute("create table t(x)"); con.execute("insert into t values (1)")
out["rss"] = psutil.Process().memory_info().rss > 0
mods = {}
for target in json.loads(sys.argv[2]):
    name = target.split(":")[0]
    try:
        importlib.import_module(name)
        mods[name] = "ok"
    except Exception as exc:
        mods[name] = f"{type(exc).__name__}: {exc}"
out["modules"] = mods
print(json.dumps(out))
"""


def _probe(tmp: Path, under_filter: bool) -> dict:
    import json
    cmd = [sys.executable, "-c", MDWE_PROBE, str(tmp), json.dumps(sorted(set(PROGRAMS.values())))]
    if under_filter:
        cmd = [sys.executable, str(ROOT / "tests" / "mdwe_exec.py"), *cmd]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "lib"), MPLCONFIGDIR=str(tmp / "mpl"))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_dependencies_work_with_memory_deny_write_execute(tmp_path):
    from mdwe_exec import supported
    if not supported():
        pytest.skip("the seccomp emulation is written for x86-64 Linux")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    free = _probe(tmp_path / "a", under_filter=False)
    jailed = _probe(tmp_path / "b", under_filter=True)
    assert free["wx_mmap"] == "allowed"
    assert jailed["wx_mmap"] == "denied", "the filter is not active: this test would prove nothing"
    assert jailed["ctypes_callback"] == 42
    assert jailed["parquet_rows"] == 20000 and jailed["orjson"] == 2.5 and jailed["rss"]
    assert (tmp_path / "b" / "x.png").stat().st_size > 0
    # Every program module imports under the filter whenever it imports without it.
    broken = {m: err for m, err in jailed["modules"].items() if err != "ok" and free["modules"][m] == "ok"}
    assert not broken, broken
