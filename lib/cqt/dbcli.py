"""`cqt db migrate`: bring a database's schema up to date on demand (services also do it when they start)."""
from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import click

from . import exitcodes
from .config import ConfigError, load_settings
from .db import (
    BUSY_TIMEOUT_MS,
    DatabaseMissing,
    SchemaTooNew,
    check_version,
    connect,
    is_busy,
    is_fatal_io,
    latest_version,
    migrate,
    retry_busy,
)
from .options import db_option, json_option


class MigrateError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def migrate_file(path: Path) -> tuple[int, int]:
    """(version before, version after). A missing file or a newer schema is refused untouched."""
    try:
        ro = connect(path, readonly=True)
    except DatabaseMissing as exc:
        raise MigrateError(f"{exc} (nothing to migrate; a service creates it when it starts)",
                           exitcodes.NOEVAL) from None
    try:
        before = check_version(ro)  # read-only first: a newer schema is never opened for writing
    finally:
        ro.close()
    if before == latest_version():
        return before, before
    conn = connect(path)
    try:
        return before, retry_busy(lambda: migrate(conn), BUSY_TIMEOUT_MS / 1000)
    finally:
        conn.close()


@click.group("db", context_settings={"help_option_names": ["-h", "--help"]})
def db_group() -> None:
    """The database file: schema migrations."""


@db_group.command("migrate")
@db_option
@json_option
def migrate_command(db: str | None, as_json: bool) -> None:
    """Apply pending schema migrations in place, in one transaction.

    Exit codes: 0 migrated or already current, 3 database missing, unreadable or written by a
    newer cqt (left untouched), 74 cannot write, 75 still locked by another writer, 78 bad setting.
    """
    try:
        settings = load_settings(db=db)
    except ConfigError as exc:
        click.echo(f"cqt db migrate: {exc}", err=True)
        sys.exit(exitcodes.CONFIG)
    path = settings.db
    try:
        before, after = migrate_file(path)
    except MigrateError as exc:
        click.echo(f"cqt db migrate: {exc}", err=True)
        sys.exit(exc.code)
    except SchemaTooNew as exc:
        click.echo(f"cqt db migrate: {exc}", err=True)
        sys.exit(exitcodes.NOEVAL)
    except sqlite3.Error as exc:
        if is_busy(exc):
            code, why = exitcodes.TEMPFAIL, "still locked by another writer"
        elif is_fatal_io(exc) and "malformed" not in str(exc).lower():
            code, why = exitcodes.IOERR, "cannot write"
        else:
            code, why = exitcodes.NOEVAL, "cannot read"
        click.echo(f"cqt db migrate: {path}: {why}: {exc}", err=True)
        sys.exit(code)
    if as_json:
        click.echo(json.dumps({"db": str(path), "from_version": before, "to_version": after,
                               "migrated": after != before}))
    elif after == before:
        click.echo(f"{path}: schema version {after} is current; nothing to do")
    else:
        click.echo(f"{path}: schema version {before} -> {after}")
