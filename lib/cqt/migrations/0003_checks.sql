-- Checks and scheduling (issue #6). One row per run of a scheduled job (cqt-scheduler or
-- cron via `bin/cqt-scheduler --run JOB`): written when the job starts (exit_code NULL =
-- still running, or the runner died) and completed when it ends.
CREATE TABLE job_runs (
    id              INTEGER PRIMARY KEY,
    job             TEXT NOT NULL,       -- a name from cqt.schedule.JOBS (pipeline_checks, nightly)
    trigger         TEXT NOT NULL,       -- scheduler | cron | manual
    scheduled_ts_ms INTEGER,             -- the fire time the scheduler meant (NULL when run by hand)
    start_ts_ms     INTEGER NOT NULL,
    end_ts_ms       INTEGER,
    exit_code       INTEGER,             -- the job's exit code; 124 = killed at its timeout, 143 = stopped by SIGTERM
    pid             INTEGER,
    detail          TEXT                 -- JSON: command, duration_ms, last output line
);
CREATE INDEX job_runs_job ON job_runs (job, start_ts_ms);
