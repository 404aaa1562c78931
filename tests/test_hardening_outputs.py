"""Outputs never destroy inputs: the output guard and the atomic write, through the real programs.

cqt-export, cqt-report (and its plots), cqt-nightly's files and capture files refuse, with
exit 2 and one line, a target that is the database (or its -wal, a hard link, a symlink to
it), any SQLite file, a device or fifo, or an existing file that is not a previous output of
the same kind; nothing is written first. A full disk leaves no temp file. `cqt synth`
needs --db and refuses a database with collected data unless --force. `--last` is bounded.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from cqt import outputs
from cqt.capture import CaptureWriter
from cqt.config import load_settings
from cqt.db import open_db
from cqt.nightly.steps import dated_copy, step_export, step_report
from helpers import cqt_env, program_path, query, run_bin

T = 1_771_000_000_000          # 2026-02-13, a whole second
S = 1000


# ------------------------------------------------------------------------------ fixtures
def make_db(path: Path, seconds: int = 300) -> Path:
    """A migrated database with `seconds` of market_1s bars (a gentle walk) and predictions."""
    conn = open_db(path)
    feats = [r[1] for r in conn.execute("PRAGMA table_info(predictions)")
             if r[1] not in ("symbol", "ts_ms", "horizon_sec", "model", "score")]
    conn.execute("BEGIN")
    for i in range(seconds):
        conn.execute("INSERT INTO market_1s (symbol, ts_ms, close, volume, trade_count, buy_volume, sell_volume, "
                     "has_trade, close_age_ms, book_age_ms, binance_age_ms, mark_age_ms, usdt_krw_age_ms) "
                     "VALUES ('BTC', ?, ?, 1, 1, 0.5, 0.5, 1, 0, 100, 100, 100, 1000)",
                     (T + i * S, 1000.0 + (i * 7919 % 13) - 6))
    for i in range(20, seconds - 60):
        conn.execute(f"INSERT INTO predictions (symbol, ts_ms, horizon_sec, model, score, {', '.join(feats)}) "
                     f"VALUES ('BTC', ?, 10, 'test', 0.0, {', '.join('0.1' for _ in feats)})", (T + i * S,))
    conn.execute("COMMIT")
    conn.close()
    return path


def fingerprint(path: Path) -> tuple:
    st = os.lstat(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
    return st.st_ino, stat.S_IFMT(st.st_mode), st.st_size, digest


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def export(env, out, *args, db=None):
    extra = ("--db", db) if db is not None else ()
    return run_bin("cqt-export", "--output", out, "--horizon", "10", "--last", "1h", *extra, *args, env=env)


def temps(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if ".tmp" in p.name]


@pytest.fixture
def live(tmp_path):
    """A database with a writer holding it open and a non-empty -wal, like a running collector."""
    db = make_db(tmp_path / "live.db")
    conn = open_db(db)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("INSERT INTO heartbeats (service, ts_ms, state, detail) VALUES ('cqt-collect-binance', ?, "
                 "'running', '{}')", (T,))
    wal = Path(f"{db}-wal")
    assert wal.stat().st_size > 0
    yield db, wal
    conn.close()


# ------------------------------------------------------------------------------ export (the database survives)
@pytest.mark.timeout(120)
def test_export_onto_the_live_database_or_its_wal_is_refused_and_both_stay_intact(live, tmp_path):
    db, wal = live
    env = cqt_env(tmp_path, CQT_DB=str(db))
    before = fingerprint(db), fingerprint(wal)
    hard = tmp_path / "hard.parquet"
    os.link(db, hard)
    sym = tmp_path / "sym.parquet"
    sym.symlink_to(db)
    other = tmp_path / "other.sqlite"
    shutil.copyfile(db, other)
    for target, why in ((db, "the database"), (wal, "-wal"), (hard, "the database"), (sym, "the database"),
                        (other, "SQLite")):
        r = export(env, target, db=db)
        assert r.returncode == 2, (target, r.stdout, r.stderr)
        line = one_line(r.stderr)
        assert "refusing to write" in line and why in line, line
    # the configured default database (CQT_DB, no --db) is as protected, by a relative path too
    r = export(env, os.path.relpath(db, Path.cwd()))
    assert r.returncode == 2 and "the database" in one_line(r.stderr)
    assert (fingerprint(db), fingerprint(wal)) == before
    assert os.path.samefile(hard, db) and sym.is_symlink()
    assert query(db, "SELECT COUNT(*) FROM export_runs") == [(0,)]
    assert not temps(tmp_path)
    # the same database exports fine to a real target, and again over its own previous output
    out = tmp_path / "ds" / "btc.parquet"
    for _ in range(2):
        r = export(env, out, db=db)
        assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"PAR1"


@pytest.mark.timeout(60)
def test_export_refuses_devices_fifos_and_foreign_files(tmp_path):
    db = make_db(tmp_path / "cqt.db")
    env = cqt_env(tmp_path, CQT_DB=str(db))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    targets = [fifo]
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))      # a /dev/null of our own
        targets.append(null)
    except PermissionError:
        pass
    passwd = tmp_path / "passwd-copy"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq
    theirs = tmp_path / "research.parquet"          # a real Parquet file, not written by cqt
    pq.write_table(pa.table({"x": [1, 2, 3]}), theirs)
    dangling = tmp_path / "dangling.parquet"
    dangling.symlink_to(tmp_path / "nowhere" / "x.parquet")
    link_to_fifo = tmp_path / "to-fifo.parquet"
    link_to_fifo.symlink_to(fifo)
    targets += [passwd, theirs, dangling, link_to_fifo]
    before = {t: fingerprint(t) for t in targets}
    for t in targets:
        r = export(env, t)
        assert r.returncode == 2, (t, r.stderr)
        assert "refusing to write" in one_line(r.stderr)
    assert {t: fingerprint(t) for t in targets} == before
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    if null in before:
        assert stat.S_ISCHR(os.stat(null).st_mode)
    assert not (tmp_path / "nowhere").exists() and not temps(tmp_path)
    directory = tmp_path / "dir.parquet"
    directory.mkdir()
    r = export(env, directory)
    assert r.returncode == 2 and directory.is_dir()


# ------------------------------------------------------------------------------ --last is bounded
@pytest.mark.timeout(60)
def test_last_beyond_the_accepted_span_is_a_usage_error(tmp_path):
    db = make_db(tmp_path / "cqt.db", seconds=120)
    env = cqt_env(tmp_path, CQT_DB=str(db))
    out = tmp_path / "x.parquet"
    for value in ("99999999999d", "9" * 400 + "d", "33238d"):
        r = run_bin("cqt-export", "--output", out, "--last", value, env=env)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and sum("Error" in ln for ln in r.stderr.splitlines()) == 1, r.stderr
        assert "--last" in r.stderr
    assert not out.exists()


@pytest.mark.timeout(120)
def test_longest_accepted_last_needs_no_memory_for_the_empty_years(tmp_path):
    """--last 33237d (2009..2100) over 4 minutes of data: memory follows the data, not the range
    (a 1 s grid over the range would be 23 GB). Capped at 3 GiB of address space."""
    db = make_db(tmp_path / "cqt.db", seconds=300)
    env = cqt_env(tmp_path, CQT_DB=str(db))
    out = tmp_path / "long.parquet"

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    r = subprocess.run([str(program_path("cqt-export")), "--output", str(out), "--horizon", "10", "--last", "33237d",
                        "--no-record", "--json"], env=env, capture_output=True, text=True, timeout=100,
                       preexec_fn=cap)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] > 0


# ------------------------------------------------------------------------------ report and plots
def report_env(tmp_path: Path, db: Path) -> dict[str, str]:
    return cqt_env(tmp_path, CQT_DB=str(db), CQT_REPORT_JOURNAL="events")


def add_check_runs(db: Path, n: int = 30) -> None:
    conn = open_db(db)
    conn.executemany("INSERT INTO check_runs (ts_ms, check_name, window_s, exit_code, summary_json) "
                     "VALUES (?, 'run_pipeline_checks', 600, ?, '{}')",
                     [(T + k * 60 * S, k % 3 == 0) for k in range(n)])
    conn.close()


@pytest.mark.timeout(60)
def test_report_refuses_a_foreign_file_before_appending_anything(tmp_path):
    db = make_db(tmp_path / "cqt.db", seconds=120)
    env = report_env(tmp_path, db)
    passwd = tmp_path / "passwd-copy"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n")
    notes = tmp_path / "notes.md"
    notes.write_text("# my own notes, no blocks\n", encoding="utf-8")
    before = fingerprint(passwd), fingerprint(notes), fingerprint(db)
    r = run_bin("cqt-report", "--out", passwd, "--as-of", str(T + 100 * S), env=env)
    assert r.returncode == 2 and "not a cqt report" in one_line(r.stderr), r.stderr
    r = run_bin("cqt-report", "--out", notes, "--as-of", str(T + 100 * S), env=env)
    assert r.returncode == 1 and "none of the cqt blocks" in one_line(r.stderr), r.stderr
    r = run_bin("cqt-report", "--out", db, "--as-of", str(T + 100 * S), env=env)
    assert r.returncode == 2 and "the database" in one_line(r.stderr)
    assert (fingerprint(passwd), fingerprint(notes), fingerprint(db)) == before
    assert not list(tmp_path.glob("*.png")) and not temps(tmp_path)


@pytest.mark.timeout(90)
def test_report_refuses_a_png_it_did_not_write_and_replaces_its_own(tmp_path):
    db = make_db(tmp_path / "cqt.db", seconds=120)
    add_check_runs(db)
    env = report_env(tmp_path, db)
    out = tmp_path / "rep" / "run.md"
    r = run_bin("cqt-report", "--out", out, "--as-of", str(T + 3_600 * S), env=env)
    assert r.returncode == 0, r.stderr
    ours = out.parent / "run-checks.png"
    assert outputs.png_text_chunks(ours).get("Software") == "cqt"
    r = run_bin("cqt-report", "--out", out, "--as-of", str(T + 3_600 * S), env=env)
    assert r.returncode == 0, r.stderr
    # somebody's picture under a plot's name: neither replaced nor removed, and the report is not touched
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure()
    fig.savefig(out.parent / "run-price.png")      # matplotlib's own Software chunk
    plt.close(fig)
    theirs = out.parent / "run-price.png"
    before = fingerprint(theirs), fingerprint(out), fingerprint(ours)
    r = run_bin("cqt-report", "--out", out, "--as-of", str(T + 7_200 * S), env=env)
    assert r.returncode == 2 and "run-price.png" in one_line(r.stderr), r.stderr
    assert (fingerprint(theirs), fingerprint(out), fingerprint(ours)) == before
    assert not temps(out.parent)


def fill_disk(mnt: Path, leave: int) -> None:
    """Fill the tmpfs until at most `leave` bytes are free."""
    filler = mnt / "filler"
    with open(filler, "wb") as fh:
        try:
            while os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize > leave:
                fh.write(b"\0" * 1024)
                fh.flush()
        except OSError:
            pass


def test_write_atomic_on_a_full_disk_leaves_no_temp_and_the_old_file(tiny_disk):
    target = tiny_disk / "out.bin"
    outputs.write_atomic(target, b"old")
    fill_disk(tiny_disk, leave=4096)
    for kw in ({"data": b"x" * 200_000}, {"write": lambda tmp: tmp.write_bytes(b"y" * 200_000)}):
        with pytest.raises(OSError) as ei:
            outputs.write_atomic(target, **kw)
        assert ei.value.errno == 28
        assert target.read_bytes() == b"old" and not temps(tiny_disk)


def settings_for(tmp_path: Path, db: Path, **env: str):
    return load_settings({"CQT_ENV_FILE": str(tmp_path / "no.env"), "CQT_DB": str(db),
                          "CQT_DATASET_DIR": str(tmp_path / "datasets"), "CQT_REPORT": str(tmp_path / "r" / "rep.md"),
                          "CQT_REPORT_JOURNAL": "events", **env})


@pytest.mark.timeout(120)
def test_report_plots_on_a_full_disk_leave_no_png_tmp(tmp_path, tiny_disk):
    """The disk fills at every point of the report's writes (plots of ~55 KB, then the report), in
    8 KiB steps: whichever write hits ENOSPC, no temp file is left and finished files are whole."""
    from cqt.report.update import update_report

    db = make_db(tmp_path / "cqt.db", seconds=120)
    add_check_runs(db)
    st = settings_for(tmp_path, db)
    failures = 0
    for leave in range(0, 64 * 1024, 8192):
        for p in tiny_disk.iterdir():
            p.unlink()
        fill_disk(tiny_disk, leave)
        try:
            update_report(st, tiny_disk / "run.md", as_of_ms=T + 3_600 * S)
        except OSError as exc:
            assert exc.errno == 28
            failures += 1
        assert not temps(tiny_disk), (leave, sorted(p.name for p in tiny_disk.iterdir()))
        for png in tiny_disk.glob("*.png"):
            assert outputs.png_text_chunks(png).get("Software") == "cqt"     # complete up to its text chunk
    assert failures > 0
    # the program: exit 74 with one line, nothing half-written
    for p in tiny_disk.iterdir():
        p.unlink()
    fill_disk(tiny_disk, leave=6 * 1024)
    r = run_bin("cqt-report", "--out", tiny_disk / "run.md", "--as-of", str(T + 3_600 * S),
                env=report_env(tmp_path, db))
    assert r.returncode == 74, r.stderr
    assert "No space left" in one_line(r.stderr)
    assert not temps(tiny_disk) and not (tiny_disk / "run.md").exists()


# ------------------------------------------------------------------------------ nightly and captures
@pytest.mark.timeout(60)
def test_nightly_steps_refuse_foreign_files_and_keep_them(tmp_path):
    db = make_db(tmp_path / "cqt.db", seconds=400)
    st = settings_for(tmp_path, db)
    ds = tmp_path / "datasets"
    ds.mkdir()
    foreign = ds / "btc_1h.parquet"
    foreign.write_text("someone's notes\n")
    before = fingerprint(foreign)
    step, res = step_export(st, "export_1h", foreign, "1h", 10, "fixed:0.001")
    assert step.code == 2 and res is None and "refusing to write" in step.detail
    assert fingerprint(foreign) == before
    step, res = step_export(st, "export_24h", ds / "btc_24h.parquet", "24h", 10, "fixed:0.001")
    assert step.code == 0, step.detail
    day_file = ds / "btc_20260213.parquet"
    day_file.write_text("not a dataset\n")
    with pytest.raises(outputs.OutputRefused):
        dated_copy(st, res)
    assert day_file.read_text() == "not a dataset\n"
    (tmp_path / "r").mkdir()
    st.report.write_text("# an operator's file\n")
    step = step_report(st)
    assert step.code == 1 and "none of the cqt blocks" in step.detail
    assert st.report.read_text() == "# an operator's file\n"


def test_capture_writer_appends_only_to_a_capture(live, tmp_path):
    db, wal = live
    before = fingerprint(db), fingerprint(wal)
    for target in (db, wal, Path(f"{db}-shm")):
        with pytest.raises(outputs.OutputRefused):
            CaptureWriter(target, db_path=db)
    with pytest.raises(outputs.OutputRefused):
        CaptureWriter(db)                   # without db_path: still a SQLite file
    assert (fingerprint(db), fingerprint(wal)) == before
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("hello\n")
    with pytest.raises(outputs.OutputRefused):
        CaptureWriter(foreign)
    assert foreign.read_text() == "hello\n"
    fifo = tmp_path / "cap.fifo"
    os.mkfifo(fifo)
    with pytest.raises(outputs.OutputRefused):
        CaptureWriter(fifo)
    # a capture (plain, gzip, or gzip cut by a kill before its first full line) is appended to
    for name in ("cap.jsonl", "cap.jsonl.gz"):
        w = CaptureWriter(tmp_path / name, rotate=False)
        w.ws("upbit", '{"type":"trade"}', T)
        w.close()
        w = CaptureWriter(tmp_path / name, rotate=False)
        w.ws("upbit", '{"type":"trade"}', T + 1)
        w.close()
    assert len((tmp_path / "cap.jsonl").read_text().splitlines()) == 2
    assert len(gzip.decompress((tmp_path / "cap.jsonl.gz").read_bytes()).splitlines()) == 2
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(b'{"recv_ts_ms":1771000000000,"source":"upbit","raw":"{\\"ty')[:-12])
    CaptureWriter(cut, rotate=False).close()


def test_guard_rules_directly(tmp_path):
    """The guard's answers for each kind, without a program around it."""
    db = make_db(tmp_path / "cqt.db", seconds=30)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert outputs.guard_output(empty, "parquet", db_path=db) == empty          # nothing to lose
    assert outputs.guard_output(tmp_path / "new" / "x.md", "report") == tmp_path / "new" / "x.md"
    journal = tmp_path / "x.db-journal"
    journal.write_bytes(b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7" + b"\0" * 100)
    for path, kind in ((journal, "capture"), (tmp_path, "report"), (db, "png")):
        with pytest.raises(outputs.OutputRefused) as ei:
            outputs.guard_output(path, kind)
        assert ei.value.code == 2 and "\n" not in str(ei.value)
    link = tmp_path / f"link-{uuid.uuid4().hex}.md"
    real = tmp_path / "real.md"
    real.write_text("<!-- cqt:begin status -->\nx\n<!-- cqt:end status -->\n")
    link.symlink_to(real)
    assert outputs.guard_output(link, "report") == real                       # symlinks resolved


# ------------------------------------------------------------------------------ synth
@pytest.mark.timeout(60)
def test_synth_requires_db_and_never_falls_back_to_cqt_db(tmp_path):
    env = cqt_env(tmp_path)
    r = run_bin("cqt", "synth", "--hours", "0.01", env=env)
    assert r.returncode == 2 and "--db is required" in one_line(r.stderr)
    assert not Path(env["CQT_DB"]).exists()


@pytest.mark.timeout(180)
def test_synth_refuses_a_collected_database_unless_forced(tmp_path):
    db = make_db(tmp_path / "live.db", seconds=30)
    conn = open_db(db)
    conn.execute("INSERT INTO service_runs (service, pid, start_ts_ms) VALUES ('cqt-collect-binance', 4242, ?)", (T,))
    conn.close()
    replayed = make_db(tmp_path / "replayed.db", seconds=30)
    conn = open_db(replayed)
    conn.execute("INSERT INTO upbit_trades (code, sequential_id, trade_ts_ms, recv_ts_ms, price, volume, side) "
                 "VALUES ('KRW-BTC', 1, ?, ?, 1.0, 1.0, 'buy')", (T, T + 40))
    conn.close()
    env = cqt_env(tmp_path, CQT_COINGLASS_INTERVAL="5m")
    args = ("--hours", "0.01", "--end", "2026-02-13T17:00:00Z")
    for path, why in ((db, "cqt-collect-binance ran there as pid 4242"), (replayed, "upbit_trades has rows")):
        before = fingerprint(path)
        r = run_bin("cqt", "synth", *args, "--db", path, env=env, timeout=60)
        assert r.returncode == 2, r.stderr
        line = one_line(r.stderr)
        assert "holds collected data" in line and why in line and "--force" in line, line
        assert fingerprint(path) == before
    r = run_bin("cqt", "synth", *args, "--db", db, "--force", "--json", env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"]["binance_agg_trades"] > 0
    # a synthetic database stays writable for synth (a re-run), without --force
    fresh = tmp_path / "synthetic.db"
    for _ in range(2):
        r = run_bin("cqt", "synth", *args, "--db", fresh, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
