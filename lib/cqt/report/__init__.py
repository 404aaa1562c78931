"""cqt-report: fill the run report (reports/step-alt-5.md) from the database, in place.

Only the marked blocks change (`<!-- cqt:begin NAME -->` … `<!-- cqt:end NAME -->`);
everything else in the file is the operator's and stays byte for byte. Blocks: status,
dod, checks-oneclick, checks-modules, export-1h, export-24h, operations, top-errors,
plots, and one `run-log:YYYY-MM-DD` block per UTC date appended at the end (a re-run on
the same date replaces that block). A missing file starts from the template shipped in
`cqt/templates/step-alt-5.md`.

Every value is derived from rows at or before the report's as-of time (default: now),
and the text depends only on the data, so two runs over the same data give the same
bytes; the file is written only when it changes, atomically (temp file + rename).
Before anything is written (report or plots) every target passes the output guard
(`cqt.outputs`): never the database, a device, or a file that is not a cqt report/plot.

The modules, each importing only those above it (the queries are cqt.bookkeeping's):

    blocks      marker blocks (find, replace, append a dated one), the guarded write-if-changed
    text        times, durations, exit codes and cells as the report writes them
    context     the report time, collection start, collectors' running spans, top warnings/errors
    operations  blocks: operations, top-errors, the dated run log
    sections    blocks: checks, exports, definition of done, status, plots; render_blocks
    update      update_report: render, draw the plots (cqt.plots), edit the file once
    cli         the `cqt-report` command
"""
