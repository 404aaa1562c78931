"""Rows of a receive thread on their way to the writer: multi-row packing, RowBuffer, the
resume position statement that follows each chunk."""
from __future__ import annotations

import itertools
import time
from typing import Any

#: one row per (service, stream); symbol = the venue symbol of the stream (the part before '@')
RESUME_SQL = ("INSERT OR REPLACE INTO resume_state (service, stream, symbol, last_id, last_ts_ms, updated_ts_ms) "
              "VALUES (?, ?, ?, ?, ?, ?)")


#: rows per multi-row INSERT: one RowBuffer flush (flush_rows = 1 000) is one statement, so the
#: writer re-takes the GIL once per 1 000 rows instead of once per row of a remainder
PACK_ROWS = 1000
MAX_PARAMS = 32_766      # SQLite's limit on parameters in one statement (SQLITE_MAX_VARIABLE_NUMBER)


def pack_rows(sql: str, rows: list[tuple], k: int = PACK_ROWS) -> list[tuple[str, list]]:
    """Turn `INSERT OR IGNORE … VALUES (?,…)` + rows into multi-row statements
    (`VALUES (…),(…)…`): as many packs of k rows as fit, the rest in packs of k/2, k/4, …
    down to 2, a last single row with the plain statement (about ten statement shapes per
    table, well inside the sqlite3 statement cache). k is capped so a pack stays under
    SQLite's parameter limit. Same rows, same order, same conflict handling; other
    statements pass through."""
    n = len(rows)
    if n < 2 or not sql.startswith("INSERT OR IGNORE") or " ON CONFLICT" in sql:
        return [(sql, rows)]
    head, _, values = sql.partition(" VALUES ")
    k = min(k, MAX_PARAMS // max(1, values.count("?")))
    out: list[tuple[str, list]] = []
    chain = itertools.chain.from_iterable
    i = 0
    while k >= 2 and i < n:
        full = (n - i) // k * k
        if full:
            multi = _MULTI.get((sql, k))
            if multi is None:
                multi = _MULTI[(sql, k)] = f"{head} VALUES {','.join([values] * k)}"
            out.append((multi, [tuple(chain(rows[j:j + k])) for j in range(i, i + full, k)]))
            i += full
        k = 2 if k == 3 else k // 2             # halve, never skipping 2: at most one row is left
    if i < n:
        out.append((sql, rows[i:]))
    return out


_MULTI: dict[tuple[str, int], str] = {}
_ROWS_PER_STMT: dict[str, int] = {}


def rows_per_statement(stmt: str) -> int:
    """How many table rows one parameter tuple of `stmt` carries (k for a packed statement)."""
    n = _ROWS_PER_STMT.get(stmt)
    if n is None:
        n = _ROWS_PER_STMT[stmt] = stmt.partition(" VALUES ")[2].count("),(") + 1
    return n


class RowBuffer:
    """Rows of one receive thread, grouped by statement, handed to the writer in chunks."""

    def __init__(self, writer: Any, flush_rows: int, flush_s: float):
        self.writer = writer
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.by_sql: dict[str, list] = {}
        self.n = 0
        self.first_at = 0.0

    def add(self, sql: str, rows: list) -> None:
        lst = self.by_sql.get(sql)
        if lst is None:
            self.by_sql[sql] = lst = []
        if not self.n:
            self.first_at = time.monotonic()
        lst.extend(rows)
        self.n += len(rows)

    def due(self, now_mono: float) -> bool:
        return self.n >= self.flush_rows or (self.n > 0 and now_mono - self.first_at >= self.flush_s)

    def flush(self, resume_rows: list[tuple]) -> int:
        n = self.n
        if n:
            by_sql, self.by_sql, self.n = self.by_sql, {}, 0
            for sql, rows in by_sql.items():
                for stmt, params in pack_rows(sql, rows):
                    self.writer.put_many(stmt, params, nrows=len(params) * rows_per_statement(stmt))
        if resume_rows:
            self.writer.put_many(RESUME_SQL, resume_rows)
        return n
