"""What the installer does to the system: the service user, directory owners, the prefix's own
set-up, precompiling, systemctl and crontab calls."""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import click

from .install_files import copy_toolkit, write_if_changed
from .install_layout import CRON_SPOOL, InstallError, Layout, say


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
        raise InstallError("useradd not found: create the service user yourself, "
                           "or pass --user NAME of an existing one")
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


def read_crontab(lay: Layout) -> str:
    if lay.root is not None:
        p = lay.root / CRON_SPOOL / lay.user
        return p.read_text(encoding="utf-8") if p.exists() else ""
    if shutil.which("crontab") is None:
        raise InstallError("crontab not found: install cron (Debian: apt-get install cron), or use "
                           "cqt-scheduler.service or the timers instead")
    p = subprocess.run(["crontab", "-u", lay.user, "-l"], capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else ""     # 1 = no crontab yet


def write_crontab(lay: Layout, text: str) -> None:
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
