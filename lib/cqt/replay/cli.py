"""`bin/cqt replay FILE [--db PATH]`: the command, its exit codes and summary line."""
from __future__ import annotations

import sys
import time

import click

from ..options import db_option, json_option
from . import bulk
from .blocks import replay_file
from .processor import CHUNK_ROWS


@click.command("replay", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@db_option(help="SQLite database to write (default: CQT_DB).")
@json_option(help="Print the summary as JSON.")
@click.option("--processes", type=click.IntRange(0, 16), default=2, show_default=True,
              help="Parser processes (0 = parse in this process; file order is kept either way).")
def replay(file: str, db: str | None, as_json: bool, processes: int) -> None:
    """Push a capture FILE (JSON Lines, .gz too) through the parsers into the database.

    Same parsers, statements and writer as the live collectors; "now" for every sanity
    rule is each record's recv_ts_ms. Exit 0 when the file was replayed (rejects are
    counted in the summary and stored in `rejects`), 74 when the database cannot be written.
    """
    import json
    import sqlite3
    from pathlib import Path

    from .. import exitcodes
    from ..db import SchemaTooNew
    from ..runtime import load_settings_or_exit, setup_logging
    from ..sinks import RejectLog
    from ..writer import BatchWriter

    settings = load_settings_or_exit(db=db)
    setup_logging("cqt-replay", settings.log_level, settings.secrets)
    target = Path(settings.db)
    new_file = bulk.is_new(target)         # built aside and put in place at the end (replay.bulk)
    path = target
    try:
        if new_file:
            bulk.remove_stale(target)
            path = bulk.build_path(target)
            bulk.create(path)
        # In-process, this writer gets the row packs (a short queue bounds memory); with parser
        # processes only rejects and single rows, small and, in a damaged capture, many.
        writer = BatchWriter(path, service="cqt-replay", max_rows=CHUNK_ROWS * 2, max_delay_s=0.5,
                             queue_max=64 if processes == 0 else 8192, migrate_schema=not new_file,
                             opener=bulk.connect if new_file else None)
    except SchemaTooNew as exc:
        print(f"cqt replay: {exc}", file=sys.stderr)
        sys.exit(exitcodes.CONFIG)
    except Exception as exc:  # noqa: BLE001 - unwritable path, not a database …
        if new_file:
            bulk.remove(path)
        print(f"cqt replay: cannot open database {settings.db}: {exc}", file=sys.stderr)
        sys.exit(exitcodes.IOERR)
    rejects = RejectLog(writer, secrets=settings.secrets)
    t0 = time.monotonic()

    def give_up(code: int, message: str) -> None:
        if new_file:
            bulk.remove(path)
        print(f"cqt replay: {message}", file=sys.stderr)
        sys.exit(code)

    try:
        stats = replay_file(file, writer, rejects, processes=processes, opener=bulk.connect if new_file else None)
    except (OSError, RuntimeError) as exc:
        writer.close()
        give_up(exitcodes.IOERR, f"cannot replay {file}: {exc}")
    ok = writer.close(timeout=600)
    if writer.fatal is not None or not ok:
        give_up(exitcodes.IOERR, f"database write failed: {writer.fatal or 'flush timed out'}")
    if new_file:
        try:
            bulk.finish(path, target)
        except (OSError, sqlite3.Error, bulk.TargetAppeared) as exc:
            give_up(exitcodes.IOERR, f"cannot put the new database in place: {exc}")
    stats.seconds = time.monotonic() - t0
    failure = writer.failure or stats.write_failure
    if failure is not None:
        # A row the database refused (not a storage fault): the rest is stored, but not all.
        print(f"cqt replay: some rows could not be stored: {failure}", file=sys.stderr)
        sys.exit(exitcodes.FAIL)
    d = stats.as_dict()
    if as_json:
        print(json.dumps(d))
    else:
        print(f"replayed {stats.records} records ({stats.frames} frames, {stats.rest} REST answers) into "
              f"{settings.db}: rows={stats.rows} rejects={stats.rejects} skipped={stats.skipped} "
              f"bad_lines={stats.bad_lines} seconds={d['seconds']} records_per_s={d['records_per_s']}")
    sys.exit(exitcodes.OK)
