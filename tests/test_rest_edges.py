"""429 without Retry-After (Upbit's Remaining-Req) and HTTP 451 (restricted location), with injected clocks."""
from __future__ import annotations

import random

from cqt.poll.outcomes import failure_of
from cqt.rest import DEFAULT_RETRY_AFTER_S, RateLimitState, RestResponse, location_refused_message


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
