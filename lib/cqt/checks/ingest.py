"""What the collectors record about their own ingestion, judged by altdata_check: open `gaps`
per venue symbol, and the reject ratio (rejects / frames) per source and per venue symbol.

Only the venue symbols of the judged assets count (Binance <asset>USDT, Upbit KRW-<asset>, the
Coinglass coin, and KRW-USDT always), so an asset dropped from CQT_SYMBOLS stops failing the
gate with its old gaps; rows with no symbol (a stream name without one) are the whole service's
and always judged. The reject ratio per source is the whole service's (`rejects.<source>.ratio`,
every symbol summed); where the collectors count per symbol (ingest_stats.symbol) each judged
symbol gets its own (`rejects.<source>.<symbol>.ratio`).
"""
from __future__ import annotations

from ..symbols import coinglass_coin
from ..timeutil import fmt_ms
from .base import CheckContext
from .result import Metric


def venue_symbols(ctx: CheckContext) -> list[str]:
    """Every venue symbol of the judged assets, and KRW-USDT."""
    out = {ctx.settings.usdt_code}
    for a in ctx.assets:
        out |= {ctx.settings.binance_symbol_of(a), ctx.settings.upbit_code_of(a), coinglass_coin(a)}
    return sorted(out)


def gap_metric_name(source: str, symbol: str | None, stream: str) -> str:
    """`gaps.<venue>.<symbol>.<stream kind>.open`, the stream's own metric name after `gaps.`
    (source binance_ws -> venue binance; stream BTCUSDT@aggTrade -> BTCUSDT, aggTrade)."""
    venue = source.split("_", 1)[0]
    sym, at, kind = stream.partition("@")
    if at and (symbol or sym):
        return f"gaps.{venue}.{symbol or sym}.{kind}.open"
    return f"gaps.{venue}.{stream}.open"


def gap_metrics(ctx: CheckContext) -> list[Metric]:
    """Gaps open at as-of (detected before it minus the grace, not resolved by then)."""
    grace_ms = int(ctx.thresholds("CQT_CHECK_GAP_GRACE_S") * 1000)
    limit = ctx.thresholds("CQT_CHECK_OPEN_GAPS_MAX")
    symbols = venue_symbols(ctx)
    judged = f"(symbol IN ({','.join('?' * len(symbols))}) OR symbol IS NULL)"
    rows = ctx.conn.execute(
        "SELECT source, symbol, stream, COUNT(*), MIN(detected_ts_ms), MIN(from_ts_ms), MIN(from_id), MAX(to_id) "
        f"FROM gaps WHERE {judged} AND detected_ts_ms <= ? AND (status = 'open' OR filled_ts_ms > ?) "
        "GROUP BY source, symbol, stream ORDER BY source, symbol, stream",
        (*symbols, ctx.as_of_ms - grace_ms, ctx.as_of_ms)).fetchall()
    found: dict[str, list] = {}   # name -> [count, oldest detected, from_ts, from_id, to_id]
    for source, symbol, stream, n, detected, from_ts, from_id, to_id in rows:
        acc = found.setdefault(gap_metric_name(source, symbol, stream), [0, detected, from_ts, from_id, to_id])
        acc[0] += n
        acc[1] = min(acc[1], detected)
    out = []
    for name, (n, detected, from_ts, from_id, to_id) in found.items():
        span = f"ids {from_id}-{to_id}" if from_id is not None else f"from {fmt_ms(from_ts)}"
        out.append(Metric.judge(name, n, "<=", limit,
                                f"{n} unresolved gap(s), oldest detected {fmt_ms(detected)} ({span}); "
                                "backfill stuck or not marked done"))
    if not out:
        out.append(Metric.judge("gaps.open", 0, "<=", limit))
    lost = ctx.conn.execute(
        f"SELECT source, stream, COUNT(*) FROM gaps WHERE {judged} AND detected_ts_ms > ? AND detected_ts_ms <= ? "
        "AND status IN ('partial', 'unfillable') GROUP BY source, stream",
        (*symbols, ctx.start_ms, ctx.as_of_ms)).fetchall()
    for source, stream, n in lost:
        ctx.note(f"{n} gap(s) on {source} {stream} in the window could not be (fully) backfilled")
    return out


def reject_metrics(ctx: CheckContext) -> list[Metric]:
    """rejects / frames per source (the whole service) and per judged venue symbol, from
    ingest_stats (per-heartbeat deltas) in the window; reject_counts (hourly) names a source's
    reasons and catches rejects no frame counter saw; the kept payloads (rejects) name a symbol's."""
    limit = ctx.thresholds("CQT_CHECK_REJECT_RATIO_MAX")
    counted: dict[str, list[int]] = {}
    by_symbol: dict[tuple[str, str], tuple[int, int]] = {}
    judged = set(venue_symbols(ctx))
    for src, sym, frames, rej in ctx.conn.execute(
            "SELECT source, symbol, SUM(frames), SUM(rejects) FROM ingest_stats WHERE ts_ms > ? AND ts_ms <= ? "
            "GROUP BY source, symbol", (ctx.start_ms, ctx.as_of_ms)):
        acc = counted.setdefault(src, [0, 0])
        acc[0] += frames or 0
        acc[1] += rej or 0
        if sym and sym in judged:
            by_symbol[(src, sym)] = (frames or 0, rej or 0)
    reasons: dict[str, list[tuple[str, int]]] = {}
    hour_start = ctx.start_ms - ctx.start_ms % 3_600_000
    for src, reason, n in ctx.conn.execute(
            "SELECT source, reason, SUM(count) FROM reject_counts WHERE hour_ms >= ? AND hour_ms <= ? "
            "AND last_ts_ms > ? GROUP BY source, reason ORDER BY SUM(count) DESC",
            (hour_start, ctx.as_of_ms, ctx.start_ms)):
        reasons.setdefault(src, []).append((reason, n))
    out = []
    for src in sorted(set(counted) | set(reasons)):
        frames, rej = counted.get(src, (0, 0))
        why = ", ".join(f"{r} x{n}" for r, n in reasons.get(src, [])[:3])
        if frames == 0:
            if src in reasons:
                out.append(Metric.judge(f"rejects.{src}.ratio", None, "<=", limit,
                                        none_reason=f"rejects recorded ({why}) but no frames counted in ingest_stats"))
            continue
        out.append(_ratio_metric(f"rejects.{src}.ratio", frames, rej, limit,
                                 f"; top reasons (this hour): {why}" if why else ""))
    if not out:
        out.append(Metric.judge("rejects.ratio", None, "<=", limit,
                                none_reason="no frames counted in ingest_stats in the window: "
                                            "are the collectors running?"))
    out += _symbol_reject_metrics(ctx, by_symbol, limit)
    return out


def _ratio_metric(name: str, frames: int, rej: int, limit: float, why: str) -> Metric:
    reason = (f"{rej} of {frames} frames rejected{why}"
              + ("; a format change at the exchange?" if rej / frames > limit else ""))
    return Metric.judge(name, round(rej / frames, 5), "<=", limit, reason)


def _symbol_reject_metrics(ctx: CheckContext, by_symbol: dict[tuple[str, str], tuple[int, int]],
                           limit: float) -> list[Metric]:
    """`rejects.<source>.<symbol>.ratio` where a collector counted that symbol's frames; the
    reasons from the payloads kept in `rejects` (a few per source, reason and hour: cheap)."""
    if not any(rej for _, rej in by_symbol.values()):
        why: dict[tuple[str, str], str] = {}
    else:
        kept: dict[tuple[str, str], list[str]] = {}
        for src, sym, reason, n in ctx.conn.execute(
                "SELECT source, symbol, reason, COUNT(*) FROM rejects WHERE ts_ms > ? AND ts_ms <= ? "
                "AND symbol IS NOT NULL GROUP BY source, symbol, reason ORDER BY COUNT(*) DESC",
                (ctx.start_ms, ctx.as_of_ms)):
            kept.setdefault((src, sym), []).append(f"{reason} x{n}")
        why = {k: f"; reasons of the kept payloads: {', '.join(v[:3])}" for k, v in kept.items()}
    out = []
    for (src, sym), (frames, rej) in sorted(by_symbol.items()):
        name = f"rejects.{src}.{sym}.ratio"
        if frames == 0:
            if rej:
                out.append(Metric.judge(name, None, "<=", limit,
                                        none_reason=f"{rej} rejects but no frames counted for {sym}"))
            continue
        out.append(_ratio_metric(name, frames, rej, limit, why.get((src, sym), "")))
    return out
