"""cqt-aggregate: `market_1s` and `predictions`, one row per second and asset, from the raw tables.

    config    AggregateConfig from the CQT_AGGREGATE_* variables and CQT_SYMBOLS (docs/aggregate.md)
    bars      the INSERT statements, whole-second rounding, NULL tallies
    asset     one asset of the live service (AssetAggregator): resume, first start, what is due
    service   the live service (LiveAggregator): every asset's bars once the grace delay has passed
    late      the late ledger (one per asset): rows that land after their second was written
    rebuilds  --rebuild and `bin/cqt synth`: a range recomputed per asset in chunks, cut to its data
    cli       the program's command line (`main`)

All of them compute with the one feature function, cqt.features.compute_range, one asset
per call.
"""
