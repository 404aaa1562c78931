"""The feature catalogue (cqt.catalogue) is the one description of the derived tables: the
schema after migrations, the feature function's output, the checks' thresholds, the leak
check's sources, the export's descriptions and docs/features.md all agree with it."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from cqt import catalogue
from cqt.catalogue import FEATURE_COLUMNS, FEATURES, MARKET_COLUMNS, PREDICTION_COLUMNS, TABLES
from cqt.checks.feature import range_rule
from cqt.checks.thresholds import BY_ENV, NULL_BY_DESIGN, NULL_RATE_DEFAULTS, Thresholds
from cqt.db import open_db
from cqt.features import compute_range
from cqt.timerule import RAW_TABLES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def conn(tmp_path):
    c = open_db(tmp_path / "cat.db")        # every migration applied
    yield c
    c.close()


@pytest.mark.parametrize("table", sorted(TABLES))
def test_schema_after_migrations_is_the_catalogue(conn, table):
    info = [(r[1], (r[2] or "").upper(), bool(r[3])) for r in conn.execute(f"PRAGMA table_info({table})")]
    want = [(c.name, c.sql_type, c.not_null) for c in TABLES[table]]
    assert info == want


def test_feature_function_writes_exactly_the_catalogue(conn):
    res = compute_range(conn, 1_700_000_000_000, 1_700_000_002_000)     # no data: NULLs, same columns
    assert set(res.columns_predictions) == {*FEATURE_COLUMNS, "score"}
    assert set(res.columns_market) == set(MARKET_COLUMNS)
    assert tuple(res.predictions.columns) == PREDICTION_COLUMNS
    assert tuple(res.market.columns) == MARKET_COLUMNS


def test_records_are_complete():
    assert len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)
    for f in FEATURES:
        assert f.unit and f.description, f.name
        assert f.sources and set(f.sources) <= set(RAW_TABLES), f.name
        assert f.window_s >= 0
        assert f.null_rate_max is None or (0 <= f.null_rate_max <= 1 and f.null_note), f.name
        if f.valid is not None and f.valid.env:
            assert BY_ENV[f.valid.env].default == f.valid.bound, f.name    # the check's default is the catalogue's


def test_checks_read_their_limits_from_the_catalogue(tmp_path):
    from fixtures_checks import settings_for

    th = Thresholds(settings_for(tmp_path / "x.db"))
    assert NULL_RATE_DEFAULTS == catalogue.null_rate_limits()
    assert NULL_BY_DESIGN == catalogue.null_by_design()
    for table, cols in TABLES.items():
        for c in cols:
            rule = range_rule(table, c.name, th)
            assert (rule is None) == (c.valid is None), (table, c.name)
    assert range_rule("predictions", "not_in_the_catalogue", th) is None


def test_leak_check_sources_are_the_catalogue():
    from cqt.checks import feature, leak

    assert leak.FEATURE_SOURCES is catalogue.FEATURE_SOURCES
    assert feature.catalogue is catalogue


def test_export_descriptions_are_the_catalogue():
    for name in ("cqt.export.parquet", "cqt.export"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "FEATURE_DESCRIPTIONS"):
            assert mod.FEATURE_DESCRIPTIONS == catalogue.descriptions()
            return
    pytest.fail("no module of the export holds FEATURE_DESCRIPTIONS")


def test_docs_list_exactly_the_catalogue():
    text = (ROOT / "docs" / "features.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- catalogue:begin[^>]*-->\n(.*?)<!-- catalogue:end -->", text, re.S)
    assert m, "docs/features.md has no catalogue block"
    assert m.group(1) == catalogue.markdown_table(), "regenerate: PYTHONPATH=lib python -m cqt.catalogue"
