"""Request budgets of a poller: how often its jobs may run for N symbols.

A poller has a few job *kinds* (open interest, premium index, …), each run once per symbol
every `interval_s`, and each run costs some units of one or more server-side limits
(`Budget`: Binance's request weight per minute, its `/futures/data` calls per 5 minutes,
a Coinglass plan's calls per minute). `plan_intervals(kinds, budgets, n)` computes, once at
start, the interval each kind runs at so that the steady-state use of every budget stays at
or under its `fraction` (80 %) of the limit:

* a budget whose demand (n symbols × cost per run × runs per window) fits keeps its jobs'
  configured intervals;
* a budget over its share stretches the interval of **every kind that costs it** by the same
  factor (demand / allowed), so the kinds keep their proportions;
* a kind that costs several budgets takes the largest factor among them; stretching it only
  lowers the other budgets' use, so every budget ends at or under its share.

The remaining 20 % is room for catch-up pages after a restart and retries after failures;
the limits' own sliding windows (WindowLimit) and the RestClient's weight header still hold
every request back when anything runs over.

The first run of each job right at start (the loop's `run_at_start`: fresh data, the
first-start backfill) is a burst on top of that: `Plan.start_runs` keeps it only for kinds
whose every budget has room for it under the limit itself (capacity minus the planned use);
the others begin at their first slot, within one interval.

`spread_phase(base_s, index, count, interval_s)` places the jobs of one kind for `count`
symbols evenly over the interval, so N symbols are never N requests at the same instant.
Pure: no clock, no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

#: steady-state share of every limit a poller plans to use
BUDGET_FRACTION = 0.8
#: stretched intervals are rounded up to this (seconds): the log line reads well and the
#: rounding can only lower the use
ROUND_S = 0.01


@dataclass(frozen=True)
class Budget:
    """One server-side limit: `capacity` units per `window_s` seconds, of which the poller
    plans to use `fraction`."""
    name: str
    capacity: float
    window_s: float
    fraction: float = BUDGET_FRACTION

    @property
    def allowed(self) -> float:
        """Units per window the steady state may use."""
        return self.capacity * self.fraction


@dataclass(frozen=True)
class JobKind:
    """One job kind: run once per symbol every `interval_s`; each run costs `costs[budget]`
    units of each budget it counts against (a kind with no cost is never stretched)."""
    name: str
    interval_s: float
    costs: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """The outcome of plan_intervals for `symbols` symbols."""
    symbols: int
    intervals: dict[str, float]                 # kind -> interval to run at
    configured: dict[str, float]                # kind -> configured interval
    demand: dict[str, float]                    # budget -> use per window at the configured intervals
    usage: dict[str, float]                     # budget -> use per window at the planned intervals
    allowed: dict[str, float]                   # budget -> units per window the plan may use
    capacity: dict[str, float]                  # budget -> the limit itself

    start_runs: dict[str, bool] = field(default_factory=dict)   # kind -> first run right at start

    @property
    def stretched(self) -> dict[str, tuple[float, float]]:
        """kind -> (configured, planned) for every kind that runs less often than configured."""
        return {k: (self.configured[k], iv) for k, iv in self.intervals.items() if iv > self.configured[k]}

    def over(self) -> list[str]:
        """Budgets whose demand at the configured intervals exceeds their share."""
        return [b for b, d in self.demand.items() if d > self.allowed[b] * (1 + 1e-9)]

    def line(self, noun: str = "symbols") -> str | None:
        """The one log line that says intervals were stretched, or None."""
        st = self.stretched
        if not st:
            return None
        groups: dict[tuple[float, float], list[str]] = {}
        for kind, pair in st.items():
            groups.setdefault(pair, []).append(kind)
        jobs = ", ".join(f"{'/'.join(kinds)} {a:g} s -> {b:g} s" for (a, b), kinds in groups.items())
        why = ", ".join(f"{b} {self.demand[b]:.0f} > {self.allowed[b]:.0f} of {self.capacity[b]:g}"
                        for b in self.over())
        return (f"{self.symbols} {noun} need more than {BUDGET_FRACTION * 100:g} % of the request limits ({why} "
                f"per window): intervals stretched: {jobs}")


def usage_per_window(kinds: Iterable[JobKind], budgets: Iterable[Budget], symbols: int,
                     intervals: Mapping[str, float] | None = None) -> dict[str, float]:
    """Units per window each budget spends in steady state: symbols × cost × window / interval."""
    kinds = list(kinds)
    out = {}
    for b in budgets:
        total = 0.0
        for k in kinds:
            cost = k.costs.get(b.name, 0.0)
            if cost:
                iv = intervals[k.name] if intervals is not None else k.interval_s
                total += symbols * cost * b.window_s / iv
        out[b.name] = total
    return out


def plan_intervals(kinds: Iterable[JobKind], budgets: Iterable[Budget], symbols: int) -> Plan:
    """Intervals for `symbols` symbols that keep every budget at or under its share (see
    the module docstring). Raises ValueError for a cost against an unknown budget."""
    kinds = list(kinds)
    budgets = list(budgets)
    names = {b.name for b in budgets}
    for k in kinds:
        unknown = set(k.costs) - names
        if unknown:
            raise ValueError(f"job kind {k.name}: cost against unknown budget(s) {sorted(unknown)}")
    n = max(1, symbols)
    demand = usage_per_window(kinds, budgets, n)
    factor = {b.name: max(1.0, demand[b.name] / b.allowed) for b in budgets}
    intervals = {}
    for k in kinds:
        f = max((factor[b] for b, c in k.costs.items() if c), default=1.0)
        iv = k.interval_s
        if f > 1.0 + 1e-12:
            iv = math.ceil(k.interval_s * f / ROUND_S) * ROUND_S
            iv = round(max(iv, k.interval_s), 6)
        intervals[k.name] = iv
    usage = usage_per_window(kinds, budgets, n, intervals)
    # A first run of every job right at start is a burst on top of the steady state: only
    # where it fits in the room the steady state leaves under the limit itself (else those
    # jobs start at their first slot, already spread over the interval).
    burst = {b.name: n * sum(k.costs.get(b.name, 0.0) for k in kinds) for b in budgets}
    fits = {b.name: burst[b.name] <= b.capacity - usage[b.name] for b in budgets}
    start_runs = {k.name: all(fits[b] for b, c in k.costs.items() if c) for k in kinds}
    return Plan(symbols=n, intervals=intervals, configured={k.name: k.interval_s for k in kinds}, demand=demand,
                usage=usage, allowed={b.name: b.allowed for b in budgets},
                capacity={b.name: b.capacity for b in budgets}, start_runs=start_runs)


def max_symbols(kinds: Iterable[JobKind], budgets: Iterable[Budget], limit: int = 100_000) -> int:
    """The most symbols the configured intervals serve without stretching (0 when even one
    symbol needs more than a budget's share)."""
    kinds = list(kinds)
    budgets = list(budgets)
    per_symbol = usage_per_window(kinds, budgets, 1)
    n = limit
    for b in budgets:
        if per_symbol[b.name] > 0:
            n = min(n, math.floor(b.allowed / per_symbol[b.name] + 1e-9))
    return max(0, n)


def spread_phase(base_s: float, index: int, count: int, interval_s: float) -> float:
    """Phase of symbol `index` of `count` for a job kind whose first symbol sits `base_s` after
    the interval's wall-clock multiple: the symbols evenly over the interval."""
    if interval_s <= 0:
        return 0.0
    return (base_s + index * interval_s / max(1, count)) % interval_s
