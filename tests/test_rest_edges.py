"""429 without Retry-After (Upbit's Remaining-Req) and HTTP 451 (restricted location), with injected clocks."""
from __future__ import annotations

import random
import re
import time

import pytest

from cqt.poll.outcomes import failure_of
from cqt.rest import DEFAULT_RETRY_AFTER_S, RateLimitState, RestResponse, location_refused_message
from simproc import start_sim
from test_collect_support import (
    collector_env,
    collectors,  # noqa: F401 - a pytest fixture, requested by name
    no_traceback,
    read_log,
    stop,
    wait_log,
)


def _state(wall_ms: int = 1_000_250) -> RateLimitState:
    return RateLimitState("upbit_rest", clock=lambda: 100.0, wall_ms=lambda: wall_ms, rng=random.Random(1),
                          location_backoff_s=3600.0)


def test_429_with_remaining_req_waits_for_the_next_second_not_a_minute():
    st = _state()
    w = st.note_response(429, {"Remaining-Req": "group=default; min=1800; sec=0"})
    assert 0.75 <= w <= 1.0
    later = [st.note_response(429, {"Remaining-Req": "group=default; min=1800; sec=0"}) for _ in range(10)]
    assert all(x <= 0.75 + 8.0 for x in later)


def test_429_keeps_retry_after_and_the_flat_default_without_either_header():
    assert _state().note_response(429, {"Retry-After": "7"}) == 7.0
    assert _state().note_response(429, {}) == DEFAULT_RETRY_AFTER_S


def test_451_blocks_for_the_location_backoff():
    st = _state()
    assert st.note_response(451, {}) == 3600.0
    assert st.wait_s() == 3600.0 and st.counts["http_451"] == 1
    assert "restricted location" in location_refused_message("binance_rest")


def test_poll_outcomes_classify_451_and_the_per_second_429():
    r451 = RestResponse(451, {}, '{"code":0,"msg":"Service unavailable from a restricted location"}', 1, 1, "/x", {})
    assert failure_of(r451).reason == "451 restricted location"
    r429 = RestResponse(429, {"Remaining-Req": "group=default; min=1800; sec=0"}, "", 1, 1, "/x", {})
    assert failure_of(r429).retry_after_s == 1.0


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_restricted_location_is_one_error_per_connection_and_nobody_exits(tmp_path, collectors):  # noqa: F811
    """cqt-sim answering every Binance request and handshake with 451: the collector and the
    poller stay up, each says once that the location is refused, and neither spins."""
    with start_sim(tmp_path, "--binance-restricted-location") as sim:
        env = collector_env(tmp_path, sim, CQT_REST_LOCATION_BACKOFF_S=2)
        coll, coll_log = collectors("cqt-collect-binance", env)
        poll, poll_log = collectors("cqt-poll-binance", env)
        wait_log(coll_log, "public refuses requests from this host.s location", timeout=30)
        wait_log(poll_log, "restricted location", timeout=30)
        time.sleep(5)       # two more backoff periods: repeats must stay at DEBUG
        assert coll.poll() is None and poll.poll() is None
        assert stop(coll)[0] == 0 and stop(poll)[0] == 0
    text = read_log(coll_log)
    for endpoint in ("market", "public"):
        errors = re.findall(rf"ERROR .*http 451: {endpoint} refuses requests from this host's location", text)
        assert len(errors) == 1, text[-3000:]
    assert "restricted location" in text.split("\n", 1)[0]       # the market-list warning says why
    connects = re.findall(r"reconnect endpoint=market attempt=", text)
    assert len(connects) <= 6, text[-3000:]        # ~7 s at a 2 s hold, not a reconnect storm
    ptext = read_log(poll_log)
    assert 1 <= len(re.findall(r"ERROR .*restricted location", ptext)) <= 2, ptext[-3000:]
    no_traceback(text)
    no_traceback(ptext)
