"""Monitoring hooks, off unless configured; a monitoring failure never changes a job's exit code.

    healthchecks  the healthchecks.io ping protocol for a job (CQT_HC_URL_CHECKS, CQT_HC_URL_NIGHTLY):
                  /start, then /<exit code> with the tail of the job's output, paired by ?rid=
    capture       the bounded tail of a job's stdout and stderr (the last ping's body)
    textfile      Prometheus textfile metrics: one `.prom` file per writer in CQT_TEXTFILE_DIR
    jobmetrics    what the check runner, the nightly job and the aggregator put in their files
"""
