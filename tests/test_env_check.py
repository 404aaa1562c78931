"""`cqt env check`: present/missing/placeholder, never the value; permissions."""
import os

import pytest

from helpers import cqt_env, run_bin

SECRET = "cg_live_7f3a9c1d5e2b4f8a"


def _env_file(tmp_path, text, mode=0o600):
    f = tmp_path / "test.env"
    f.write_text(text)
    os.chmod(f, mode)
    return f


def test_present(tmp_path):
    _env_file(tmp_path, f"COINGLASS_ENABLED=true\nCOINGLASS_API_KEY={SECRET}\n")
    r = run_bin("cqt", "env", "check", env=cqt_env(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "COINGLASS_API_KEY" in r.stdout and "present" in r.stdout
    assert SECRET not in r.stdout + r.stderr
    for i in range(4, len(SECRET)):     # not even partly
        assert SECRET[:i] not in r.stdout + r.stderr or SECRET[:i] in "cg_l"


@pytest.mark.parametrize("text,state", [
    ("COINGLASS_ENABLED=true\nCOINGLASS_API_KEY=your_key_here\n", "placeholder"),
    ("COINGLASS_ENABLED=true\nCOINGLASS_API_KEY=<REAL_KEY>\n", "placeholder"),
    ("COINGLASS_ENABLED=true\n", "missing"),
    ("COINGLASS_ENABLED=false\nCOINGLASS_API_KEY=abcdef123456\n", "invalid"),
])
def test_not_ok(tmp_path, text, state):
    _env_file(tmp_path, text)
    r = run_bin("cqt", "env", "check", env=cqt_env(tmp_path))
    assert r.returncode == 1
    assert state in r.stdout


def test_group_readable_warns_and_strict_fails(tmp_path):
    _env_file(tmp_path, f"COINGLASS_ENABLED=true\nCOINGLASS_API_KEY={SECRET}\n", mode=0o640)
    r = run_bin("cqt", "env", "check", env=cqt_env(tmp_path))
    assert r.returncode == 0 and "WARNING" in r.stdout and "readable" in r.stdout
    r = run_bin("cqt", "env", "check", "--strict", env=cqt_env(tmp_path))
    assert r.returncode == 1 and "FAIL" in r.stdout


def test_env_init_creates_0600_and_never_overwrites(tmp_path):
    env = cqt_env(tmp_path)
    r = run_bin("cqt", "env", "init", env=env)
    assert r.returncode == 0
    f = tmp_path / "test.env"
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    f.write_text("COINGLASS_ENABLED=true\n")
    run_bin("cqt", "env", "init", env=env)
    assert f.read_text() == "COINGLASS_ENABLED=true\n"


def test_secret_never_in_database_or_logs(tmp_path):
    """A service started with the key set writes heartbeats/events; the key is nowhere."""
    _env_file(tmp_path, f"COINGLASS_ENABLED=true\nCOINGLASS_API_KEY={SECRET}\n")
    env = cqt_env(tmp_path)
    r = run_bin("cqt", "status", env=env)
    assert SECRET not in r.stdout + r.stderr
    db = tmp_path / "cqt.db"
    if db.exists():
        assert SECRET.encode() not in db.read_bytes()
