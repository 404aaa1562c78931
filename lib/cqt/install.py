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

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path

import click

from .install_files import write_if_changed
from .install_layout import (
    CRON_SPOOL,
    DEFAULT_PREFIX,
    DEFAULT_USER,
    InstallError,
    Layout,
    check_paths,
    make_layout,
    resolve_data_dirs,
    say,
)
from .install_system import (
    compile_python,
    ensure_user,
    prepare_data_dirs,
    read_crontab,
    run,
    setup_prefix,
    systemd_running,
    write_crontab,
)
from .install_units import (
    CRON_BEGIN,
    crontab_block,
    ensure_exec_paths,
    installed_dropins,
    installed_units,
    monitoring_dropins,
    render_units,
    replace_block,
)


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
    changed += install_monitoring_dropins(lay, real_system)
    if real_system and systemd_running():
        run(["systemctl", "daemon-reload"])
        say("systemctl daemon-reload: done")
    elif real_system:
        say("systemd is not running here (PID 1 is not systemd): units installed, not loaded")
    print_next_steps(lay, changed)


def install_monitoring_dropins(lay: Layout, real_system: bool) -> list[str]:
    """The drop-ins the .env's monitoring hooks need (network for pings, the textfile directory
    writable), written; ones of ours no longer needed removed. Returns what changed."""
    dropins = monitoring_dropins(lay)
    changed = []
    for rel, text in dropins.items():
        path = lay.unit_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if write_if_changed(path, text):
            changed.append(rel)
    for p in installed_dropins(lay.unit_dir):
        if f"{p.parent.name}/{p.name}" not in dropins:
            remove_dropin(p)
            changed.append(f"{p.parent.name}/{p.name}")
    textfile_dir = lay.monitoring.get("CQT_TEXTFILE_DIR")
    if textfile_dir:
        d = lay.disk(Path(textfile_dir))
        d.mkdir(parents=True, exist_ok=True)
        if real_system:          # node_exporter (another user) reads it: 0755, files 0644
            os.chown(d, pwd.getpwnam(lay.user).pw_uid, grp.getgrnam(lay.group).gr_gid)
            os.chmod(d, 0o755)
    if dropins or changed:
        say(f"monitoring drop-ins: {len(dropins)} ({', '.join(sorted(dropins)) or 'none needed'})")
    return changed


def remove_dropin(p: Path) -> None:
    p.unlink()
    try:
        p.parent.rmdir()         # only when empty: an operator's own overrides stay
    except OSError:
        pass


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
        raise InstallError(f"{lay.disk(lay.prefix)} has no toolkit: "
                           "run ./install.sh --systemd first (or pass --prefix)")
    resolve_data_dirs(lay)
    before = read_crontab(lay)
    after = replace_block(before, crontab_block(lay))
    if after == before:
        say(f"crontab of {lay.user}: unchanged")
    else:
        write_crontab(lay, after)
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
    dropins = installed_dropins(lay.unit_dir)
    for p in dropins:
        remove_dropin(p)
    if dropins:
        say(f"removed {len(dropins)} monitoring drop-ins")
    overrides = sorted(lay.unit_dir.glob("cqt*.d")) if lay.unit_dir.is_dir() else []
    if overrides:
        say("left your overrides (systemctl edit): " + " ".join(str(o) for o in overrides))
    # The crontab block, if any.
    try:
        before = read_crontab(lay)
    except InstallError:
        before = ""
    if CRON_BEGIN in before:
        write_crontab(lay, replace_block(before, None))
        say(f"removed the cqt block from the crontab of {lay.user}")
    say(f"kept: the data, the toolkit in {lay.disk(lay.prefix)} and the user {lay.user} "
        f"(remove them by hand if you want: rm -r {lay.disk(lay.prefix)}; userdel {lay.user})")


# ------------------------------------------------------------------------------ cli
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--systemd", "want_systemd", is_flag=True, help="Install the systemd units with real paths.")
@click.option("--cron", "want_cron", is_flag=True, help="Install cron/cqt.crontab for the service user.")
@click.option("--uninstall", "want_uninstall", is_flag=True, help="Remove units and crontab (never the data).")
@click.option("--prefix", default=None,
              help=f"Where the toolkit lives (default {DEFAULT_PREFIX}; the checkout: in place).")
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
