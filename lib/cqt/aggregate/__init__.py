"""cqt-aggregate: `market_1s` and `predictions`, one row per second, from the raw tables.

    config    AggregateConfig from the CQT_AGGREGATE_* variables (docs/aggregate.md)
    bars      the INSERT statements, whole-second rounding, NULL tallies
    service   the live service (LiveAggregator): every bar once its grace delay has passed
    late      the late ledger: rows that land after their second was written
    rebuilds  --rebuild and `bin/cqt synth`: a range recomputed in chunks, cut to the data
    cli       the program's command line (`main`)

All of them compute with the one feature function, cqt.features.compute_range.
"""
