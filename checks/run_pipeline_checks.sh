#!/bin/sh
# The operator's gate: runs the four checks, prints a table, exit 0 only if all pass.
# Usage: bash checks/run_pipeline_checks.sh --window 600 [--as-of T] [--db PATH] [--json] [--integrity quick|full]
#        [--symbol ASSET]   (one asset of CQT_SYMBOLS only; default every asset)
exec "$(dirname "$(readlink -f "$0")")/../lib/cqt-exec" run_pipeline_checks "$@"
