"""Monitoring hooks: healthchecks pings of the gate and the nightly (a local HTTP server), and the
Prometheus textfile metrics of the gate, the nightly and the aggregator (parsed back with
prometheus_client's parser and compared with the results they describe)."""
from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from freezegun import freeze_time
from prometheus_client.parser import text_string_to_metric_families

from cqt.aggregate.config import AggregateConfig
from cqt.aggregate.service import LiveAggregator, write_textfile
from cqt.config import load_settings
from cqt.features import FeatureParams
from cqt.monitor.capture import CapturedOutput, OutputTail
from cqt.monitor.healthchecks import BODY_MAX_BYTES, Pinger, exit_code_of, ping_url
from cqt.monitor.jobmetrics import AGGREGATE_FILE, gap_labels, reject_labels, stream_labels
from cqt.monitor.textfile import MetricSet, TextfileWriter
from fixtures_checks import AS_OF, COINGLASS_OK_ENV, LEAK_ENV, make_pipeline_db
from fixtures_raw import DirectWriter, at, make_raw_db
from helpers import CHECKS, ROOT, cqt_env, debian_tool, query, run_bin, start_bin, stop_proc, wait_for

pytestmark = pytest.mark.timeout(120)
ENV = {**LEAK_ENV, **COINGLASS_OK_ENV, "CQT_CHECK_LEAK_SAMPLES": "10"}
CHECK_UUID = "5f0c1d7e-3b9a-4c2e-9d41-7a6b2e8f0c13"
AS_OF_ARGS = ("--window", "600", "--as-of", str(AS_OF))


@pytest.fixture(scope="module")
def db_template(tmp_path_factory):
    return make_pipeline_db(tmp_path_factory.mktemp("monitor") / "pipeline.db")


# ------------------------------------------------------------------------------ stand-in servers
class PingServer:
    """A healthchecks stand-in on 127.0.0.1: records (path, rid, body) of every request."""

    def __init__(self) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                url = urlsplit(self.path)
                seen.append((url.path, parse_qs(url.query).get("rid", [None])[0], body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/ping/{CHECK_UUID}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def hc():
    server = PingServer()
    yield server
    server.close()


@pytest.fixture
def closed_port_url():
    """A URL on a port nothing listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/ping/{CHECK_UUID}"


@pytest.fixture
def silent_url():
    """A server that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"http://127.0.0.1:{s.getsockname()[1]}/ping/{CHECK_UUID}"
    s.close()


def gate(tmp_path, *args, umask: str = "022", **env):
    cmd = f"umask {umask}; bash {CHECKS / 'run_pipeline_checks.sh'} {' '.join(args)}; echo \"EXIT_CODE=$?\""
    return subprocess.run(["bash", "-c", cmd], env=cqt_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=90, cwd=str(ROOT))


def exit_code(p: subprocess.CompletedProcess) -> int:
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("EXIT_CODE="), p.stdout + p.stderr
    return int(last.split("=", 1)[1])


def warnings_of(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("WARNING") and "healthchecks" in ln]


def parse_prom(path: Path) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value}; asserts no sample carries a timestamp."""
    text = path.read_text(encoding="utf-8")
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert s.timestamp is None, s
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


# ------------------------------------------------------------------------------ healthchecks: the gate
def test_failing_gate_pings_start_then_1_with_the_failing_metric(db, tmp_path, hc):
    p = gate(tmp_path, *AS_OF_ARGS, CQT_DB=str(db), **{**ENV, "COINGLASS_API_KEY": ""}, CQT_HC_URL_CHECKS=hc.url)
    assert exit_code(p) == 1
    paths = [(path, rid) for path, rid, _ in hc.seen]
    rid = hc.seen[0][1]
    assert paths == [(f"/ping/{CHECK_UUID}/start", rid), (f"/ping/{CHECK_UUID}/1", rid)], hc.seen
    assert len(rid) == 36
    body = hc.seen[1][2].decode("utf-8")
    assert "coinglass_check: coinglass.key 0 ==1 FAIL" in body
    assert body.strip().endswith(p.stdout.strip().splitlines()[-2])       # the gate's summary line
    assert warnings_of(p.stderr) == []


def test_passing_gate_pings_0_and_a_new_run_id_each_time(db, tmp_path, hc):
    for _ in range(2):
        p = gate(tmp_path, *AS_OF_ARGS, CQT_DB=str(db), **ENV, CQT_HC_URL_CHECKS=hc.url)
        assert exit_code(p) == 0, p.stdout + p.stderr
    assert [path.rsplit("/", 1)[1] for path, _, _ in hc.seen] == ["start", "0", "start", "0"]
    rids = [rid for _, rid, _ in hc.seen]
    assert rids[0] == rids[1] != rids[2] == rids[3]
    assert b"run_pipeline_checks: PASS exit=0" in hc.seen[1][2]


def test_server_down_leaves_the_exit_code_and_logs_one_masked_warning(db, tmp_path, closed_port_url):
    for env, code in (({**ENV, "COINGLASS_API_KEY": ""}, 1), (ENV, 0)):
        p = gate(tmp_path, *AS_OF_ARGS, CQT_DB=str(db), **env, CQT_HC_URL_CHECKS=closed_port_url)
        assert exit_code(p) == code, p.stdout + p.stderr
        warned = warnings_of(p.stderr)
        assert len(warned) == 1, p.stderr
        assert "refused" in warned[0].lower() and "exit code is unchanged" in warned[0]
        assert f"{closed_port_url.split('/ping')[0]}/***" in warned[0]
        assert CHECK_UUID not in p.stderr + p.stdout and CHECK_UUID[:8] not in p.stderr


def test_server_that_never_answers_costs_one_timeout(db, tmp_path, silent_url):
    p = gate(tmp_path, *AS_OF_ARGS, CQT_DB=str(db), **{**ENV, "COINGLASS_API_KEY": ""},
             CQT_HC_URL_CHECKS=silent_url, CQT_HC_TIMEOUT_S="1")
    assert exit_code(p) == 1, p.stdout + p.stderr
    warned = warnings_of(p.stderr)
    assert len(warned) == 1 and "no answer within CQT_HC_TIMEOUT_S=1 s" in warned[0], p.stderr
    assert CHECK_UUID[:8] not in p.stderr


def test_pinger_gives_up_after_a_timeout_and_sends_nothing_more(silent_url, caplog):
    caplog.set_level(logging.DEBUG, logger="cqt.monitor")
    pinger = Pinger(silent_url, 0.3, job="t")
    pinger.start()
    pinger.finish(0, b"x")                      # waits for /start (bounded), then sends nothing
    assert pinger.gave_up and pinger.warned
    assert [r.levelname for r in caplog.records if r.name == "cqt.monitor"] == ["WARNING"]
    assert Pinger("ftp://example.invalid/x", 1.0).gave_up


def test_ping_url_keeps_the_query_and_exit_codes():
    assert ping_url("https://hc.example/ping/k/slug?create=1", "start", "R") == \
        "https://hc.example/ping/k/slug/start?create=1&rid=R"
    assert ping_url("https://hc-ping.com/u/", "0", "R") == "https://hc-ping.com/u/0?rid=R"
    assert [exit_code_of(e) for e in (None, SystemExit(None), SystemExit(3), SystemExit("bad"), KeyError())] == \
        [0, 0, 3, 1, 1]


def test_the_body_is_the_last_100_000_bytes_and_secrets_stay_out(tmp_path, hc):
    settings = load_settings({"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(tmp_path / "x.db"),
                                  "COINGLASS_API_KEY": "cg-secret-key-0123456789", "CQT_HC_URL_NIGHTLY": hc.url})
    from cqt.monitor.healthchecks import pinged_job

    with pytest.raises(SystemExit) as ended:
        with pinged_job(settings, "CQT_HC_URL_NIGHTLY", "job"):
            print("the first line, cut off")
            print("é" * 120_000)                # 2 bytes each: the cut lands between characters
            print("key cg-secret-key-0123456789 here")
            logging.getLogger("cqt.x").error("the last line")
            raise SystemExit(74)
    assert ended.value.code == 74
    assert [path.rsplit("/", 1)[1] for path, _, _ in hc.seen] == ["start", "74"]
    body = hc.seen[1][2]
    assert BODY_MAX_BYTES - 4 < len(body) <= BODY_MAX_BYTES
    text = body.decode("utf-8")                 # whole characters only
    assert text.startswith("é") and "the first line" not in text
    assert "key *** here" in text and "0123456789" not in text
    tail = OutputTail(10)
    tail.add("ab" + "é" * 10)
    assert tail.tail_bytes() == ("é" * 5).encode()


def test_capture_restores_the_streams():
    import sys
    before = (sys.stdout, sys.stderr)
    with CapturedOutput(100) as cap:
        print("hello")
        print("oops", file=sys.stderr)
    assert (sys.stdout, sys.stderr) == before
    assert cap.tail.text() == "hello\noops\n"


# ------------------------------------------------------------------------------ textfile: the gate
def test_checks_textfile_equals_the_json_and_check_runs(db, tmp_path):
    from fixtures_checks import execute
    hour = AS_OF - AS_OF % 3_600_000
    for source, reason, hour_ms, n in (("binance_ws", "bad json", hour, 3),
                                       ("binance_ws", "bad json", hour - 5 * 3_600_000, 4),
                                       ("upbit_ws", "unknown type", hour, 1)):     # no frames: ratio has no value
        execute(db, "INSERT INTO reject_counts (source, reason, hour_ms, count, last_ts_ms) VALUES (?, ?, ?, ?, ?)",
                (source, reason, hour_ms, n, hour_ms + 1000))
    prom_dir = tmp_path / "prom"
    p = gate(tmp_path, *AS_OF_ARGS, "--json", umask="077", CQT_DB=str(db),
             **{**ENV, "COINGLASS_API_KEY": ""}, CQT_TEXTFILE_DIR=str(prom_dir))
    assert exit_code(p) == 1
    out = json.loads(p.stdout.strip().splitlines()[0])
    path = prom_dir / "cqt_checks.prom"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644                    # whatever the umask
    assert stat.S_IMODE(prom_dir.stat().st_mode) == 0o755                # created by the gate
    assert sorted(os.listdir(prom_dir)) == ["cqt_checks.prom"]           # no temp file left
    m = parse_prom(path)
    by = {c["check"]: c for c in out["checks"]}
    assert m["cqt_check_exit_code"] == {(("check", c),): float(by[c]["exit_code"]) for c in by} | {
        (("check", "run_pipeline_checks"),): 1.0}
    runs = dict(query(db, "SELECT check_name, ts_ms FROM check_runs"))
    assert m["cqt_check_last_run_timestamp_seconds"] == {(("check", c),): ts / 1000 for c, ts in runs.items()}
    assert m["cqt_check_failed_metrics"][(("check", "coinglass_check"),)] == 1.0
    assert m["cqt_check_as_of_timestamp_seconds"] == {(): AS_OF / 1000}
    lag, fill = m["cqt_stream_lag_seconds"], m["cqt_stream_fill_ratio"]
    n_lag = n_fill = 0
    for metric in by["altdata_check"]["metrics"]:
        name, value = metric["name"], metric["value"]
        labels = stream_labels(name)
        if labels is None:
            continue
        key = (("stream", labels[0]), ("symbol", labels[1]))
        if labels[2] == "lag_s":
            n_lag += 1
            assert lag[key] == pytest.approx(value), name
            assert m["cqt_stream_lag_limit_seconds"][key] == metric["threshold"]
        elif labels[2] == "fill" and value is not None:
            n_fill += 1
            assert fill[key] == pytest.approx(value), name
    assert n_lag == len(lag) >= 10 and n_fill == len(fill) >= 8
    assert lag[(("stream", "binance.aggTrade"), ("symbol", "BTCUSDT"))] == pytest.approx(
        next(x["value"] for x in by["altdata_check"]["metrics"] if x["name"] == "binance.BTCUSDT.aggTrade.lag_s"))
    assert (("stream", "binance.ratios.taker_buy_sell"), ("symbol", "BTCUSDT")) in fill
    assert (("stream", "upbit.trade"), ("symbol", "KRW-USDT")) in lag
    assert set(m["cqt_gaps_open"].values()) == {0.0} and len(m["cqt_gaps_open"]) == len(lag)
    totals = {(k[1][1], k[0][1]): v for k, v in m["cqt_rejects_total"].items()}   # (source, reason)
    assert totals == {("binance_ws", "bad json"): 7.0, ("upbit_ws", "unknown type"): 1.0}
    ratios = {dict(k)["source"]: v for k, v in m["cqt_rejects_ratio"].items() if dict(k)["symbol"] == ""}
    assert ratios and ratios == {x["name"].split(".")[1]: x["value"] for x in by["altdata_check"]["metrics"]
                                 if x["name"].startswith("rejects.") and x["name"].count(".") == 2
                                 and x["value"] is not None}
    assert "upbit_ws" not in ratios


def test_an_open_gap_and_a_silent_stream_in_the_textfile(db, tmp_path):
    from fixtures_checks import execute
    execute(db, "INSERT INTO gaps (source, symbol, stream, detected_ts_ms, from_ts_ms, status) VALUES "
                "('binance_ws', 'BTCUSDT', 'BTCUSDT@aggTrade', ?, ?, 'open')", (AS_OF - 300_000, AS_OF - 310_000))
    execute(db, "DELETE FROM upbit_orderbook WHERE code = 'KRW-BTC'")
    prom_dir = tmp_path / "prom"
    p = gate(tmp_path, *AS_OF_ARGS, CQT_DB=str(db), **ENV, CQT_TEXTFILE_DIR=str(prom_dir))
    assert exit_code(p) == 1
    m = parse_prom(prom_dir / "cqt_checks.prom")
    assert m["cqt_gaps_open"][(("stream", "binance.aggTrade"), ("symbol", "BTCUSDT"))] == 1.0
    assert m["cqt_gaps_open"][(("stream", "upbit.trade"), ("symbol", "KRW-BTC"))] == 0.0
    assert m["cqt_stream_lag_seconds"][(("stream", "upbit.orderbook"), ("symbol", "KRW-BTC"))] == float("inf")
    assert m["cqt_stream_fill_ratio"][(("stream", "upbit.orderbook"), ("symbol", "KRW-BTC"))] == 0.0


def test_a_textfile_that_cannot_be_written_changes_nothing(db, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    p = gate(tmp_path, *AS_OF_ARGS, CQT_DB=str(db), **ENV, CQT_TEXTFILE_DIR=str(blocker / "prom"))
    assert exit_code(p) == 0, p.stdout + p.stderr
    warned = [ln for ln in p.stderr.splitlines() if ln.startswith("WARNING") and "textfile" in ln]
    assert len(warned) == 1 and "exit code is unchanged" in warned[0], p.stderr


def test_a_gate_that_cannot_evaluate_pings_3_and_says_so_in_its_file(tmp_path, hc):
    missing = tmp_path / "absent" / "cqt.db"
    p = gate(tmp_path, *AS_OF_ARGS, CQT_DB=str(missing), **ENV, CQT_HC_URL_CHECKS=hc.url,
             CQT_TEXTFILE_DIR=str(tmp_path / "prom"))
    assert exit_code(p) == 3
    assert [path.rsplit("/", 1)[1] for path, _, _ in hc.seen] == ["start", "3"]
    assert b"database not found" in hc.seen[1][2]
    m = parse_prom(tmp_path / "prom" / "cqt_checks.prom")
    assert set(m["cqt_check_exit_code"].values()) == {3.0} and len(m["cqt_check_exit_code"]) == 5
    assert "cqt_stream_lag_seconds" not in m and not missing.exists()


def test_textfile_writer_warns_once_until_a_write_succeeds(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="cqt.monitor")
    settings = load_settings({"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(tmp_path / "x.db"),
                              "CQT_TEXTFILE_DIR": str(tmp_path / "prom")})
    writer = TextfileWriter(settings, "t.prom", "t")

    def broken() -> MetricSet:
        raise TypeError("a bug in a builder")

    def warnings() -> int:
        return sum(r.levelname == "WARNING" for r in caplog.records)

    assert writer.write(broken) is False and writer.write(broken) is False and warnings() == 1
    ms = MetricSet()
    ms.gauge("cqt_t", "t").set(1)
    assert writer.write(ms) and (tmp_path / "prom" / "t.prom").read_text().endswith("cqt_t 1.0\n")
    assert writer.write(broken) is False and warnings() == 2
    off = TextfileWriter(load_settings({"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(tmp_path / "x.db")}), "t.prom", "t")
    assert not off.enabled and off.write(ms) is False


def test_metric_name_labels():
    assert stream_labels("binance.BTCUSDT.aggTrade.lag_s") == ("binance.aggTrade", "BTCUSDT", "lag_s")
    assert stream_labels("binance.ETHUSDT.ratios.taker_buy_sell.fill") == \
        ("binance.ratios.taker_buy_sell", "ETHUSDT", "fill")
    assert stream_labels("upbit.KRW-USDT.trade.lag_s") == ("upbit.trade", "KRW-USDT", "lag_s")
    assert stream_labels("market_1s.BTC.coverage") is None and stream_labels("coinglass.key") is None
    assert gap_labels("gaps.binance.BTCUSDT.aggTrade.open") == ("binance.aggTrade", "BTCUSDT")
    assert gap_labels("gaps.upbit.orderbook.open") == ("upbit.orderbook", "")
    assert gap_labels("gaps.open") is None
    assert reject_labels("rejects.binance_ws.ratio") == ("binance_ws", "")
    assert reject_labels("rejects.binance_ws.BTCUSDT.ratio") == ("binance_ws", "BTCUSDT")


def test_metric_set_renders_no_created_samples_and_rejects_bad_labels():
    ms = MetricSet()
    ms.counter("cqt_x_total", "x", ["a"]).set(3, "one")
    text = ms.render().decode()
    assert "cqt_x_total{a=\"one\"} 3.0" in text and "_created" not in text
    with pytest.raises(ValueError):
        ms.gauge("cqt_y", "y", ["a", "b"]).set(1, "only-one")


# ------------------------------------------------------------------------------ the nightly
def test_nightly_pings_and_writes_its_textfile(tmp_path, hc):
    from test_nightly import _stub_checks, _synthetic

    db, _ = _synthetic(tmp_path, seconds=3700)
    env = cqt_env(tmp_path, CQT_DB=str(db), CQT_NIGHTLY_CHECKS_CMD=_stub_checks(tmp_path, 1),
                  CQT_REPORT_JOURNAL="events", CQT_HC_URL_NIGHTLY=hc.url, CQT_TEXTFILE_DIR=str(tmp_path / "prom"))
    r = run_bin("cqt-nightly", "--json", "--no-retention", env=env, timeout=90)
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert [(path.rsplit("/", 1)[1]) for path, _, _ in hc.seen] == ["start", "1"]
    assert hc.seen[0][1] == hc.seen[1][1]
    assert hc.seen[1][2].decode().strip().endswith(r.stdout.strip()) and b"step=checks exit_code=1" in hc.seen[1][2]
    path = tmp_path / "prom" / "cqt_nightly.prom"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    m = parse_prom(path)
    assert m["cqt_nightly_exit_code"] == {(): 1.0}
    assert m["cqt_nightly_step_exit_code"] == {(("step", s["name"]),): float(s["exit_code"]) for s in out["steps"]}
    exports = {Path(s["output"]).stem: s["rows"] for s in out["steps"] if "rows" in s}
    assert set(exports) == {"btc_1h", "btc_24h"} and min(exports.values()) > 3000
    assert m["cqt_export_rows"] == {(("dataset", k),): float(v) for k, v in exports.items()}


# ------------------------------------------------------------------------------ the aggregator
def test_aggregator_textfile_from_its_state(tmp_path):
    s0 = 1_700_000_000_000
    db = tmp_path / "cqt.db"
    make_raw_db(db, s0, 300, seed=5)
    settings = load_settings({"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(db),
                                  "CQT_TEXTFILE_DIR": str(tmp_path / "prom")})
    writer = TextfileWriter(settings, AGGREGATE_FILE, "cqt-aggregate")
    with freeze_time(at(s0 + 250_500)):
        agg = LiveAggregator(db, AggregateConfig(assets=(FeatureParams(),), grace_ms=2000), DirectWriter(db))
        assert agg.step() > 0
        assert write_textfile(agg, writer)
        agg.close()
    m = parse_prom(tmp_path / "prom" / AGGREGATE_FILE)
    last = query(db, "SELECT MAX(ts_ms), COUNT(*) FROM market_1s WHERE symbol = 'BTC'")[0]
    assert m["cqt_aggregate_last_bar_timestamp_seconds"] == {(("asset", "BTC"),): last[0] / 1000}
    assert m["cqt_aggregate_lag_seconds"] == {(("asset", "BTC"),): (s0 + 250_500 - last[0]) / 1000}
    assert m["cqt_aggregate_rows_written_total"] == {(("asset", "BTC"),): float(last[1])}
    assert m["cqt_aggregate_running"] == {(("asset", "BTC"),): 1.0}
    assert m["cqt_db_bytes"] == {(): float(db.stat().st_size)}
    wal = Path(f"{db}-wal")
    assert m["cqt_wal_bytes"] == {(): float(wal.stat().st_size if wal.exists() else 0)}


@pytest.mark.timeout(90)
def test_the_aggregator_service_writes_its_file(tmp_path):
    from cqt.timeutil import now_ms

    now = now_ms()
    db = tmp_path / "cqt.db"
    make_raw_db(db, now - now % 1000 - 300_000, 300, seed=7)
    prom = tmp_path / "prom" / AGGREGATE_FILE
    env = cqt_env(tmp_path, CQT_DB=str(db), CQT_TEXTFILE_DIR=str(prom.parent), CQT_AGGREGATE_START_WAIT_S="1")
    proc = start_bin("cqt-aggregate", env=env, log_path=tmp_path / "aggregate.log")
    try:
        wait_for(lambda: prom.exists() and "cqt_aggregate_last_bar_timestamp_seconds{asset=\"BTC\"}"
                 in prom.read_text(), 40, what="cqt_aggregate.prom with BTC's newest second")
    finally:
        rc = stop_proc(proc)
    assert rc == 0, (tmp_path / "aggregate.log").read_text()
    m = parse_prom(prom)
    newest = query(db, "SELECT MAX(ts_ms) FROM market_1s WHERE symbol = 'BTC'")[0][0]
    assert 0 < m["cqt_aggregate_last_bar_timestamp_seconds"][(("asset", "BTC"),)] <= newest / 1000
    assert m["cqt_db_bytes"][()] > 0 and stat.S_IMODE(prom.stat().st_mode) == 0o644


# ------------------------------------------------------------------------------ node_exporter reads them
@pytest.fixture(scope="module")
def node_exporter() -> str:
    exe, why = debian_tool("prometheus-node-exporter", "prometheus-node-exporter", "node_exporter",
                           no_recommends=True)
    if exe is None:
        pytest.skip(why)
    return exe


def test_node_exporter_serves_the_files_without_a_scrape_error(db, tmp_path, node_exporter):
    import urllib.request
    prom_dir = tmp_path / "prom"
    p = gate(tmp_path, *AS_OF_ARGS, umask="077", CQT_DB=str(db), **{**ENV, "COINGLASS_API_KEY": ""},
             CQT_TEXTFILE_DIR=str(prom_dir))
    assert exit_code(p) == 1
    settings = load_settings({"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(db), "CQT_TEXTFILE_DIR": str(prom_dir)})
    agg = LiveAggregator(db, AggregateConfig(assets=(FeatureParams(),)), DirectWriter(db))
    assert write_textfile(agg, TextfileWriter(settings, AGGREGATE_FILE, "cqt-aggregate"))
    agg.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([node_exporter, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                             "--collector.textfile", f"--collector.textfile.directory={prom_dir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()
        text = wait_for(scrape, 20, what="node_exporter's /metrics")
    finally:
        stop_proc(proc)
    got: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            got.setdefault(smp.name, {})[tuple(sorted(smp.labels.items()))] = smp.value
    assert got["node_textfile_scrape_error"] == {(): 0.0}
    assert {dict(k)["file"].rsplit("/", 1)[-1] for k in got["node_textfile_mtime_seconds"]} == {
        "cqt_checks.prom", "cqt_aggregate.prom"}
    mine = parse_prom(prom_dir / "cqt_checks.prom")
    for name in ("cqt_check_exit_code", "cqt_stream_lag_seconds", "cqt_stream_fill_ratio", "cqt_gaps_open"):
        assert got[name] == mine[name], name
    assert got["cqt_check_exit_code"][(("check", "coinglass_check"),)] == 1.0
    assert got["cqt_db_bytes"][()] > 0
