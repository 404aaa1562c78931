"""`--capture` on every collector goes through the output guard before the service starts,
and a capture line whose `raw_b64` is not a string is a rejected line, not a crash."""
from __future__ import annotations

import os
import stat

import pytest

from cqt.capture import CaptureLineError, parse_line
from cqt.db import open_db
from helpers import cqt_env, run_bin

COLLECTORS = ("cqt-collect-binance", "cqt-collect-upbit", "cqt-poll-binance", "cqt-poll-coinglass")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("program", COLLECTORS)
def test_capture_onto_the_database_is_refused_before_the_service_starts(tmp_path, program):
    db = tmp_path / "cqt.db"
    open_db(db).close()
    before = db.read_bytes()
    # Unreachable endpoints: if the guard did not stop it, the service would start and run on.
    env = cqt_env(tmp_path, CQT_UPBIT_WS_URL="ws://127.0.0.1:9", CQT_BINANCE_WS_URL="ws://127.0.0.1:9",
                  CQT_UPBIT_REST_URL="http://127.0.0.1:9", CQT_BINANCE_REST_URL="http://127.0.0.1:9",
                  CQT_COINGLASS_URL="http://127.0.0.1:9", COINGLASS_ENABLED="true",
                  COINGLASS_API_KEY="k" * 32)
    for target in (db, tmp_path / "cqt.db-wal"):
        p = run_bin(program, "--capture", str(target), env=env, timeout=60)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2, p.stderr
        assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
        assert program in lines[0]
    assert db.read_bytes() == before
    assert not (tmp_path / "cqt.db-wal").exists() or stat.S_ISREG(os.lstat(tmp_path / "cqt.db-wal").st_mode)


@pytest.mark.parametrize("b64", [5, [1, 2], {"a": 1}, True])
def test_capture_line_with_a_non_string_raw_b64_is_a_rejected_line(b64):
    import orjson
    line = orjson.dumps({"recv_ts_ms": 1_771_000_000_000, "source": "binance_ws", "raw": "", "raw_b64": b64})
    with pytest.raises(CaptureLineError):
        parse_line(line, 7)
