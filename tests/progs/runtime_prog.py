"""A tiny service for runtime tests: queues rows continuously through the writer.

Behaviour is steered by files in the directory given as argv[1]:
  hang   -> the main loop stops calling svc.alive() (simulates a hung loop)
  quiet  -> the loop stays alive but produces no rows (an exchange with no data)
"""
import sys
import time
from pathlib import Path

from cqt.runtime import run_service

ctl = Path(sys.argv[1])
SQL = "INSERT OR IGNORE INTO binance_agg_trades VALUES (?,?,?,?,?,?,?,?,?,?)"


def main_loop(svc):
    import logging
    import os
    svc.ready("test loop")
    if os.environ.get("CQT_TEST_LOG_SECRET"):
        # A careless log line with the key in it: the runtime must redact it everywhere.
        logging.getLogger("cqt.test").warning("calling https://x/?key=%s failed", svc.settings.coinglass_api_key)
        svc.rejects.record("coinglass", "bad_frame", '{"key": "%s"}' % svc.settings.coinglass_api_key)
    i = 0
    while not svc.stopping.is_set():
        if (ctl / "hang").exists():
            time.sleep(0.05)          # hung: no alive() ticks
            continue
        svc.alive()
        if (ctl / "quiet").exists():
            time.sleep(0.05)
            continue
        rows = [("BTCUSDT", i + k, 1, 1.0, 1.0, "buy", 0, 0, None, 1) for k in range(500)]
        svc.writer.put_many(SQL, rows)
        i += 500
        (ctl / "queued").write_text(str(i))
        time.sleep(0.01)
    return 0


sys.exit(run_service("test-service", main_loop))
