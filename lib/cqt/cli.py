"""Entry points behind the bin scripts.

Each function imports the module that owns the program only when it runs, so a
program pays only for what it uses (pandas/pyarrow cost ~0.5 s to import).
`lib/cqt/__main__.py` maps a program name (the bin script's name) to one of these.
"""
from __future__ import annotations

import importlib
import sys

import click


def _call(target: str) -> None:
    module, _, attr = target.partition(":")
    cmd = getattr(importlib.import_module(module), attr)
    prog = sys.argv[0]
    cmd(prog_name=prog) if isinstance(cmd, click.Command) else sys.exit(cmd())


class _LazyGroup(click.Group):
    """`cqt <command>`: subcommands live in their own modules, imported on use."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            target, _help = self.lazy[name]
            module, _, attr = target.partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text for lazy commands without importing them.
        rows = [(name, self.lazy[name][1]) for name in sorted(self.lazy)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


OPERATOR_COMMANDS = {
    "db": ("cqt.dbcli:db_group", "The database file: apply schema migrations (db migrate)."),
    "env": ("cqt.ops:env", "Create or check .env (keys are never printed)."),
    "status": ("cqt.ops:status", "One screen: services, rows, freshness, checks, sizes, errors."),
    "demo": ("cqt.demo:demo", "Run the whole pipeline against cqt-sim for a few minutes."),
    "replay": ("cqt.replay.cli:replay", "Push a capture file through the parsers into a database."),
    "synth": ("cqt.synth:synth", "Build a synthetic database from the sim's market model."),
    "probe": ("cqt.probe.cli:probe", "Try every stream and REST endpoint cqt uses from this host (before a long run)."),
}


@click.group(cls=_LazyGroup, lazy=OPERATOR_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
def cqt_group() -> None:
    """cqt operator commands."""


def cqt() -> None:
    cqt_group(prog_name="cqt")


PROGRAMS = {
    "cqt-sim": "cqt.sim.cli:main",
    "cqt-collect-upbit": "cqt.venues.upbit.collect:main",
    "cqt-collect-binance": "cqt.venues.binance.collect:main",
    "cqt-poll-binance": "cqt.venues.binance.poll:main",
    "cqt-poll-coinglass": "cqt.venues.coinglass.poll:main",
    "cqt-aggregate": "cqt.aggregate.cli:main",
    "cqt-export": "cqt.export.cli:main",
    "cqt-report": "cqt.report.cli:main",
    "cqt-nightly": "cqt.nightly.cli:main",
    "cqt-scheduler": "cqt.scheduler:main",
    "cqt-dashboard": "cqt.dashboard.cli:main",
    "altdata_check": "cqt.checks.altdata:main",
    "feature_check": "cqt.checks.feature:main",
    "feature_leak_check": "cqt.checks.leak:main",
    "coinglass_check": "cqt.checks.coinglass:main",
    "run_pipeline_checks": "cqt.checks.runner:main",
}


def run_program(name: str) -> None:
    """Dispatch by program name (what the bin script is called)."""
    if name == "cqt":
        cqt()
        return
    target = PROGRAMS.get(name)
    if target is None:
        print(f"cqt: unknown program {name!r}", file=sys.stderr)
        sys.exit(2)
    _call(target)
