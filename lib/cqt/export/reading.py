"""Reading the export's inputs: `predictions` in the range and `market_1s` around it, through
`cqt.db.iter_keyset` (one short read transaction per chunk)."""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence

from .. import exitcodes
from ..catalogue import PREDICTION_HEAD
from ..db import iter_keyset
from ..timeutil import fmt_ms
from .labelling import MARKET_COLUMNS
from .request import ExportError

NON_FEATURE_COLUMNS = tuple(c.name for c in PREDICTION_HEAD)     # ts_ms, horizon_sec, model, score


def feature_columns(conn: sqlite3.Connection) -> list[str]:
    cols = [r[1] for r in conn.execute("PRAGMA table_info(predictions)")]
    if not cols:
        raise ExportError(exitcodes.NOEVAL, "table predictions does not exist: is the schema migrated?")
    return [c for c in cols if c not in NON_FEATURE_COLUMNS]


def resolve_range(conn: sqlite3.Connection, from_ms: int | None, to_ms: int | None,
                  last_ms: int | None) -> tuple[int, int]:
    """Both bounds inclusive (bar times). Default: the 24 h ending at the newest predictions row."""
    span = last_ms if last_ms is not None else 86_400_000
    if to_ms is None:
        if from_ms is not None and last_ms is not None:
            to_ms = from_ms + span - 1000
        else:
            newest = conn.execute("SELECT MAX(ts_ms) FROM predictions").fetchone()[0]
            if newest is None:
                raise ExportError(exitcodes.FAIL, "no predictions in the database: is cqt-aggregate running?")
            to_ms = int(newest)
    if from_ms is None:
        from_ms = to_ms - span + 1000
    if from_ms > to_ms:
        raise ExportError(exitcodes.USAGE, f"--from {fmt_ms(from_ms)} is after --to {fmt_ms(to_ms)}")
    return from_ms, to_ms


def _read_array(conn: sqlite3.Connection, table: str, columns: Sequence[str], lo: int, hi: int):
    import numpy as np

    chunks = []
    for rows in iter_keyset(conn, table, "ts_ms", ", ".join(columns), lo, hi):
        chunks.append(np.array(rows, dtype=np.float64))
    if not chunks:
        return np.empty((0, len(columns)), dtype=np.float64)
    return np.concatenate(chunks)


@dataclass
class Inputs:
    """What the export reads: predictions in [from, to], market_1s around it."""
    features: list[str]
    pred: Any                # float64 array: ts_ms, features..., score
    market: Any              # float64 array: MARKET_COLUMNS
    newest_market_ms: int | None
    models: list[str]


def read_inputs(conn: sqlite3.Connection, from_ms: int, to_ms: int, horizon_sec: int, max_delay_s: int,
                vol_window_s: int) -> Inputs:
    feats = feature_columns(conn)
    pred = _read_array(conn, "predictions", ["ts_ms", *feats, "score"], from_ms, to_ms)
    lo = from_ms - (max(vol_window_s, 1) + 1) * 1000
    hi = to_ms + (horizon_sec + max_delay_s) * 1000
    market = _read_array(conn, "market_1s", MARKET_COLUMNS, lo, hi)
    newest = conn.execute("SELECT MAX(ts_ms) FROM market_1s").fetchone()[0]
    models = [r[0] for r in conn.execute(
        "SELECT DISTINCT model FROM predictions WHERE ts_ms >= ? AND ts_ms <= ? LIMIT 10", (from_ms, to_ms))]
    return Inputs(feats, pred, market, None if newest is None else int(newest), models)
