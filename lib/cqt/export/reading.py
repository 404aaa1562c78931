"""Reading the export's inputs: one asset's `predictions` in the range and its `market_1s` around
it, through `cqt.db.iter_keyset` (one short read transaction per chunk; the (symbol, ts_ms) keys
make each read an index range of that asset alone)."""
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

NON_FEATURE_COLUMNS = tuple(c.name for c in PREDICTION_HEAD)     # symbol, ts_ms, horizon_sec, model, score


def feature_columns(conn: sqlite3.Connection) -> list[str]:
    cols = [r[1] for r in conn.execute("PRAGMA table_info(predictions)")]
    if not cols:
        raise ExportError(exitcodes.NOEVAL, "table predictions does not exist: is the schema migrated?")
    return [c for c in cols if c not in NON_FEATURE_COLUMNS]


def has_asset(conn: sqlite3.Connection, asset: str) -> bool:
    """Whether the derived tables hold any row of `asset` (one index seek each)."""
    return any(conn.execute(f"SELECT 1 FROM {t} WHERE symbol = ? LIMIT 1", (asset,)).fetchone()
               for t in ("predictions", "market_1s"))


def newest_prediction(conn: sqlite3.Connection, assets: Sequence[str]) -> int | None:
    """The newest predictions row of any of `assets` (one index seek per asset)."""
    times = [conn.execute("SELECT MAX(ts_ms) FROM predictions WHERE symbol = ?", (a,)).fetchone()[0] for a in assets]
    return max((int(t) for t in times if t is not None), default=None)


def resolve_range(conn: sqlite3.Connection, from_ms: int | None, to_ms: int | None,
                  last_ms: int | None, assets: Sequence[str] = ("BTC",)) -> tuple[int, int]:
    """Both bounds inclusive (bar times). Default: the 24 h ending at the newest predictions row of
    `assets` (one asset: its own newest row; several: the newest of them, one window for all)."""
    span = last_ms if last_ms is not None else 86_400_000
    if to_ms is None:
        if from_ms is not None and last_ms is not None:
            to_ms = from_ms + span - 1000
        else:
            newest = newest_prediction(conn, assets)
            if newest is None:
                raise ExportError(exitcodes.FAIL, f"no predictions of {', '.join(assets)} in the database: "
                                                  "is cqt-aggregate running?")
            to_ms = newest
    if from_ms is None:
        from_ms = to_ms - span + 1000
    if from_ms > to_ms:
        raise ExportError(exitcodes.USAGE, f"--from {fmt_ms(from_ms)} is after --to {fmt_ms(to_ms)}")
    return from_ms, to_ms


def _read_array(conn: sqlite3.Connection, table: str, columns: Sequence[str], asset: str, lo: int, hi: int):
    import numpy as np

    chunks = []
    for rows in iter_keyset(conn, table, "ts_ms", ", ".join(columns), lo, hi, where="symbol = ?", params=(asset,)):
        chunks.append(np.array(rows, dtype=np.float64))
    if not chunks:
        return np.empty((0, len(columns)), dtype=np.float64)
    return np.concatenate(chunks)


@dataclass
class Inputs:
    """What the export reads of one asset: its predictions in [from, to], its market_1s around it."""
    symbol: str
    features: list[str]
    pred: Any                # float64 array: ts_ms, features..., score
    market: Any              # float64 array: MARKET_COLUMNS
    newest_market_ms: int | None
    models: list[str]


def read_inputs(conn: sqlite3.Connection, asset: str, from_ms: int, to_ms: int, horizon_sec: int,
                max_delay_s: int, vol_window_s: int, feats: Sequence[str] | None = None) -> Inputs:
    """One asset's rows only: a label or r_t can never come from another asset's bars."""
    feats = list(feature_columns(conn) if feats is None else feats)
    pred = _read_array(conn, "predictions", ["ts_ms", *feats, "score"], asset, from_ms, to_ms)
    lo = from_ms - (max(vol_window_s, 1) + 1) * 1000
    hi = to_ms + (horizon_sec + max_delay_s) * 1000
    market = _read_array(conn, "market_1s", MARKET_COLUMNS, asset, lo, hi)
    newest = conn.execute("SELECT MAX(ts_ms) FROM market_1s WHERE symbol = ?", (asset,)).fetchone()[0]
    models = [r[0] for r in conn.execute(
        "SELECT DISTINCT model FROM predictions WHERE symbol = ? AND ts_ms >= ? AND ts_ms <= ? LIMIT 10",
        (asset, from_ms, to_ms))]
    return Inputs(asset, feats, pred, market, None if newest is None else int(newest), models)
