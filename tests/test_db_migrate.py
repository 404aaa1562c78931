"""`bin/cqt db migrate`: an older schema is brought up to date in place; a newer one, a missing or a
damaged file is refused untouched (exit 3); a current one is left alone (exit 0)."""
import json
import sqlite3

from cqt import db as cdb
from helpers import ROOT, cqt_env, query, run_bin


def _version_one(path):
    conn = sqlite3.connect(path)
    conn.executescript((ROOT / "lib" / "cqt" / "migrations" / "0001_base.sql").read_text())
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    return path


def test_migrates_an_older_schema_in_place(tmp_path):
    path = _version_one(tmp_path / "old.db")
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO heartbeats VALUES ('svc', 1, 'running', '{}')")
    conn.commit()
    conn.close()
    r = run_bin("cqt", "db", "migrate", "--db", path, env=cqt_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"schema version 1 -> {cdb.latest_version()}" in r.stdout
    assert query(path, "PRAGMA user_version")[0][0] == cdb.latest_version()
    assert query(path, "SELECT service FROM heartbeats") == [("svc",)]     # data kept
    # the same schema a service creates
    fresh = cdb.open_db(tmp_path / "fresh.db")
    want = fresh.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name").fetchall()
    assert query(path, "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name") == want
    again = run_bin("cqt", "db", "migrate", "--db", path, "--json", env=cqt_env(tmp_path))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"db": str(path), "from_version": cdb.latest_version(),
                                        "to_version": cdb.latest_version(), "migrated": False}


def test_default_database_is_cqt_db(tmp_path):
    _version_one(tmp_path / "cqt.db")
    r = run_bin("cqt", "db", "migrate", env=cqt_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert query(tmp_path / "cqt.db", "PRAGMA user_version")[0][0] == cdb.latest_version()


def test_newer_schema_refused_untouched(tmp_path):
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)            # rollback journal: opening it for writing would switch it to WAL
    conn.execute("CREATE TABLE t (x)")
    conn.execute(f"PRAGMA user_version={cdb.latest_version() + 1}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    r = run_bin("cqt", "db", "migrate", "--db", path, env=cqt_env(tmp_path))
    assert r.returncode == 3
    assert "newer" in r.stderr and "not touched" in r.stderr and "Traceback" not in r.stderr
    assert path.read_bytes() == before
    assert not (tmp_path / "new.db-wal").exists()


def test_missing_and_damaged_files(tmp_path):
    r = run_bin("cqt", "db", "migrate", "--db", tmp_path / "nope.db", env=cqt_env(tmp_path))
    assert r.returncode == 3 and "not found" in r.stderr
    assert not (tmp_path / "nope.db").exists()
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 100)
    r = run_bin("cqt", "db", "migrate", "--db", bad, env=cqt_env(tmp_path))
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    assert bad.read_bytes() == b"not a database at all" * 100


def test_bad_setting_is_exit_78(tmp_path):
    env = cqt_env(tmp_path, CQT_LOG_LEVEL="LOUD")
    r = run_bin("cqt", "db", "migrate", env=env)
    assert r.returncode == 78, r.stderr


def test_older_schema_message_names_the_command(tmp_path):
    path = _version_one(tmp_path / "old.db")
    try:
        cdb.open_readonly(path)
    except cdb.SchemaTooNew as exc:
        assert "bin/cqt db migrate" in str(exc)
    else:
        raise AssertionError("an older schema must be refused by readers")
