"""Program cqt-dashboard: the Streamlit server (headless, no usage statistics) for the page and
/healthz, on CQT_DASHBOARD_ADDRESS:CQT_DASHBOARD_PORT (loopback by default: the page has no login)."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from .. import exitcodes
from ..config import ConfigError
from ..options import db_option
from ..runtime import load_settings_or_exit

APP = Path(__file__).resolve().parent / "app.py"


def streamlit_argv(port: int, address: str) -> list[str]:
    return ["streamlit", "run", str(APP),
            "--server.port", str(port), "--server.address", address, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--server.runOnSave", "false", "--global.developmentMode", "false",
            "--client.toolbarMode", "viewer", "--client.showErrorDetails", "none",
            "--logger.level", "warning"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@db_option
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port of the page and /healthz  [default: CQT_DASHBOARD_PORT, 8501]")
@click.option("--address", default=None,
              help="Address to listen on  [default: CQT_DASHBOARD_ADDRESS, 127.0.0.1; the page has no login]")
def main(db: str | None, port: int | None, address: str | None) -> None:
    """The dashboard: checks and gate, streams, services, rejects and Coinglass, prices and features,
    exports and database, refreshed every few seconds; GET /healthz answers 200 only when the
    pipeline is healthy (JSON with the reasons otherwise, 503). Stops on SIGTERM."""
    settings = load_settings_or_exit(db=db)
    try:
        port = port or settings.get_int("CQT_DASHBOARD_PORT")
        address = address or settings.get_str("CQT_DASHBOARD_ADDRESS")
        settings.get_float("CQT_HEALTHZ_CHECK_MAX_AGE_S")   # read by /healthz: a bad value fails now
    except ConfigError as exc:
        print(f"cqt-dashboard: {exc}", file=sys.stderr)
        sys.exit(exitcodes.CONFIG)
    # The page and /healthz load the settings again in this process: the database they read is this one.
    os.environ["CQT_DB"] = str(settings.db)
    from streamlit.web import cli as streamlit_cli

    # SIGTERM/SIGINT: uvicorn stops the server in order, then raises the signal again with the
    # handler it found, this one: a stop on request is exit 0, not death by signal (or a traceback).
    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    sys.argv = streamlit_argv(port, address)
    sys.exit(streamlit_cli.main(standalone_mode=False) or 0)


def stopped(signum: int, _frame: object) -> None:
    sys.exit(0)
