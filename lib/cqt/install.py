"""`python -m cqt.install`: the systemd units, the crontab, and uninstalling them.

install.sh creates the checkout's .venv, data/ and .env, then execs this module for
`--systemd`, `--cron` and `--uninstall` (see `./install.sh --help`).

`--systemd`:
  1. copy the toolkit to the prefix (default /opt/cqt) without .git, .venv, data, reports and
     .env, deleting files an older copy had that the checkout no longer has; then run the
     prefix's own install.sh, which makes its .venv (pinned requirements), data/, reports/ and
     .env exactly as in a checkout. When the prefix is the checkout itself, nothing is copied;
  2. create the service user and group (system account, no login), unless --root;
  3. make the data, dataset and report directories (from the prefix's .env) owned by the
     service user, mode 2750 (group-readable for operators, setgid so files keep the group),
     and the .env root:GROUP 0640 (the services and the operators' `bin/cqt status` read it);
  4. render systemd/*.service|*.timer|*.target with the real paths into ROOT/etc/systemd/system,
     precompile the Python files (the units see the code read-only), `systemctl daemon-reload`
     when systemd is running and not --root, and print the next steps.
`--cron`: install cron/cqt.crontab (rendered the same way) for the service user, as a marked
  block in that user's crontab (`crontab -u USER`, or ROOT/var/spool/cron/crontabs/USER).
`--uninstall`: stop and disable the units, remove them and the crontab block. Never the data,
  the prefix or the user.

`--root DIR` stages everything under DIR: nothing outside it is changed, no user is created,
nothing is chown'ed and systemctl is not called. The prefix is then DIR/PREFIX on disk and
PREFIX in the unit files (as `systemctl --root` sees an image) -- unless PREFIX is already
inside DIR or is the checkout itself, in which case it is used as it is in both (how docker-systemctl-replacement's
`systemctl3 --root=DIR` runs units: it prefixes WorkingDirectory=/EnvironmentFile= with DIR
unless they already start with it, and runs ExecStart= as written).

Re-running is safe: files are only rewritten when their content changed, an existing .env is
never overwritten, and the crontab block is replaced, not appended.
"""
from __future__ import annotations

import filecmp
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from .config import ROOT, ConfigError, parse_env_file

DEFAULT_PREFIX = Path("/opt/cqt")
DEFAULT_USER = "cqt"
UNIT_DIR = Path("etc/systemd/system")          # under ROOT
CRON_SPOOL = Path("var/spool/cron/crontabs")    # Debian's spool, under ROOT (only with --root)
UNIT_SUFFIXES = (".service", ".timer", ".target")
# Written into every rendered unit: uninstall removes only files carrying it.
MARKER = "# Installed by cqt (./install.sh --systemd) from"
CRON_BEGIN = "# BEGIN cqt (installed by ./install.sh --cron; re-run it to update, --uninstall to remove)"
CRON_END = "# END cqt"

# Never copied to the prefix (top level), and never deleted from it.
TOP_EXCLUDE = {".git", ".venv", "data", "reports", ".env", "tmp", ".pytest_cache", ".mypy_cache",
               ".ruff_cache", ".idea", ".vscode"}
ANY_EXCLUDE = {"__pycache__", ".pytest_cache"}
EXCLUDE_SUFFIXES = (".pyc", ".pyo", ".swp")
# Paths the units may not get write access to, whatever .env says.
FORBIDDEN_RW = {"/", "/tmp", "/var", "/var/tmp", "/var/lib", "/etc", "/usr", "/home", "/opt", "/root", "/srv",
                "/run", "/boot", "/bin", "/sbin", "/lib"}
# ProtectHome=/PrivateTmp= hide these from the units: a prefix or data directory there cannot work.
HIDDEN_FROM_UNITS = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")
_SAFE_PATH_RE = re.compile(r"^[A-Za-z0-9._/+@:,=-]+$")
_PLACEHOLDER_RE = re.compile(r"@[A-Z_]+@")


class InstallError(Exception):
    """A clear, one-line reason the installation cannot go on (exit 1)."""


def say(msg: str) -> None:
    click.echo(f"install: {msg}")


# ------------------------------------------------------------------------------ layout
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

    def __post_init__(self) -> None:
        self.env_file = self.prefix / ".env"

    @property
    def in_place(self) -> bool:
        return self.prefix_disk.resolve() == self.source.resolve()

    def disk(self, path: Path) -> Path:
        """The on-disk location of a path the units see."""
        if _is_within(path, self.prefix):
            return self.prefix_disk / path.relative_to(self.prefix)
        if self.root is None or _is_within(path, self.root):
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


def _is_within(path: Path, parent: Path) -> bool:
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
    if (root_p is not None and _is_within(prefix_p, root_p)) or prefix_p.resolve() == source.resolve():
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
    return Layout(source=source.resolve(), root=root_p, prefix=prefix_p, prefix_disk=prefix_disk, user=user, group=group)


def check_paths(lay: Layout) -> None:
    for p in [lay.prefix, *lay.data_dirs.values()]:
        if not _SAFE_PATH_RE.match(str(p)):
            raise InstallError(f"{p}: paths in unit files may only use letters, digits and ._/+@:,=- "
                               "(no spaces, quotes, % or $)")
    src = lay.source
    if not lay.in_place:
        if _is_within(lay.prefix_disk.resolve(), src):
            raise InstallError(f"--prefix {lay.prefix_disk} is inside the checkout {src}: choose another directory")
        if _is_within(src, lay.prefix_disk.resolve()):
            raise InstallError(f"--prefix {lay.prefix_disk} contains the checkout {src}: choose another directory")
    for name, d in lay.data_dirs.items():
        if str(d) in FORBIDDEN_RW or d == lay.prefix:
            raise InstallError(f"{d} ({name.strip('@').lower()}, from {lay.env_file}) would be writable by every "
                               "unit: point CQT_DB, CQT_DATASET_DIR and CQT_REPORT at a directory of their own")
    if lay.root is None:
        for p in [lay.prefix, *lay.data_dirs.values()]:
            for hidden in HIDDEN_FROM_UNITS:
                if _is_within(p, Path(hidden)):
                    raise InstallError(
                        f"{p} is under {hidden}, which the units cannot see (ProtectHome=/PrivateTmp=): "
                        f"install with --prefix {DEFAULT_PREFIX} (the default) or another directory outside {hidden}")


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

    lay.data_dirs = {
        "@DATADIR@": path_of("CQT_DB", "data/cqt.db").parent,
        "@DATASETDIR@": path_of("CQT_DATASET_DIR", "data/datasets"),
        "@REPORTDIR@": path_of("CQT_REPORT", "reports/step-alt-5.md").parent,
    }


# ------------------------------------------------------------------------------ copy
def _wanted(rel: Path) -> bool:
    parts = rel.parts
    if parts and parts[0] in TOP_EXCLUDE:
        return False
    if any(p in ANY_EXCLUDE for p in parts):
        return False
    return not rel.name.endswith(EXCLUDE_SUFFIXES)


def source_files(src: Path) -> list[Path]:
    """Relative paths of every file (and symlink) of the toolkit, in a stable order."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(src):      # does not descend into symlinked dirs
        rel_dir = Path(dirpath).relative_to(src)
        dirnames[:] = sorted(n for n in dirnames if _wanted(rel_dir / n))
        links = [n for n in dirnames if (Path(dirpath) / n).is_symlink()]
        out.extend(rel_dir / n for n in sorted(filenames + links) if _wanted(rel_dir / n))
    return out


def _same(a: Path, b: Path) -> bool:
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    if not b.is_file():
        return False
    if stat.S_IMODE(a.stat().st_mode) != stat.S_IMODE(b.stat().st_mode):
        return False
    return filecmp.cmp(a, b, shallow=False)


def copy_toolkit(src: Path, dst: Path) -> tuple[int, int]:
    """Mirror the toolkit into dst (rsync -a --delete with excludes). Returns (copied, deleted).

    Each file is written to a temporary name and renamed into place, so a running service
    never imports a half-written module. Data, reports, .env and .venv are never touched.
    """
    files = source_files(src)
    dst.mkdir(parents=True, exist_ok=True)
    copied = 0
    for rel in files:
        s, d = src / rel, dst / rel
        if _same(s, d):
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.with_name(f".{d.name}.cqt-install-tmp")
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        if s.is_symlink():
            os.symlink(os.readlink(s), tmp)
        else:
            shutil.copy2(s, tmp)
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)
        os.replace(tmp, d)
        copied += 1
    # Delete what an older copy had and the checkout no longer has -- only inside the top-level
    # entries the toolkit ships (bin/, lib/, ...), never the operator's own files next to them.
    keep = set(files)
    shipped_top = {rel.parts[0] for rel in files}
    deleted = 0
    for top in sorted(shipped_top):
        t = dst / top
        if not t.is_dir() or t.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(t, topdown=False):
            d = Path(dirpath)
            for n in filenames + [n for n in dirnames if (d / n).is_symlink()]:
                rel = (d / n).relative_to(dst)
                if rel not in keep and _wanted(rel):
                    (d / n).unlink()
                    deleted += 1
            for n in dirnames:
                p = d / n
                if p.is_dir() and not p.is_symlink() and _wanted(p.relative_to(dst)):
                    try:
                        p.rmdir()        # only empty directories
                    except OSError:
                        pass
    return copied, deleted


# ------------------------------------------------------------------------------ render
def render(text: str, values: dict[str, str], origin: str) -> str:
    for key, val in values.items():
        text = text.replace(key, val)
    left = sorted(set(_PLACEHOLDER_RE.findall(text)))
    if left:
        raise InstallError(f"{origin}: unknown placeholder(s) {', '.join(left)}")
    return text


def unit_templates(src: Path) -> list[Path]:
    return sorted(p for p in (src / "systemd").iterdir() if p.suffix in UNIT_SUFFIXES and p.name.startswith("cqt"))


def render_units(lay: Layout) -> dict[str, str]:
    """name -> rendered unit text (with the MARKER line first)."""
    out: dict[str, str] = {}
    for t in unit_templates(lay.source):
        body = render(t.read_text(encoding="utf-8"), lay.placeholders(), f"systemd/{t.name}")
        out[t.name] = f"{MARKER} {lay.prefix}/systemd/{t.name}\n{body}"
    return out


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Atomically write text unless the file already holds it. True if written."""
    try:
        if path.read_text(encoding="utf-8") == text and stat.S_IMODE(path.stat().st_mode) == mode:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.cqt-install-tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def installed_units(unit_dir: Path) -> list[Path]:
    """Unit files in unit_dir that this installer wrote (they carry MARKER)."""
    found = []
    if unit_dir.is_dir():
        for p in sorted(unit_dir.iterdir()):
            if p.is_file() and not p.is_symlink() and p.name.startswith("cqt") and p.suffix in UNIT_SUFFIXES:
                try:
                    with p.open(encoding="utf-8") as f:
                        if f.readline().startswith(MARKER):
                            found.append(p)
                except (OSError, UnicodeDecodeError):
                    continue
    return found


# ------------------------------------------------------------------------------ system
def systemd_running() -> bool:
    """sd_booted(): PID 1 is systemd."""
    return os.path.isdir("/run/systemd/system") and shutil.which("systemctl") is not None


def run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, text=True, **kw)
    if check and p.returncode != 0:
        raise InstallError(f"{' '.join(cmd)} exited {p.returncode}")
    return p


def ensure_user(user: str, group: str, home: Path) -> str:
    """Create the system group and user unless they exist. Returns the group actually used."""
    try:
        pw = pwd.getpwnam(user)
        say(f"user {user} exists (uid {pw.pw_uid})")
        return grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        raise InstallError("useradd not found: create the service user yourself, or pass --user NAME of an existing one")
    nologin = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false") if os.path.exists(s)), "/bin/false")
    cmd = ["useradd", "--system", "--home-dir", str(home), "--no-create-home", "--shell", nologin,
           "--comment", "cqt data collection"]
    try:
        grp.getgrnam(group)
        cmd += ["--gid", group]
    except KeyError:
        cmd += ["--user-group"]
    run(cmd + [user])
    say(f"created system user {user} (group {group}, no login)")
    return group


def chown_tree(path: Path, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        for n in [*dirnames, *filenames]:
            p = Path(dirpath) / n
            st = p.lstat()
            if st.st_uid != uid or st.st_gid != gid:
                os.lchown(p, uid, gid)


def prepare_data_dirs(lay: Layout, real_system: bool) -> None:
    """Create the writable directories; on the real system owned by the service user, 2750."""
    dirs = sorted({lay.disk(d) for d in lay.data_dirs.values()})
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    if not real_system:
        return
    uid, gid = pwd.getpwnam(lay.user).pw_uid, grp.getgrnam(lay.group).gr_gid
    for d in dirs:
        os.chown(d, uid, gid)
        os.chmod(d, 0o2750)          # setgid: new files keep the group operators are in
        chown_tree(d, uid, gid)
    env = lay.disk(lay.env_file)
    if env.exists():
        os.chown(env, 0, gid)
        os.chmod(env, 0o640)         # root edits it; the service user and operators read it


def setup_prefix(lay: Layout, no_deps: bool, python: str | None) -> None:
    if lay.in_place:
        say(f"prefix {lay.prefix_disk} is the checkout: running in place")
        return
    copied, deleted = copy_toolkit(lay.source, lay.prefix_disk)
    say(f"copied the toolkit to {lay.prefix_disk} ({copied} files updated, {deleted} stale removed)")
    cmd = [str(lay.prefix_disk / "install.sh")]
    if no_deps:
        cmd.append("--no-deps")
    if python:
        cmd += ["--python", python]
    say(f"setting up {lay.prefix_disk} with its install.sh {' '.join(cmd[1:])}".rstrip())
    with subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={k: v for k, v in os.environ.items() if k not in ("CQT_ENV_FILE", "PYTHONPATH")}) as p:
        assert p.stdout is not None
        for line in p.stdout:                         # live: pip may take a while
            if not line.startswith("install: done."):  # its own "next steps" are not ours
                click.echo(f"  {line.rstrip()}")
    if p.returncode != 0:
        raise InstallError(f"{cmd[0]} exited {p.returncode}")


def compile_python(lay: Layout) -> None:
    """Precompile lib/: under ProtectSystem=strict the units cannot write __pycache__."""
    py = lay.prefix_disk / ".venv" / "bin" / "python"
    if py.exists():
        run([str(py), "-m", "compileall", "-q", "-j", "0", str(lay.prefix_disk / "lib")],
            stdout=subprocess.DEVNULL)


def ensure_exec_paths(lay: Layout, units: dict[str, str]) -> None:
    """Every ExecStart= program must exist on disk (systemd refuses to start the unit otherwise)."""
    for name, text in units.items():
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                exe = Path(line.split("=", 1)[1].split()[0].lstrip("-@:+!"))
                on_disk = lay.disk(exe)
                if not os.access(on_disk, os.X_OK):
                    raise InstallError(f"{name}: {on_disk} is missing or not executable")


# ------------------------------------------------------------------------------ actions
def install_systemd(lay: Layout, no_deps: bool, python: str | None) -> None:
    real_system = lay.root is None
    if real_system and os.geteuid() != 0:
        raise InstallError("installing systemd units needs root: sudo ./install.sh --systemd "
                           "(or --root DIR to stage them under DIR)")
    check_paths(lay)                           # the prefix, before anything is written
    setup_prefix(lay, no_deps, python)
    resolve_data_dirs(lay)
    check_paths(lay)                           # and the data directories from its .env
    if real_system:
        lay.group = ensure_user(lay.user, lay.group, lay.data_dirs["@DATADIR@"])
    prepare_data_dirs(lay, real_system)
    compile_python(lay)
    units = render_units(lay)
    ensure_exec_paths(lay, units)
    changed = [n for n, text in units.items() if write_if_changed(lay.unit_dir / n, text)]
    stale = [p for p in installed_units(lay.unit_dir) if p.name not in units]
    for p in stale:
        p.unlink()
    say(f"units in {lay.unit_dir}: {len(units)} ({len(changed)} written, {len(units) - len(changed)} unchanged"
        + (f", {len(stale)} obsolete removed" if stale else "") + ")")
    if real_system and systemd_running():
        run(["systemctl", "daemon-reload"])
        say("systemctl daemon-reload: done")
    elif real_system:
        say("systemd is not running here (PID 1 is not systemd): units installed, not loaded")
    print_next_steps(lay, changed)


def print_next_steps(lay: Layout, changed: list[str]) -> None:
    p = lay.prefix
    click.echo(f"""
Next steps{' (staged under ' + str(lay.root) + ')' if lay.root else ''}:
  1. keys and settings:     edit {lay.env_file}   then: sudo -u {lay.user} {p}/bin/cqt env check
  2. start at boot and now: systemctl enable --now cqt.target
  3. watch:                 systemctl status 'cqt-*'   |   journalctl -u 'cqt-*' -f
  4. checks and the nightly job, ONE of:
       ./install.sh --cron                                   (crontab of user {lay.user})
       systemctl enable --now cqt-scheduler.service          (APScheduler, joins cqt.target)
       systemctl enable --now cqt-checks.timer cqt-nightly.timer
  5. operators read the data and run checks as group {lay.group}:  usermod -aG {lay.group} NAME
  no Coinglass key? systemctl mask cqt-poll-coinglass.service""")
    if changed and lay.root is None:
        click.echo("  units changed: if cqt is running, apply with  systemctl restart cqt.target")


def crontab_block(lay: Layout) -> str:
    src = lay.source / "cron" / "cqt.crontab"
    if not src.exists():
        raise InstallError(f"{src} not found")
    body = render(src.read_text(encoding="utf-8"), lay.placeholders(), "cron/cqt.crontab")
    # The crontab names the toolkit through one variable line: point it at the prefix.
    body, n = re.subn(r"(?m)^CQT_HOME=.*$", f"CQT_HOME={lay.prefix}", body)
    if n == 0 and "@PREFIX@" not in src.read_text(encoding="utf-8"):
        raise InstallError(f"{src}: no CQT_HOME= line to point at {lay.prefix}")
    return f"{CRON_BEGIN}\n{body.rstrip()}\n{CRON_END}\n"


def replace_block(existing: str, block: str | None) -> str:
    """existing crontab text with the cqt block replaced (or removed when block is None)."""
    lines = existing.splitlines(keepends=True)
    out, inside = [], False
    for line in lines:
        if line.rstrip("\n") == CRON_BEGIN:
            inside = True
            continue
        if inside:
            if line.rstrip("\n") == CRON_END:
                inside = False
            continue
        out.append(line)
    text = "".join(out).rstrip("\n")          # the blank line that separated the block goes too
    text = text + "\n" if text.strip() else ""
    if block is not None:
        text = (text + "\n" if text else "") + block
    return text


def _read_crontab(lay: Layout) -> str:
    if lay.root is not None:
        p = lay.root / CRON_SPOOL / lay.user
        return p.read_text(encoding="utf-8") if p.exists() else ""
    if shutil.which("crontab") is None:
        raise InstallError("crontab not found: install cron (Debian: apt-get install cron), or use "
                           "cqt-scheduler.service or the timers instead")
    p = subprocess.run(["crontab", "-u", lay.user, "-l"], capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else ""     # 1 = no crontab yet


def _write_crontab(lay: Layout, text: str) -> None:
    if lay.root is not None:
        p = lay.root / CRON_SPOOL / lay.user
        if text.strip():
            write_if_changed(p, text, mode=0o600)
        elif p.exists():
            p.unlink()
        return
    if text.strip():
        run(["crontab", "-u", lay.user, "-"], input=text)
    else:
        subprocess.run(["crontab", "-u", lay.user, "-r"], capture_output=True)


def install_cron(lay: Layout) -> None:
    if lay.root is None and os.geteuid() != 0:
        raise InstallError("installing the service user's crontab needs root: sudo ./install.sh --cron")
    if lay.root is None:
        try:
            pwd.getpwnam(lay.user)
        except KeyError:
            raise InstallError(f"user {lay.user} does not exist: run ./install.sh --systemd first "
                               "(it creates the user), or pass --user NAME") from None
    if not (lay.disk(lay.prefix) / "bin").is_dir():
        raise InstallError(f"{lay.disk(lay.prefix)} has no toolkit: run ./install.sh --systemd first (or pass --prefix)")
    resolve_data_dirs(lay)
    before = _read_crontab(lay)
    after = replace_block(before, crontab_block(lay))
    if after == before:
        say(f"crontab of {lay.user}: unchanged")
    else:
        _write_crontab(lay, after)
        where = lay.root / CRON_SPOOL / lay.user if lay.root else f"crontab -u {lay.user}"
        say(f"crontab of {lay.user}: cqt block installed ({where})")
    say(f"check with: crontab -u {lay.user} -l   (runs as {lay.user}; output goes to the journal)")


def uninstall(lay: Layout) -> None:
    real_system = lay.root is None
    if real_system and os.geteuid() != 0:
        raise InstallError("uninstalling needs root: sudo ./install.sh --uninstall")
    units = installed_units(lay.unit_dir)
    names = [p.name for p in units]
    if real_system and systemd_running() and names:
        # Stop first (the timers too, so nothing starts again), then drop the enablement links.
        subprocess.run(["systemctl", "stop", *names], text=True)
        subprocess.run(["systemctl", "disable", *names], capture_output=True, text=True)
    # Enablement symlinks (also what `disable` would remove, for --root and no-systemd hosts).
    links = 0
    if lay.unit_dir.is_dir():
        for wants in lay.unit_dir.glob("*.wants"):
            for link in wants.iterdir():
                if link.is_symlink() and link.name in names:
                    link.unlink()
                    links += 1
            try:
                wants.rmdir()
            except OSError:
                pass
    for p in units:
        p.unlink()
    say(f"removed {len(units)} unit files from {lay.unit_dir}" + (f" and {links} enablement links" if links else ""))
    if real_system and systemd_running():
        run(["systemctl", "daemon-reload"])
        subprocess.run(["systemctl", "reset-failed", *names], capture_output=True)
    overrides = sorted(lay.unit_dir.glob("cqt*.d")) if lay.unit_dir.is_dir() else []
    if overrides:
        say("left your overrides (systemctl edit): " + " ".join(str(o) for o in overrides))
    # The crontab block, if any.
    try:
        before = _read_crontab(lay)
    except InstallError:
        before = ""
    if CRON_BEGIN in before:
        _write_crontab(lay, replace_block(before, None))
        say(f"removed the cqt block from the crontab of {lay.user}")
    say(f"kept: the data, the toolkit in {lay.disk(lay.prefix)} and the user {lay.user} "
        f"(remove them by hand if you want: rm -r {lay.disk(lay.prefix)}; userdel {lay.user})")


# ------------------------------------------------------------------------------ cli
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--systemd", "want_systemd", is_flag=True, help="Install the systemd units with real paths.")
@click.option("--cron", "want_cron", is_flag=True, help="Install cron/cqt.crontab for the service user.")
@click.option("--uninstall", "want_uninstall", is_flag=True, help="Remove units and crontab (never the data).")
@click.option("--prefix", default=None, help=f"Where the toolkit lives (default {DEFAULT_PREFIX}; the checkout: in place).")
@click.option("--user", default=None, help=f"Service user and group (default {DEFAULT_USER}; created if missing).")
@click.option("--root", default=None, help="Stage under DIR: nothing outside it changes, no user, no systemctl.")
@click.option("--no-deps", is_flag=True, help="Do not pip install into the prefix's .venv.")
@click.option("--python", default=None, help="Python interpreter for the prefix's .venv.")
def main(want_systemd: bool, want_cron: bool, want_uninstall: bool, prefix: str | None, user: str | None,
         root: str | None, no_deps: bool, python: str | None) -> None:
    """Install (or remove) cqt's systemd units and crontab. Normally run through ./install.sh."""
    if want_uninstall and (want_systemd or want_cron):
        raise click.UsageError("--uninstall cannot be combined with --systemd or --cron")
    if not (want_systemd or want_cron or want_uninstall):
        raise click.UsageError("nothing to do: give --systemd, --cron or --uninstall")
    try:
        if root and not Path(root).is_dir():
            raise InstallError(f"--root {root}: not a directory")
        lay = make_layout(prefix, user, root)
        if want_uninstall:
            uninstall(lay)
            return
        if want_systemd:
            install_systemd(lay, no_deps, python)
        if want_cron:
            install_cron(lay)
    except InstallError as exc:
        click.echo(f"install: error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"install: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        sys.exit(1)


if __name__ == "__main__":
    main(prog_name="install.sh")
