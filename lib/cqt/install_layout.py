"""Where the installer puts things: the prefix, the service user, the unit and data directories."""
from __future__ import annotations

import grp
import os
import pwd
import re
from dataclasses import dataclass, field
from pathlib import Path

import click

from .config import ROOT, ConfigError, parse_env_file

DEFAULT_PREFIX = Path("/opt/cqt")
DEFAULT_USER = "cqt"
UNIT_DIR = Path("etc/systemd/system")          # under ROOT
CRON_SPOOL = Path("var/spool/cron/crontabs")    # Debian's spool, under ROOT (only with --root)
# Paths the units may not get write access to, whatever .env says.
FORBIDDEN_RW = {"/", "/tmp", "/var", "/var/tmp", "/var/lib", "/etc", "/usr", "/home", "/opt", "/root", "/srv",
                "/run", "/boot", "/bin", "/sbin", "/lib"}
# ProtectHome=/PrivateTmp= hide these from the units: a prefix or data directory there cannot work.
HIDDEN_FROM_UNITS = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")
SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9._/+@:,=-]+$")


class InstallError(Exception):
    """A clear, one-line reason the installation cannot go on (exit 1)."""


def say(msg: str) -> None:
    click.echo(f"install: {msg}")


@dataclass
class Layout:
    """Where things are on disk (`*_disk`) and how the unit files name them."""
    source: Path                 # the checkout running this module
    root: Path | None            # --root (None: the real system)
    prefix: Path                 # the prefix as the units see it
    prefix_disk: Path            # ... and where it is on disk
    user: str
    group: str
    env_file: Path = field(init=False)
    data_dirs: dict[str, Path] = field(default_factory=dict)   # placeholder -> dir as the units see it
    monitoring: dict[str, str] = field(default_factory=dict)    # the .env's monitoring hooks that are set

    def __post_init__(self) -> None:
        self.env_file = self.prefix / ".env"

    @property
    def in_place(self) -> bool:
        return self.prefix_disk.resolve() == self.source.resolve()

    def disk(self, path: Path) -> Path:
        """The on-disk location of a path the units see."""
        if is_within(path, self.prefix):
            return self.prefix_disk / path.relative_to(self.prefix)
        if self.root is None or is_within(path, self.root):
            return path
        return self.root / path.relative_to("/")

    @property
    def unit_dir(self) -> Path:
        return (self.root or Path("/")) / UNIT_DIR

    def placeholders(self) -> dict[str, str]:
        values = {"@PREFIX@": str(self.prefix), "@USER@": self.user, "@GROUP@": self.group,
                  "@ENVFILE@": str(self.env_file)}
        values.update({k: str(v) for k, v in self.data_dirs.items()})
        return values


def is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def make_layout(prefix: str | None, user: str | None, root: str | None, source: Path = ROOT) -> Layout:
    root_p = Path(root).absolute() if root else None
    if root_p is not None and root_p == Path("/"):
        root_p = None
    prefix_p = Path(os.path.abspath(prefix)) if prefix else DEFAULT_PREFIX
    if (root_p is not None and is_within(prefix_p, root_p)) or prefix_p.resolve() == source.resolve():
        prefix_disk = prefix_p          # inside the root already, or the checkout itself (in place)
    else:
        prefix_disk = root_p / prefix_p.relative_to("/") if root_p is not None else prefix_p
    user = user or DEFAULT_USER
    if not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", user):
        raise InstallError(f"--user {user!r}: not a valid user name (lower case letters, digits, _ and -)")
    group = user
    try:
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name    # an existing user's primary group
    except KeyError:
        pass
    return Layout(source=source.resolve(), root=root_p, prefix=prefix_p, prefix_disk=prefix_disk,
                  user=user, group=group)


def check_paths(lay: Layout) -> None:
    for p in [lay.prefix, *lay.data_dirs.values()]:
        if not SAFE_PATH_RE.match(str(p)):
            raise InstallError(f"{p}: paths in unit files may only use letters, digits and ._/+@:,=- "
                               "(no spaces, quotes, % or $)")
    src = lay.source
    if not lay.in_place:
        if is_within(lay.prefix_disk.resolve(), src):
            raise InstallError(f"--prefix {lay.prefix_disk} is inside the checkout {src}: choose another directory")
        if is_within(src, lay.prefix_disk.resolve()):
            raise InstallError(f"--prefix {lay.prefix_disk} contains the checkout {src}: choose another directory")
    for name, d in lay.data_dirs.items():
        if str(d) in FORBIDDEN_RW or d == lay.prefix:
            raise InstallError(f"{d} ({name.strip('@').lower()}, from {lay.env_file}) would be writable by every "
                               "unit: point CQT_DB, CQT_DATASET_DIR and CQT_REPORT at a directory of their own")
    if lay.root is None:
        for p in [lay.prefix, *lay.data_dirs.values()]:
            for hidden in HIDDEN_FROM_UNITS:
                if is_within(p, Path(hidden)):
                    raise InstallError(
                        f"{p} is under {hidden}, which the units cannot see (ProtectHome=/PrivateTmp=): "
                        f"install with --prefix {DEFAULT_PREFIX} (the default) or another directory outside {hidden}")


#: the hooks whose units need more than the default sandbox (see install_units.monitoring_dropins)
MONITORING_VARS = ("CQT_HC_URL_CHECKS", "CQT_HC_URL_NIGHTLY", "CQT_TEXTFILE_DIR")


def resolve_data_dirs(lay: Layout) -> None:
    """The writable directories, from the prefix's .env (relative paths are under the prefix)."""
    env_disk = lay.disk(lay.env_file)
    try:
        values = parse_env_file(env_disk)
    except ConfigError as exc:
        raise InstallError(f"{env_disk}: {exc}") from None

    def path_of(var: str, default: str) -> Path:
        raw = values.get(var, "").strip() or default
        p = Path(raw)
        return Path(os.path.normpath(p if p.is_absolute() else lay.prefix / p))

    lay.monitoring = {k: values[k].strip() for k in MONITORING_VARS if values.get(k, "").strip()}
    if "CQT_TEXTFILE_DIR" in lay.monitoring:
        lay.monitoring["CQT_TEXTFILE_DIR"] = str(path_of("CQT_TEXTFILE_DIR", ""))
    lay.data_dirs = {
        "@DATADIR@": path_of("CQT_DB", "data/cqt.db").parent,
        "@DATASETDIR@": path_of("CQT_DATASET_DIR", "data/datasets"),
        "@REPORTDIR@": path_of("CQT_REPORT", "reports/step-alt-5.md").parent,
    }
