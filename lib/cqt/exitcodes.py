"""Exit codes shared by every cqt program (see README "Exit codes")."""

OK = 0          # success / PASS
FAIL = 1        # a check's data did not meet a threshold; a job step failed
USAGE = 2       # command-line usage error (click's own code)
NOEVAL = 3      # could not evaluate: database missing, unreadable, schema too old/new
IOERR = 74      # EX_IOERR: disk full or I/O error while writing
TEMPFAIL = 75   # EX_TEMPFAIL: another instance of this program holds this database; units retry
                # a few times (Restart=always bounded by StartLimitBurst), then stay failed
CONFIG = 78     # EX_CONFIG: a bad setting; systemd units do not restart on it
