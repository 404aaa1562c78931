"""Start cqt-sim as a real subprocess for tests (reused by the collector and check tests).

    from simproc import start_sim

    with start_sim(tmp_path, "--seed", "7", "--history", "600") as sim:
        sim.urls["CQT_BINANCE_WS_URL"]          # values of the ports file
        sim.fault("drop", source="binance")      # POST /_sim/fault
        sim.stats()["streams"]                   # GET /_sim/stats
        sim.clock("resume")                      # POST /_sim/clock
    # leaving the block: SIGTERM, bounded wait, kill if needed, reaped

Or as a fixture: `from simproc import sim_factory` in a test module, then
`def test_x(sim_factory): sim = sim_factory("--speed", "10")`.

`start_sim(tmp_path, ..., tls=True)` serves `wss://`/`https://` with a certificate for
127.0.0.1 signed by a throw-away test CA (trustme); `sim.env()` then carries
`CQT_CA_BUNDLE`, so collectors started with it verify the sim like a real exchange.

Every wait is bounded; the process runs in its own session so a kill takes its
children too; every SimHandle still alive at interpreter exit is killed.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
_ALIVE: set["SimHandle"] = set()
if str(LIB) not in sys.path:          # tests also import cqt.sim in-process
    sys.path.insert(0, str(LIB))


class SimStartError(RuntimeError):
    pass


class SimHandle:
    """A running cqt-sim subprocess."""

    def __init__(self, proc: subprocess.Popen, ports_file: Path, log_path: Path):
        self.proc = proc
        self.ports_file = ports_file
        self.log_path = log_path
        self.urls: dict[str, str] = {}
        self.control = ""
        self.port = 0
        self.ca_file: Path | None = None     # the test CA (PEM) when the sim serves TLS

    # -- control API
    def _call(self, method: str, path: str, body=None, timeout: float = 10.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.control + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"{}")

    def ssl_context(self) -> ssl.SSLContext | None:
        """For a test's own requests to a TLS sim: trusts the test CA only."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None

    def fault(self, kind: str, **params) -> dict:
        """Apply a fault now (POST /_sim/fault); returns the sim's answer."""
        ans = self._call("POST", "/fault", dict(params, kind=kind))
        if not ans.get("ok"):
            raise ValueError(f"fault rejected: {ans}")
        return ans

    def stats(self, ids: bool = True, stream: str | None = None) -> dict:
        q = "?ids=" + ("1" if ids else "0") + (f"&stream={stream}" if stream else "")
        return self._call("GET", "/stats" + q)

    def clock(self, action: str | None = None) -> dict:
        if action is None:
            return self._call("GET", "/clock")
        return self._call("POST", "/clock", {"action": action})

    def env(self) -> dict[str, str]:
        """The CQT_* URL variables for a collector's environment (and the CA it must trust)."""
        env = {k: v for k, v in self.urls.items() if k.startswith("CQT_")}
        if self.ca_file:
            env["CQT_CA_BUNDLE"] = str(self.ca_file)
        return env

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 8.0) -> int | None:
        """SIGTERM, wait (bounded), then SIGKILL the process group. Returns the exit code."""
        p = self.proc
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        _ALIVE.discard(self)
        return p.returncode

    def kill(self) -> None:
        p = self.proc
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        _ALIVE.discard(self)

    def __enter__(self) -> "SimHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def sim_env(extra: dict | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQT_")}
    env["PYTHONPATH"] = str(LIB) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def make_test_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA file, server certificate chain, server key) in PEM for 127.0.0.1/localhost, made
    once per directory by a throw-away certificate authority."""
    ca_file, cert_file, key_file = (directory / n for n in ("test-ca.pem", "sim-cert.pem", "sim-key.pem"))
    if not key_file.exists():
        import trustme

        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
        ca.cert_pem.write_to_path(str(ca_file))
        cert.private_key_pem.write_to_path(str(key_file))
        cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return ca_file, cert_file, key_file


def start_sim(tmp_path, *args: str, timeout: float = 30.0, env: dict | None = None, tls: bool = False) -> SimHandle:
    """Start `python -m cqt.sim.cli --port 0 --ports-file … *args` and wait (bounded)
    until the ports file appears. Raises SimStartError (with the sim's log) if it
    exits or does not come up in time. `tls`: serve wss:// and https:// (see above)."""
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    n = 0
    while (tmp_path / f"sim{n}.ports.json").exists() or (tmp_path / f"sim{n}.log").exists():
        n += 1
    ports = tmp_path / f"sim{n}.ports.json"
    log_path = tmp_path / f"sim{n}.log"
    cmd = [sys.executable, "-m", "cqt.sim.cli", "--port", "0", "--ports-file", str(ports), *map(str, args)]
    ca_file = None
    if tls:
        ca_file, cert_file, key_file = make_test_certificates(tmp_path / "tls")
        cmd += ["--tls-cert", str(cert_file), "--tls-key", str(key_file)]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=sim_env(env), cwd=str(ROOT), start_new_session=True)
    h = SimHandle(proc, ports, log_path)
    h.ca_file = ca_file
    _ALIVE.add(h)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ports.exists():
            try:
                h.urls = json.loads(ports.read_text())
                break
            except ValueError:
                pass
        if proc.poll() is not None:
            h.kill()
            raise SimStartError(f"cqt-sim exited with {proc.returncode}:\n{h.log()}")
        time.sleep(0.05)
    else:
        h.kill()
        raise SimStartError(f"cqt-sim did not write {ports} within {timeout} s:\n{h.log()}")
    h.control = h.urls["control"]
    h.port = int(h.control.rsplit(":", 1)[1].split("/", 1)[0])
    return h


def start_tls_sim(tmp_path, *args: str, **kw) -> SimHandle:
    """start_sim(..., tls=True): the end-to-end collector tests import it as `start_sim`, so they
    run over wss:// and https:// and verify the sim's certificate against the test CA."""
    return start_sim(tmp_path, *args, tls=True, **kw)


@pytest.fixture
def sim_factory(tmp_path):
    """sim_factory(*args) -> SimHandle; every sim started is stopped at teardown."""
    started: list[SimHandle] = []

    def make(*args: str, **kw) -> SimHandle:
        h = start_sim(tmp_path, *args, **kw)
        started.append(h)
        return h
    yield make
    for h in started:
        h.stop()


@atexit.register
def _kill_leftovers() -> None:
    for h in list(_ALIVE):
        h.kill()


# ------------------------------------------------------------------ helpers for wire-format tests
from helpers import SAMPLES  # noqa: E402


def json_type(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def json_shape(v):
    """Keys and JSON value types, recursively (arrays by their first element)."""
    if isinstance(v, dict):
        return {k: json_shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_shape(v[0])] if v else []
    return json_type(v)


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def ws_connect(url: str, timeout: float = 5.0, **kw):
    """websocket-client connection without the Origin header (Upbit limits those)."""
    import websocket
    kw.setdefault("suppress_origin", True)
    kw.setdefault("skip_utf8_validation", True)
    return websocket.create_connection(url, timeout=timeout, **kw)


def recv_frames(ws, n: int = 10**9, seconds: float = 5.0, until=None) -> list[tuple[int, bytes | str]]:
    """(opcode, data) frames (text frames as str, binary as bytes) until n frames, `until(data)` is
    true, or `seconds` pass."""
    import websocket
    out = []
    deadline = time.monotonic() + seconds
    while len(out) < n and time.monotonic() < deadline:
        ws.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            op, data = ws.recv_data()
        except websocket.WebSocketTimeoutException:
            break
        if op == websocket.ABNF.OPCODE_TEXT and isinstance(data, bytes):
            data = data.decode("utf-8")
        out.append((op, data))
        if until is not None and until(data):
            break
    return out
