"""Shared test helpers: run cqt programs as real subprocesses, bounded and cleaned up."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bin"
CHECKS = ROOT / "checks"
# Real exchange payloads: shared/samples beside the checkout, else the copy in tests/samples.
SHARED_SAMPLES = ROOT.parent / "shared" / "samples"
SAMPLES = SHARED_SAMPLES if SHARED_SAMPLES.is_dir() else ROOT / "tests" / "samples"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"no {SAMPLES}")
MIGRATION = ROOT / "lib" / "cqt" / "migrations" / "0001_base.sql"


def cqt_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a cqt subprocess: no .env from the checkout, db in tmp_path."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("CQT_") or k.startswith("COINGLASS_") or k in ("NOTIFY_SOCKET", "WATCHDOG_USEC"))}
    env["CQT_ENV_FILE"] = str(tmp_path / "test.env")
    env["CQT_DB"] = str(tmp_path / "cqt.db")
    env["CQT_REPORT"] = str(tmp_path / "reports" / "step-alt-5.md")
    env["CQT_DATASET_DIR"] = str(tmp_path / "datasets")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def program_path(name: str) -> Path:
    p = BIN / name
    return p if p.exists() else CHECKS / name


def run_bin(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run bin/<name> (or checks/<name>) to completion; output captured as text."""
    return subprocess.run([str(program_path(name)), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, input=input, cwd=str(ROOT))


def start_bin(name: str, *args: str, env: dict[str, str] | None = None, log_path: Path | None = None,
              **kwargs) -> subprocess.Popen:
    """Start bin/<name> in the background (its own process group); stderr to log_path if given."""
    stderr = open(log_path, "ab") if log_path else subprocess.PIPE
    p = subprocess.Popen([str(program_path(name)), *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                         stderr=stderr, cwd=str(ROOT), start_new_session=True, **kwargs)
    if log_path:
        stderr.close()
    return p


def stop_proc(p: subprocess.Popen, timeout: float = 8.0, sig: int = signal.SIGTERM) -> int | None:
    """Signal a process, wait (bounded), kill its group if it does not go. Returns the exit code."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
    return p.returncode


def wait_for(pred: Callable[[], object], timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll pred() until truthy (returned) or fail after timeout seconds."""
    end = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < end:
        try:
            v = pred()
            if v:
                return v
        except Exception as exc:  # noqa: BLE001 - e.g. table not created yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


def query(db: Path, sql: str, params=()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "lib") + os.pathsep + str(ROOT / "tests")
    return env


PY = sys.executable


def sample(name: str):
    """A real exchange payload from SAMPLES, decoded."""
    return json.loads((SAMPLES / name).read_text())


def ms(recv_ts: float) -> int:
    return int(recv_ts * 1000)


def reason(fn, *args, **kw) -> str:
    """The reason of the Reject that fn(*args, **kw) raises (fails the test if it does not)."""
    from cqt.venues.common import Reject

    with pytest.raises(Reject) as ei:
        fn(*args, **kw)
    return ei.value.reason


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str):
    """A tmpfs of `size` at mountpoint (needs root and mount rights; skips the test otherwise),
    always unmounted."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=20)


APT_TIMEOUT_S = 900     # a first chromium install pulls ~100 MB of packages


def _apt_get(*args: str) -> subprocess.CompletedProcess | None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        # Another install (a parallel test worker) may hold dpkg's lock: wait for it.
        return subprocess.run(["apt-get", "-o", f"DPkg::Lock::Timeout={APT_TIMEOUT_S // 2}", *args],
                              capture_output=True, text=True, timeout=APT_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return None


def debian_tool(package: str, *names: str, no_recommends: bool = False) -> tuple[str | None, str]:
    """The path of the first of `names` on PATH (or an absolute path that exists), installing the
    Debian `package` when none is there and this is root with apt-get -> (path or None, why not).
    Tests skip with the reason: the tools are the test set-up's to install, never assumed."""
    import shutil

    def found() -> str | None:
        for n in names:
            p = n if os.path.isabs(n) and os.path.exists(n) else shutil.which(n)
            if p:
                return p
        return None

    if found():
        return found(), ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, f"{names[0]} not found and cannot install the Debian package '{package}' (not root or no apt-get)"
    cmd = ("install", "-y", "-q") + (("--no-install-recommends",) if no_recommends else ()) + (package,)
    r = _apt_get(*cmd)
    if not found():                    # a fresh machine may have no package lists yet
        _apt_get("update", "-q")
        r = _apt_get(*cmd)
    if found():
        return found(), ""
    tail = "timed out" if r is None else (r.stderr or r.stdout).strip()[-500:]
    return None, f"apt-get install {package} failed: {tail}"
