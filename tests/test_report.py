"""cqt-report: milestones, blocks, idempotence, run log, top-5 warnings/errors, plots, CLI."""
from __future__ import annotations

import json
import os
import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pandas  # noqa: F401 - imported before freezegun patches datetime (C extensions check its size)
import pyarrow.parquet  # noqa: F401
import pytest
from freezegun import freeze_time

from cqt import bookkeeping, journal
from cqt.config import load_settings
from cqt.db import open_db
from cqt.report import blocks, context, sections
from cqt.report.text import fmt_duration
from cqt.report.update import ReportOutcome, update_report
from cqt.timeutil import parse_time_ms
from helpers import cqt_env, run_bin

EXPECTED = Path(__file__).resolve().parent / "expected"
S = parse_time_ms("2026-02-22T01:00:00Z")       # collection start: first collector heartbeat
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
SECRET = "cgSECRETkey1234567"
COLLECTORS = bookkeeping.COLLECTORS
BLOCK_ORDER = ("status", "dod", "checks-oneclick", "checks-modules", "export-1h", "export-24h", "operations",
               "top-errors")


# ------------------------------------------------------------------------------ the scenario
def _module_summary(name: str, code: int, ts: int, failed: list[str] = ()) -> str:
    if code == 0:
        return json.dumps({"status": "PASS", "exit_code": 0, "summary": f"{name}: PASS (10 metrics) window=600s",
                           "error": None, "metrics": 10, "skipped": 0, "failed": []})
    return json.dumps({"status": "FAIL", "exit_code": code, "summary": f"{name}: FAIL window=600s", "error": None,
                       "metrics": 10, "skipped": 0,
                       "failed": [{"name": f, "value": 42.0, "op": "<=", "threshold": 10.0, "status": "FAIL",
                                   "reason": "stale"} for f in failed]})


def build_scenario(db: Path, datasets: Path, gap_binance_at: int | None = S + 24 * HOUR + 30 * MIN) -> Path:
    """25 h of a run: 4 collectors heartbeating every 10 s, checks every 10 min (a failure at
    start+0 and start+1 h), the 1 h and 24 h exports, restarts and warnings."""
    conn = open_db(db)
    conn.execute("BEGIN")
    hb = []
    for svc in COLLECTORS:
        for t in range(S, S + 25 * HOUR + 1, 10_000):
            in_gap = gap_binance_at is not None and gap_binance_at <= t < gap_binance_at + 70_000
            if svc == "cqt-collect-binance" and in_gap:
                continue                                   # a 70 s hole: longer than 3 x 10 s
            hb.append((svc, t, "running", "{}"))
    for t in range(S + 3_000, S + 25 * HOUR + 1, 10_000):
        hb.append(("cqt-aggregate", t, "running", "{}"))
    conn.executemany("INSERT INTO heartbeats (service, ts_ms, state, detail) VALUES (?,?,?,?)", hb)
    runs = [(svc, 100 + i, S + (0 if i == 0 else 5_000), None, None, None) for i, svc in enumerate(COLLECTORS)]
    runs[3] = ("cqt-poll-coinglass", 103, S + 5_000, S + 2 * HOUR, 1, "unexpected error: KeyError: 'data'")
    runs.append(("cqt-poll-coinglass", 203, S + 2 * HOUR + 5_000, None, None, None))
    runs.append(("cqt-collect-upbit", 200, S + 6 * HOUR, None, None, None))      # the first run has no stop: kill -9
    runs.append(("cqt-aggregate", 300, S + 3_000, S + 12 * HOUR, 0, "signal SIGTERM"))
    runs.append(("cqt-aggregate", 301, S + 12 * HOUR + 2_000, None, None, None))
    conn.executemany("INSERT INTO service_runs (service, pid, start_ts_ms, stop_ts_ms, exit_code, reason) "
                     "VALUES (?,?,?,?,?,?)", runs)
    ev = [
        (S + 2 * MIN, "cqt-collect-binance", "WARNING", "database busy, still retrying waited_s=35 attempts=12", 1),
        (S + 20 * MIN, "cqt-collect-binance", "WARNING", "reconnecting in 8 s after connection closed", 5),
        (S + 70 * MIN, "cqt-collect-binance", "WARNING", "reconnecting in 16 s after connection closed", 3),
        (S + 30 * MIN, "cqt-poll-binance", "WARNING", "HTTP 429 from /fapi/v1/openInterest, retry after 30 s", 12),
        (S + 2 * HOUR - 1_000, "cqt-poll-coinglass", "ERROR", "unexpected error, exiting: KeyError: 'data'", 1),
        (S + 5 * HOUR, "cqt-collect-upbit", "WARNING", "stall: no frame for 20 s, reconnecting", 2),
        (S + 7 * HOUR, "cqt-aggregate", "WARNING", "late trades: 3 rows after their second was written", 4),
        (S + 8 * HOUR, "cqt-poll-coinglass", "ERROR", f"HTTP 500 from coinglass key {SECRET} apikey={SECRET}", 6),
    ]
    conn.executemany("INSERT INTO events (ts_ms, last_ts_ms, hour_ms, service, level, message, count) "
                     "VALUES (?,?,?,?,?,?,?)", [(t, t, t - t % HOUR, s, lv, m, c) for t, s, lv, m, c in ev])
    chk = []
    for k in range(0, 25 * 6 + 1):
        t = S + k * 10 * MIN
        codes = {m: 0 for m in bookkeeping.MODULES}
        failed: dict[str, list[str]] = {}
        if k == 0:
            codes["coinglass_check"] = 1
            failed["coinglass_check"] = ["coinglass.open_interest.ok_calls"]
        if k == 6:
            codes["altdata_check"] = 1
            failed["altdata_check"] = ["binance.aggTrade.lag_s", "binance.markPrice.fill"]
        for i, m in enumerate(bookkeeping.MODULES):      # the runner records each check, then itself
            chk.append((t + 100 * i, m, 600, t, codes[m], _module_summary(m, codes[m], t, failed.get(m, []))))
        rc = max(codes.values())
        chk.append((t + 500, "run_pipeline_checks", 600, t, rc, json.dumps(
            {"status": "PASS" if rc == 0 else "FAIL", "exit_code": rc, "summary": "run_pipeline_checks: ...",
             "checks": codes})))
    conn.executemany("INSERT INTO check_runs (ts_ms, check_name, window_s, as_of_ts_ms, exit_code, summary_json) "
                     "VALUES (?,?,?,?,?,?)", chk)
    datasets.mkdir(parents=True, exist_ok=True)
    for name, ts, lo, hi, rows, labels, size in (
            ("btc_1h.parquet", S + HOUR, S + 1_000, S + HOUR, 3480, {"UP": 1003, "DOWN": 1356, "NONE": 1121}, 721_398),
            ("btc_24h.parquet", S + DAY, S + 1_000, S + DAY, 86278, {"UP": 27370, "DOWN": 28309, "NONE": 30599},
             17_824_517)):
        out = datasets / name
        out.write_bytes(b"\0" * 1024)       # the report checks the file exists; it does not read it
        drops = {"label_pending": 120, "label_ts_violation": 0, "missing_features": 0, "no_label": 2,
                 "stale_source": 0}
        vol = {"sigma_1s": 2.11e-4, "per_horizon": 2.11e-4 * 120 ** 0.5, "annualized": 2.11e-4 * 31_536_000 ** 0.5}
        conn.execute("INSERT INTO export_runs (ts_ms, output, size_bytes, rows, horizon_sec, threshold, from_ts_ms, "
                     "to_ts_ms, drops_json, labels_json, volatility, summary_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     (ts, str(out), size, rows, 120, "fixed:0.001", lo, hi, json.dumps(drops), json.dumps(labels),
                      vol["annualized"], json.dumps({"candidates": rows + 122, "volatility": vol})))
    conn.execute("COMMIT")
    conn.close()
    return db


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    d = tmp_path_factory.mktemp("scenario")
    return build_scenario(d / "cqt.db", d / "datasets")


def settings_for(db: Path, tmp_path: Path, **env):
    base = {"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(db), "CQT_REPORT": str(tmp_path / "reports" / "step-alt-5.md"),
            "COINGLASS_API_KEY": SECRET, "CQT_REPORT_JOURNAL": "events"}
    base.update(env)
    return load_settings(base)


def fill(settings, at_ms: int, **kw) -> ReportOutcome:
    with freeze_time(datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc)):
        return update_report(settings, plots=kw.pop("plots", False), journal_mode="events", **kw)


def blocks_text(path: Path) -> str:
    """The generated parts of a report, in a fixed order, for comparison with tests/expected."""
    b = blocks.find_blocks(path.read_text(encoding="utf-8"))
    names = [n for n in BLOCK_ORDER] + sorted(n for n in b if n.startswith(blocks.RUN_LOG_PREFIX))
    return "".join(f"<!-- {n} -->\n{b[n]}" for n in names)


def strip_blocks(text: str) -> str:
    return blocks.BLOCK_RE.sub(lambda m: f"<!-- {m.group('name')} -->", text)


def check_expected(name: str, actual: str) -> None:
    path = EXPECTED / name
    if os.environ.get("CQT_UPDATE_EXPECTED") == "1":
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8"), f"differs from {path} (CQT_UPDATE_EXPECTED=1 rewrites it)"


# ------------------------------------------------------------------------------ milestones
@pytest.mark.parametrize("label,offset", [("5m", 5 * MIN), ("10m", 10 * MIN), ("1h", HOUR), ("24h", DAY)])
def test_report_at_milestones(scenario, tmp_path, label, offset):
    """Checks start on the 10-minute marks and take about half a second: the report one second
    after each milestone sees the run of that milestone."""
    st = settings_for(scenario, tmp_path)
    res = fill(st, S + offset + 1_000)
    assert res.written and res.missing_blocks == []
    text = blocks_text(res.path)
    check_expected(f"report_{label}.md", text)
    b = blocks.find_blocks(res.path.read_text(encoding="utf-8"))
    assert SECRET not in res.path.read_text(encoding="utf-8")
    if label == "5m":
        # nothing of section 4 is known 5 minutes in
        for name in ("checks-oneclick", "checks-modules"):
            cells = [c.strip() for line in b[name].splitlines()[2:] for c in line.strip("|").split("|")[1:]]
            assert all(c in ("⏳", "") for c in cells), b[name]
        assert "[ ]" in b["dod"] and "[x]" not in b["dod"]
    if label == "10m":
        assert "| 10분 후 | 0 | ✅ PASS" in b["checks-oneclick"] and "| 1시간 후 | ⏳ | ⏳ |" in b["checks-oneclick"]
    if label == "1h":
        assert "| 1시간 후 | 1 | ❌ FAIL — altdata_check FAIL" in b["checks-oneclick"]
        assert "| 파일 크기 | 704.5 KiB (721,398 bytes) |" in b["export-1h"] and "⏳" in b["export-24h"]
    if label == "24h":
        assert "⏳" not in "".join(b[n] for n in sections.SECTION_BLOCKS)
        assert b["dod"].count("[x]") == 4, b["dod"]
        assert "24시간 0분" in b["operations"]


def test_gap_breaks_continuity(scenario, tmp_path):
    res = fill(settings_for(scenario, tmp_path), S + 25 * HOUR)
    ops = blocks.find_blocks(res.path.read_text(encoding="utf-8"))["operations"]
    # the last heartbeat before the 70 s hole is at +24 h 29 min 50 s
    assert "cqt-collect-binance: 최장 24시간 29분, 끊김 1회" in ops and "cqt-poll-binance: 최장 25시간 0분" in ops
    assert "- 연속 구동 시간: 24시간 29분 (2026-02-22 01:00 UTC → 2026-02-23 01:29 UTC" in ops
    assert "cqt-poll-coinglass: exit 1 — unexpected error: KeyError: 'data' (1회" in ops
    assert "마지막 오류: unexpected error, exiting: KeyError: 'data'" in ops
    assert "cqt-collect-upbit: 기록 없이 종료" in ops and "cqt-aggregate: exit 0 — signal SIGTERM" in ops


def test_heartbeat_spans_and_intersection():
    spans = context.heartbeat_spans([0, 10, 20, 51, 60, 70, 200], 30)
    assert spans == [(0, 20), (51, 70), (200, 200)]
    assert context.intersect([(0, 100), (150, 300)], [(50, 200)]) == [(50, 100), (150, 200)]
    assert context.overlap_ms([(0, 100), (150, 300)], 50, 200) == 100
    assert fmt_duration(DAY) == "24시간 0분" and fmt_duration(3 * DAY + HOUR) == "3일 1시간 0분"
    assert fmt_duration(90_000) == "1분 30초"


# ------------------------------------------------------------------------------ in place, idempotent
def test_operator_text_preserved_and_runs_idempotent(scenario, tmp_path):
    st = settings_for(scenario, tmp_path)
    res = fill(st, S + HOUR)
    text = res.path.read_text(encoding="utf-8")
    # the operator writes around the blocks (also right next to the markers, and odd whitespace)
    text = text.replace("> **작업일시**: (운영자 기입)", "> **작업일시**: 2026-02-22 10:00 KST  ")
    text = text.replace("<!-- cqt:end operations -->\n",
                        "<!-- cqt:end operations -->\n메모: 새벽 3시 네트워크 점검\t \n")
    text = text.replace("## 7. 리스크/주의사항", "## 7. 리스크/주의사항\n\n운영자 메모 ✍️ — 표 밖의 글은 그대로\r")
    text += "\n끝에 붙인 운영자 메모\n"
    res.path.write_text(text, encoding="utf-8", newline="")
    before = strip_blocks(text)
    res2 = fill(st, S + DAY)
    after = res2.path.read_bytes().decode("utf-8")
    assert res2.written
    # outside the blocks: identical, except the new dated run-log block appended at the end
    assert strip_blocks(after).startswith(before)
    assert strip_blocks(after)[len(before):] in ("\n<!-- run-log:2026-02-23 -->\n", "<!-- run-log:2026-02-23 -->\n")
    first = res2.path.read_bytes()
    mtime = res2.path.stat().st_mtime_ns
    res3 = fill(st, S + DAY)
    assert not res3.written and res2.path.read_bytes() == first and res2.path.stat().st_mtime_ns == mtime
    # a second, fresh report at the same time gives the same blocks
    other = tmp_path / "other.md"
    fill(st, S + DAY, out=other)
    assert blocks.find_blocks(other.read_text(encoding="utf-8")) == \
        {k: v for k, v in blocks.find_blocks(after).items() if k != "run-log:2026-02-22"}


def test_run_log_section_replaced_on_same_day(scenario, tmp_path):
    st = settings_for(scenario, tmp_path)
    fill(st, S + HOUR)                                    # 2026-02-22
    path = st.report
    fill(st, S + 2 * HOUR)                                # same date: replaced, not duplicated
    text = path.read_text(encoding="utf-8")
    assert text.count("<!-- cqt:begin run-log:2026-02-22 -->") == 1
    assert "→ 2026-02-22 03:00 UTC" in blocks.find_blocks(text)["run-log:2026-02-22"]
    path.write_text(text + "운영자: 첫날 메모\n", encoding="utf-8")
    fill(st, S + 23 * HOUR)                               # 2026-02-23: a new section after the memo
    fill(st, S + 23 * HOUR + 30 * MIN)
    text = path.read_text(encoding="utf-8")
    assert text.count("<!-- cqt:begin run-log:2026-02-23 -->") == 1
    assert text.index("run-log:2026-02-22") < text.index("운영자: 첫날 메모") < text.index("run-log:2026-02-23")
    day2 = blocks.find_blocks(text)["run-log:2026-02-23"]
    assert "→ 2026-02-23 00:30 UTC" in day2
    assert "→ 2026-02-22 03:00 UTC" in blocks.find_blocks(text)["run-log:2026-02-22"]      # the old day stays


# ------------------------------------------------------------------------------ top 5
def _top_lines(block: str) -> list[str]:
    return [ln for ln in block.splitlines() if re.match(r"^\d\. ", ln)]


def test_top5_from_events_grouped_ranked_redacted(scenario, tmp_path):
    res = fill(settings_for(scenario, tmp_path), S + DAY)
    block = blocks.find_blocks(res.path.read_text(encoding="utf-8"))["top-errors"]
    lines = _top_lines(block)
    assert len(lines) == 5
    assert "출처: events 테이블" in block and "경고/오류 34건" in block
    assert re.match(r"^1\. +12회 +WARNING +cqt-poll-binance +HTTP 429", lines[0])
    assert re.match(r"^2\. +8회 +WARNING +cqt-collect-binance +reconnecting in 16 s", lines[1])   # 8 s + 16 s grouped
    assert re.match(r"^3\. +6회 +ERROR +cqt-poll-coinglass +HTTP 500 from coinglass key \*\*\* apikey=\*\*\*$",
                    lines[2])
    assert SECRET not in block


JOURNAL_SAMPLE = EXPECTED / "journal_sample.jsonl"


def test_top5_from_recorded_journal_export(scenario, tmp_path):
    lines = JOURNAL_SAMPLE.read_text(encoding="utf-8").splitlines()
    entries = list(journal.parse_journal(lines))
    assert {e.level for e in entries} == {"WARNING", "ERROR", "CRITICAL"}          # INFO lines ignored
    assert any(e.message.startswith("reconnecting") and e.service == "cqt-collect-binance" for e in entries)
    st = settings_for(scenario, tmp_path)
    res = fill(st, S + DAY, journal_lines=lines)
    block = blocks.find_blocks(res.path.read_text(encoding="utf-8"))["top-errors"]
    top = _top_lines(block)
    assert "출처: journal JSON 파일" in block
    assert re.match(r"^1\. +3회 +WARNING +cqt-collect-binance +reconnecting in \d+ s", top[0]), top
    assert SECRET not in block and "token=***" in block
    # the same lines through the live-journal path (a journalctl stand-in) give the same top 5
    calls = []

    def fake_journalctl(cmd):
        calls.append(cmd)
        import subprocess
        return subprocess.CompletedProcess(cmd, 0, "\n".join(lines) + "\n", "")

    conn = sqlite3.connect(scenario)
    got, source = journal.collect(conn, S, S + DAY, "auto", None, runner=fake_journalctl)
    assert source == "journal" and all(c[:3] == ["journalctl", "-u", "cqt-*"] and "json" in c for c in calls)
    assert any(c[-2:] == ["-p", "warning"] for c in calls)
    in_window = [e for e in entries if S <= e.ts_ms <= S + DAY]
    assert journal.top_messages(got, 5, (SECRET,)) == journal.top_messages(in_window, 5, (SECRET,))
    # no journal (journalctl finds nothing for cqt-*): the events table
    got, source = journal.collect(conn, S, S + DAY, "auto", None,
                                  runner=lambda cmd: __import__("subprocess").CompletedProcess(cmd, 1, "", ""))
    assert source == "events" and got


def test_journal_line_parser():
    line = json.dumps({"__REALTIME_TIMESTAMP": "1771722000123456", "PRIORITY": "3",
                       "_SYSTEMD_UNIT": "cqt-aggregate.service",
                       "MESSAGE": "ERROR aggregate: catch-up failed (OperationalError: disk I/O error)\n    traceback"})
    e = journal.parse_journal_line(line)
    assert e == journal.LogEntry(1771722000123, "cqt-aggregate", "ERROR",
                                 "catch-up failed (OperationalError: disk I/O error)")
    raw = json.dumps({"__REALTIME_TIMESTAMP": "1771722000000000", "PRIORITY": "4", "SYSLOG_IDENTIFIER": "cqt-nightly",
                      "MESSAGE": list("bad \xff bytes".encode("latin-1"))})
    e = journal.parse_journal_line(raw)
    assert e.level == "WARNING" and e.service == "cqt-nightly" and e.message.startswith("bad ")
    assert journal.parse_journal_line(json.dumps({"PRIORITY": "6", "MESSAGE": "INFO x: ready"})) is None
    assert journal.parse_journal_line("not json") is None
    assert journal.scrub("GET /x?api_key=abc123&x=1 token: zzz", ()) == "GET /x?api_key=***&x=1 token: ***"


# ------------------------------------------------------------------------------ plots
def test_plots_are_png(tmp_path):
    from cqt.export.request import ExportRequest
    from cqt.export.run import run_export
    from test_export_symbols import derived_db

    db = derived_db(tmp_path / "cqt.db", S, 2 * 3600)
    conn = sqlite3.connect(db)
    conn.executemany("INSERT INTO check_runs (ts_ms, check_name, window_s, exit_code, summary_json) VALUES (?,?,?,?,?)",
                     [(S + k * 10 * MIN, n, 600, 1 if (k + i) % 7 == 0 else 0, "{}")
                      for k in range(12) for i, n in enumerate(["run_pipeline_checks", *bookkeeping.MODULES])])
    conn.commit()
    conn.close()
    with freeze_time(datetime.fromtimestamp((S + HOUR) / 1000, tz=timezone.utc)):
        run_export(db, ExportRequest(output=tmp_path / "ds" / "btc_24h.parquet", allow_missing=("all",)))
    st = settings_for(db, tmp_path)
    res = fill(st, S + 2 * HOUR, plots=True)
    names = sorted(p.name for p in res.plots)
    assert names == ["step-alt-5-checks.png", "step-alt-5-fill.png", "step-alt-5-labels.png", "step-alt-5-price.png"]
    import matplotlib.image as mpimg
    for p in res.plots:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
        img = mpimg.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert img.std() > 0.01                              # not a blank canvas
    block = blocks.find_blocks(res.path.read_text(encoding="utf-8"))["plots"]
    assert block.count("](step-alt-5-") == 4
    # a plot whose data is gone is not linked, and its old file is removed
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM check_runs")
    conn.commit()
    conn.close()
    res = fill(st, S + 2 * HOUR, plots=True)
    assert not (res.path.parent / "step-alt-5-checks.png").exists()
    assert "checks.png" not in blocks.find_blocks(res.path.read_text(encoding="utf-8"))["plots"]


# ------------------------------------------------------------------------------ CLI
def test_cli(scenario, tmp_path):
    env = cqt_env(tmp_path, CQT_DB=str(scenario), CQT_REPORT_JOURNAL="events")
    out = tmp_path / "r" / "report.md"
    r = run_bin("cqt-report", "--out", out, "--as-of", "2026-02-23T01:00:01Z", "--no-plots", "--json", env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["written"] and info["run_log_date"] == "2026-02-23" and info["exit_code"] == 0
    body = out.read_text(encoding="utf-8")
    assert "## 4. 점검 결과" in body and "| 24시간 후 | 0 | ✅ PASS" in body
    r = run_bin("cqt-report", "--out", out, "--as-of", "2026-02-23T01:00:01Z", "--no-plots", env=env)
    assert r.returncode == 0 and "unchanged" in r.stdout
    out.write_text("# my own notes, no blocks\n", encoding="utf-8")
    r = run_bin("cqt-report", "--out", out, "--no-plots", env=env)
    assert r.returncode == 1 and "none of the cqt blocks" in r.stderr
    assert out.read_text(encoding="utf-8").startswith("# my own notes")
    r = run_bin("cqt-report", "--db", tmp_path / "missing.db", "--out", out, env=env)
    assert r.returncode == 3 and "not found" in r.stderr
    r = run_bin("cqt-report", "--out", out, env={**env, "CQT_REPORT_JOURNAL": "maybe"})
    assert r.returncode == 78 and "CQT_REPORT_JOURNAL" in r.stderr


def test_milestone_takes_only_a_run_before_the_next_milestone(tmp_path):
    """Checks that ran only hours later do not pose as 'the 10-minute check'."""
    conn = open_db(tmp_path / "cqt.db")
    conn.executemany("INSERT INTO heartbeats (service, ts_ms, state) VALUES (?, ?, 'running')",
                     [(svc, t) for svc in COLLECTORS for t in range(S, S + 6 * HOUR + 1, 10_000)])
    conn.execute("INSERT INTO check_runs (ts_ms, check_name, window_s, exit_code, summary_json) "
                 "VALUES (?, 'run_pipeline_checks', 600, 0, '{}')", (S + 5 * HOUR,))
    conn.close()
    res = fill(settings_for(tmp_path / "cqt.db", tmp_path), S + 6 * HOUR)
    b = blocks.find_blocks(res.path.read_text(encoding="utf-8"))
    rows = b["checks-oneclick"].splitlines()[2:]
    assert rows[0] == "| 10분 후 | 기록 없음 | 기록 없음 |"
    assert rows[1].startswith("| 1시간 후 | 0 | ✅ PASS · 2026-02-22 06:00 UTC (시작 +5시간 0분)")
    assert rows[2] == "| 24시간 후 | ⏳ | ⏳ |"
    assert "| altdata_check | 기록 없음 | ⏳ |" in b["checks-modules"]
    assert "[ ] 본 문서" in b["dod"]


def test_not_running_once_every_collector_stopped_cleanly(scenario, tmp_path):
    """A stop that is the last thing the collectors did is not 'still running' (현재 구동 중)."""
    import shutil
    import sqlite3
    db = tmp_path / "stopped.db"
    shutil.copy(scenario, db)
    conn = sqlite3.connect(db)
    end = conn.execute("SELECT MAX(ts_ms) FROM heartbeats").fetchone()[0]
    for svc in bookkeeping.COLLECTORS:
        conn.execute("INSERT OR REPLACE INTO heartbeats VALUES (?, ?, 'stopped', '{}')", (svc, end + 1000))
    conn.commit()
    conn.close()
    text = fill(settings_for(db, tmp_path), end + 5000).path.read_text(encoding="utf-8")
    ops = blocks.find_blocks(text)["operations"]
    assert "종료/중단 시각:" in ops and "현재 구동 중" not in ops
    ops_running = blocks.find_blocks(fill(settings_for(scenario, tmp_path / "r"), end + 5000).path
                                     .read_text(encoding="utf-8"))["operations"]
    assert "현재 구동 중" in ops_running


# ------------------------------------------------------------------------------ many symbols
def _symbols_rows(text: str) -> list[list[str]]:
    body = blocks.find_blocks(text)["export-symbols"]
    return [[c.strip() for c in ln.split("|")[1:-1]] for ln in body.splitlines()[2:]]


def test_per_symbol_table_with_btc_only_is_one_row(scenario, tmp_path):
    out = fill(settings_for(scenario, tmp_path), S + 25 * HOUR)
    text = out.path.read_text(encoding="utf-8")
    (row,) = _symbols_rows(text)
    assert row[:3] == ["BTC", "`btc_24h.parquet`", "86,278"] and row[5] == "122 (0)"
    assert row[3] == "27,370 (31.7%) / 28,309 (32.8%) / 30,599 (35.5%)"
    # the blocks the plan names BTC in are what they were
    assert "86,278 (후보 86,400)" in blocks.find_blocks(text)["export-24h"]


def test_per_symbol_table_has_a_row_per_configured_asset(scenario, tmp_path):
    db = tmp_path / "cqt.db"
    db.write_bytes(scenario.read_bytes())
    eth = tmp_path / "eth_24h.parquet"
    eth.write_bytes(b"\0" * 512)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO export_runs (ts_ms, output, size_bytes, rows, horizon_sec, threshold, from_ts_ms, "
                 "to_ts_ms, drops_json, labels_json, volatility, summary_json, symbols) "
                 "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (S + DAY, str(eth), 512, 900, 120, "fixed:0.001", S + DAY - HOUR + 1000, S + DAY,
                  json.dumps({"label_ts_violation": 0, "no_label": 7}),
                  json.dumps({"UP": 300, "DOWN": 200, "NONE": 400}), None, "{}", "ETH"))
    # ETH's market_1s: the hour of its export, every other second with a trade
    conn.executemany("INSERT INTO market_1s (symbol, ts_ms, close, volume, trade_count, buy_volume, sell_volume, "
                     "has_trade) VALUES ('ETH', ?, 1, 0, 0, 0, 0, ?)",
                     [(t, (t // 1000) % 2) for t in range(S + DAY - HOUR + 1000, S + DAY + 1, 1000)])
    conn.commit()
    conn.close()
    out = fill(settings_for(db, tmp_path, CQT_SYMBOLS="BTC,ETH,SOL"), S + 25 * HOUR)
    rows = _symbols_rows(out.path.read_text(encoding="utf-8"))
    assert [r[0] for r in rows] == ["BTC", "ETH", "SOL"]
    assert rows[1] == ["ETH", "`eth_24h.parquet`", "900", "300 (33.3%) / 200 (22.2%) / 400 (44.4%)",
                       "100.0% · 50.0%", "7 (0)"]
    assert rows[2][2] == "⏳" and rows[2][4] == "0.0% · 0.0%"


def test_an_older_report_gains_the_per_symbol_block_after_the_24h_export(scenario, tmp_path):
    template = blocks.TEMPLATE.read_text(encoding="utf-8")
    start = template.index("### 자산별 Export")
    end = template.index("<!-- cqt:end export-symbols -->") + len("<!-- cqt:end export-symbols -->\n")
    old = template[:start] + template[end:]
    target = tmp_path / "reports" / "step-alt-5.md"
    target.parent.mkdir(parents=True)
    target.write_text(old, encoding="utf-8")
    out = fill(settings_for(scenario, tmp_path), S + 25 * HOUR)
    assert out.missing_blocks == []
    text = target.read_text(encoding="utf-8")
    assert text.index("<!-- cqt:end export-24h -->") < text.index("<!-- cqt:begin export-symbols -->") \
        < text.index("## 6.")
    assert len(_symbols_rows(text)) == 1
    # the operator's text is kept byte for byte; only the new block (and the run log at the end) is added
    expected = strip_blocks(old).replace("<!-- export-24h -->", "<!-- export-24h -->\n\n<!-- export-symbols -->")
    assert strip_blocks(text).startswith(expected)


def test_failing_metrics_are_shown_whatever_their_names(tmp_path):
    db = tmp_path / "cqt.db"
    conn = open_db(db)
    conn.executemany("INSERT INTO heartbeats (service, ts_ms, state, detail) VALUES (?,?,?,?)",
                     [(svc, S + k * 10_000, "running", "{}") for svc in COLLECTORS for k in range(61)])
    names = ["binance.ETHUSDT.aggTrade.lag_s", "upbit.KRW-USDT.trade.lag_s", "market_1s.SOL.coverage",
             "gaps.binance.BTCUSDT.aggTrade.open", "export.BTC.labels.UP.share"]
    conn.execute("INSERT INTO check_runs (ts_ms, check_name, window_s, as_of_ts_ms, exit_code, summary_json) "
                 "VALUES (?,?,?,?,?,?)", (S + 10 * MIN, "altdata_check", 600, S + 10 * MIN, 1,
                                          _module_summary("altdata_check", 1, S + 10 * MIN, names[:2])))
    conn.execute("INSERT INTO check_runs (ts_ms, check_name, window_s, as_of_ts_ms, exit_code, summary_json) "
                 "VALUES (?,?,?,?,?,?)", (S + 10 * MIN + 1, "feature_check", 600, S + 10 * MIN, 1,
                                          json.dumps({"exit_code": 1, "failed": names})))     # plain names
    conn.commit()
    conn.close()
    out = fill(settings_for(db, tmp_path), S + 11 * MIN)
    body = blocks.find_blocks(out.path.read_text(encoding="utf-8"))["checks-modules"]
    alt = next(ln for ln in body.splitlines() if ln.startswith("| altdata_check"))
    feat = next(ln for ln in body.splitlines() if ln.startswith("| feature_check"))
    assert "binance.ETHUSDT.aggTrade.lag_s, upbit.KRW-USDT.trade.lag_s" in alt
    assert ", ".join(names[:3]) + " 외 2개" in feat
