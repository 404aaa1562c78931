"""Writing bars: whole-second rounding, the INSERT statements of market_1s and predictions,
NULL tallies. Shared by the live service and the rebuild."""
from __future__ import annotations

import sqlite3

from ..catalogue import MARKET_COLUMNS, PREDICTION_COLUMNS
from ..features import FeatureResult

SECOND_MS = 1000

MARKET_SQL = (f"INSERT OR REPLACE INTO market_1s ({', '.join(MARKET_COLUMNS)}) "
              f"VALUES ({', '.join('?' * len(MARKET_COLUMNS))})")
PREDICTIONS_SQL = (f"INSERT OR REPLACE INTO predictions ({', '.join(PREDICTION_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(PREDICTION_COLUMNS))})")


def floor_s(ms: int) -> int:
    return (int(ms) // SECOND_MS) * SECOND_MS


def ceil_s(ms: int) -> int:
    return -((-int(ms)) // SECOND_MS) * SECOND_MS


def write_result(conn: sqlite3.Connection, res: FeatureResult) -> int:
    """INSERT OR REPLACE the rows of one compute_range result; returns the number of seconds."""
    m, p = res.market_rows(), res.prediction_rows()
    conn.executemany(MARKET_SQL, m)
    conn.executemany(PREDICTIONS_SQL, p)
    return len(m)


def add_nulls(total: dict[str, dict[str, int]], res: FeatureResult) -> None:
    """Add the NULL counts per column of `res` to `total` ({table: {column: n}})."""
    for table, cols in res.nulls.items():
        t = total.setdefault(table, {})
        for c, n in cols.items():
            if n:
                t[c] = t.get(c, 0) + n
