"""Prometheus textfile metrics: one `.prom` file per writer in CQT_TEXTFILE_DIR, for
node_exporter's textfile collector (`--collector.textfile.directory=DIR`).

The text comes from prometheus_client (a CollectorRegistry rendered by `generate_latest`,
the same text `write_to_textfile` writes); the file is replaced atomically through
`cqt.outputs.write_atomic` (a temp file `.NAME.tmp-PID` in the same directory, which the
collector ignores, then a rename) with mode 0644 set before the rename — `write_to_textfile`
leaves the mode to the umask, and node_exporter usually runs as another user. No sample
carries a timestamp (node_exporter skips a file that has one); values are in base units
(seconds, bytes, ratios 0..1). Off unless CQT_TEXTFILE_DIR is set; a failed write is one
warning (again only after a write has succeeded) and never changes an exit code.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable, Iterable

from ..config import ConfigError, Settings, check_path
from ..outputs import write_atomic

log = logging.getLogger("cqt.monitor")

FILE_MODE = 0o644
DIR_MODE = 0o755        # a directory this writer had to create


class Family:
    """One metric family: its samples by label values (setting a label set again replaces it)."""

    def __init__(self, name: str, kind: str, doc: str, labels: tuple[str, ...]):
        self.name, self.kind, self.doc, self.labels = name, kind, doc, labels
        self.samples: dict[tuple[str, ...], float] = {}

    def set(self, value: float | int | bool | None, *label_values: str) -> None:
        """One sample; a missing value (None) is left out rather than written as NaN."""
        if value is None:
            return
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name}: labels {self.labels}, got {label_values}")
        self.samples[tuple(str(v) for v in label_values)] = float(value)


class MetricSet:
    """The families of one `.prom` file, rendered in the order they were declared."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def _family(self, name: str, kind: str, doc: str, labels: Iterable[str]) -> Family:
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = Family(name, kind, doc, tuple(labels))
        return fam

    def gauge(self, name: str, doc: str, labels: Iterable[str] = ()) -> Family:
        return self._family(name, "gauge", doc, labels)

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Family:
        """A counter; `name` ends in `_total` (prometheus_client adds it to the family name)."""
        if not name.endswith("_total"):
            raise ValueError(f"{name}: a counter's name ends in _total")
        return self._family(name, "counter", doc, labels)

    def render(self) -> bytes:
        """The Prometheus text format, through prometheus_client; no timestamps, no `_created`."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families = list(self.families.values())

        class Collector:
            def collect(self):
                for f in families:
                    make = GaugeMetricFamily if f.kind == "gauge" else CounterMetricFamily
                    out = make(f.name, f.doc, labels=list(f.labels))
                    for values, v in f.samples.items():
                        out.add_metric(list(values), v)
                    yield out

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector())
        return generate_latest(registry)


def textfile_dir(settings: Settings) -> Path | None:
    """CQT_TEXTFILE_DIR as an absolute path (relative: under the toolkit root), or None when off."""
    value = settings.get_str("CQT_TEXTFILE_DIR").strip()
    return check_path("CQT_TEXTFILE_DIR", value) if value else None


class TextfileWriter:
    """Writes one `.prom` file; `enabled` is False when CQT_TEXTFILE_DIR is not set."""

    def __init__(self, settings: Settings, filename: str, job: str):
        self.job = job
        self.path: Path | None = None
        self.warned = False
        try:
            directory = textfile_dir(settings)
        except ConfigError as exc:
            self.warn(f"textfile metrics off: {exc}")
            return
        if directory is not None:
            self.path = directory / filename

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def warn(self, text: str) -> None:
        if self.warned:
            log.debug("%s: %s", self.job, text)
            return
        self.warned = True
        log.warning("%s: %s (the job's exit code is unchanged)", self.job, text)

    def write(self, metrics: MetricSet | Callable[[], MetricSet]) -> bool:
        """Replace the file with `metrics` (or what calling it builds, so a failure to build is
        caught here too); False (and one warning) when that failed. Never raises."""
        if self.path is None:
            return False
        try:
            data = (metrics() if callable(metrics) else metrics).render()

            def put(tmp: Path) -> None:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
                with os.fdopen(fd, "wb") as fh:
                    os.fchmod(fh.fileno(), FILE_MODE)     # whatever the umask says
                    fh.write(data)

            directory = self.path.parent
            if not directory.is_dir():
                # ours: readable by node_exporter's user whatever the umask (an existing one is left alone)
                directory.mkdir(parents=True, exist_ok=True)
                os.chmod(directory, DIR_MODE)
            write_atomic(self.path, write=put, keep_mode=False)
        except Exception as exc:  # noqa: BLE001 - a metrics file never changes what the job does
            self.warn(f"cannot write textfile metrics {self.path}: {type(exc).__name__}: {exc}")
            return False
        self.warned = False
        return True


def finite(value: float | int | None) -> float | None:
    """A number for a sample, or None (left out) for a missing or not-a-number value."""
    if value is None or isinstance(value, str):
        return None
    v = float(value)
    return None if math.isnan(v) else v
