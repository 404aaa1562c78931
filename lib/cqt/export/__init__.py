"""cqt-export: the labelled Parquet dataset (horizon labels, thresholds, honest drop accounting).

One candidate row per second that has a `predictions` row in the range. For each
candidate t0 the label comes from the first `market_1s` bar with a real trade at or
after t0 + horizon, accepted only up to CQT_LABEL_MAX_DELAY_S later. Every candidate
that does not become a row is counted under exactly one drop reason, checked in this
order:

    stale_source        a required source (market_1s age column) is older than its limit at t0
    missing_features    a required feature, price_t0 or (dynamic policy) r_t is NULL
    label_pending       the label window has not fully passed in the data yet (newest seconds)
    no_label            no traded bar in [t0 + horizon, t0 + horizon + max delay]
    label_ts_violation  label_ts < t0 + horizon (a bug; must be 0)

The modules, each importing only those above it:

    threshold   the --threshold grammar (fixed / dynamic), pure
    labelling   labels, drop reasons, r_t, realized volatility: arrays in, arrays out, pure
    parquet     column descriptions, the atomic zstd write with `cqt` metadata, read_metadata
    request     ExportRequest (limits from the settings), ExportResult, ExportError
    reading     predictions and market_1s for a range (keyset chunks, short reads)
    run         run_export: read, label, write, record the export_runs row (cqt.bookkeeping)
    cli         the `cqt-export` command and its summary
"""
