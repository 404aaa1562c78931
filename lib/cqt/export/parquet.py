"""Parquet I/O of the dataset: the columns and their descriptions, the atomic zstd write with the
`cqt` metadata, and reading that metadata back."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from ..catalogue import descriptions
from ..outputs import PARQUET_METADATA_KEY, write_atomic
from .labelling import LABELS, Labelled

METADATA_KEY = PARQUET_METADATA_KEY
FORMAT = "cqt-dataset/2"                 # /2: the `symbol` column (many assets)
ROW_GROUP_ROWS = 21_600                  # 6 h of 1 s rows: time-range pruning without tiny groups

FEATURE_DESCRIPTIONS = descriptions()           # the feature catalogue's one line per feature
FIXED_DESCRIPTIONS = {
    "t0": "the row's time: the second the features describe (UTC); every feature was known at t0",
    "symbol": "the asset (base asset, e.g. BTC) of the row: its features, prices and label are that asset's alone",
    "score": "baseline model score from predictions (computed from the features at t0; not a feature)",
    "price_t0": "Upbit KRW-<symbol> market_1s close at t0 (KRW)",
    "label_ts": "time of the first market_1s bar with a real trade at or after t0 + horizon_sec (UTC)",
    "price_label": "market_1s close of the label bar (KRW)",
    "ret": "price_label / price_t0 - 1",
    "r_t": "threshold for this row (fixed value, or cost + k x sigma_1s x sqrt(horizon) from data up to t0)",
    "label": "UP if ret > r_t, DOWN if ret < -r_t, else NONE",
}


def build_table(t0, pred, feature_names: Sequence[str], lab: Labelled):
    import numpy as np
    import pyarrow as pa

    keep = lab.keep
    ts_type = pa.timestamp("ms", tz="UTC")

    def f64(values):
        v = np.ascontiguousarray(values[keep], dtype=np.float64)
        nan = np.isnan(v)
        return pa.array(v, type=pa.float64(), mask=nan if nan.any() else None)

    t0_col = pa.array(t0[keep].astype(np.int64), type=ts_type)
    cols: list[tuple[str, Any, str]] = [("t0", t0_col, FIXED_DESCRIPTIONS["t0"])]
    for j, name in enumerate(feature_names):
        cols.append((name, f64(pred[:, 1 + j]), FEATURE_DESCRIPTIONS.get(name, "feature from the predictions table")))
    cols.append(("score", f64(pred[:, 1 + len(feature_names)]), FIXED_DESCRIPTIONS["score"]))
    cols.append(("price_t0", f64(lab.price_t0), FIXED_DESCRIPTIONS["price_t0"]))
    cols.append(("label_ts", pa.array(lab.label_ts[keep], type=ts_type), FIXED_DESCRIPTIONS["label_ts"]))
    cols.append(("price_label", f64(lab.price_label), FIXED_DESCRIPTIONS["price_label"]))
    cols.append(("ret", f64(lab.ret), FIXED_DESCRIPTIONS["ret"]))
    cols.append(("r_t", f64(lab.r_t), FIXED_DESCRIPTIONS["r_t"]))
    labels = pa.DictionaryArray.from_arrays(pa.array(lab.label[keep], type=pa.int8()), pa.array(LABELS))
    cols.append(("label", labels, FIXED_DESCRIPTIONS["label"]))
    fields = [pa.field(name, arr.type, nullable=True, metadata={"description": desc}) for name, arr, desc in cols]
    return pa.Table.from_arrays([c[1] for c in cols], schema=pa.schema(fields)), {c[0]: c[2] for c in cols}


def with_symbol_column(tables: Sequence[Any], symbols: Sequence[str]):
    """One table of the assets' tables (in order), with `symbol` as the second column (after t0):
    a dictionary column whose values are exactly the assets whose rows are in the file."""
    import numpy as np
    import pyarrow as pa

    table = pa.concat_tables(tables) if len(tables) != 1 else tables[0]
    counts = [t.num_rows for t in tables]
    indices = pa.array(np.repeat(np.arange(len(symbols), dtype=np.int32), counts), type=pa.int32())
    column = pa.DictionaryArray.from_arrays(indices, pa.array(list(symbols), type=pa.string()))
    field = pa.field("symbol", column.type, nullable=False, metadata={"description": FIXED_DESCRIPTIONS["symbol"]})
    return table.add_column(1, field, column)


def write_parquet_atomic(table, output: Path, metadata: dict[str, Any], stall_s: float = 0.0) -> int:
    """Write `table` with zstd and the `cqt` metadata to a temp file beside `output`, fsync, rename.
    Returns the file size. On any failure the temp file is removed and `output` is untouched."""
    import pyarrow.parquet as pq

    schema = table.schema.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    table = table.replace_schema_metadata(schema.metadata)

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(str(tmp), schema, compression="zstd", compression_level=3,
                              write_statistics=True) as writer:
            for i, offset in enumerate(range(0, max(table.num_rows, 1), ROW_GROUP_ROWS)):
                writer.write_table(table.slice(offset, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
                if i == 0 and stall_s > 0:      # test knob: a window in which to kill the writer
                    time.sleep(stall_s)

    return write_atomic(output, write=write, keep_mode=False)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `cqt` metadata object of a dataset file."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(str(path)).metadata or {}
    raw = meta.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: no '{METADATA_KEY.decode()}' metadata (not a cqt dataset?)")
    return json.loads(raw)
