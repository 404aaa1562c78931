"""Fixtures shared by many test modules (plain helper functions live in helpers.py,
fixtures_raw.py and fixtures_checks.py)."""
from __future__ import annotations

import shutil

import pytest

from helpers import tmpfs


@pytest.fixture
def db(db_template, tmp_path):
    """A fresh copy of the module's template database, so each test may damage its own.

    A module opts in by defining a (module-scoped) `db_template` fixture that builds the
    template once; modules with their own `db` fixture override this one.
    """
    path = tmp_path / "cqt.db"
    shutil.copyfile(db_template, path)
    return path


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (needs root and mount rights; skipped otherwise), always unmounted."""
    with tmpfs(tmp_path / "full", "64k") as mnt:
        yield mnt
