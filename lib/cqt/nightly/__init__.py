"""cqt-nightly: the nightly job that cron / cqt-scheduler call.

Steps, in order; a failing step never stops the later ones:

    1. checks      checks/run_pipeline_checks.sh --window 600 --db DB   (a subprocess;
                   CQT_NIGHTLY_CHECKS_CMD replaces the command)
    per asset of CQT_SYMBOLS (steps `export_1h.BTC`, `export_24h.BTC`, `export_1h.ETH`, ...):
    2. export_1h   CQT_DATASET_DIR/<asset>_1h.parquet  (btc_1h.parquet: the hour ending at that
                   asset's newest predictions row)
    3. export_24h  CQT_DATASET_DIR/<asset>_24h.parquet + dated copy <asset>_YYYYMMDD.parquet
                   (YYYYMMDD = UTC date of the data's end)
    4. report      CQT_REPORT (tables, plots, the run log section of that date)
    5. retention   rows older than CQT_KEEP_DAYS deleted - an asset's market data only where an
                   export of that asset whose file still exists covers them (KRW-USDT and the
                   capture files: where every asset's does); bookkeeping by age; then a WAL
                   checkpoint and an incremental vacuum

Every file it writes (exports, dated copy, report, plots) passes the output guard
(`cqt.outputs`) first: a refused target is that step's exit 2, and nothing is written to it.

Exit code = the worst step's (the highest code; codes outside 0/1/2/3/74/78 count as 1).
One summary line on stdout; step details on stderr (both end up in the journal).

The modules, each importing only those above it:

    steps      Step, the exit-code rule (worst), the checks / export / dated copy / report steps
    retention  the retention step (deletes covered by exports, bookkeeping by age, captures, vacuum)
    job        run_nightly (the order) and the summary line
    cli        the `cqt-nightly` command (the lock, --json)
"""
