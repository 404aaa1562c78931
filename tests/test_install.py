"""install.sh: idempotent set-up, and --systemd / --cron / --uninstall staged with --root.

Every test works on a copy of the checkout in tmp_path whose .venv is a symlink to the real
one, with --no-deps: fast, offline, and the checkout itself is never touched.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from cqt import install_units
from helpers import ROOT

pytestmark = pytest.mark.timeout(60)

UNITS = sorted(p.name for p in install_units.unit_templates(ROOT))
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "data", "reports", ".env", "__pycache__", ".pytest_cache", "tmp")


@pytest.fixture
def checkout(tmp_path) -> Path:
    co = tmp_path / "checkout"
    shutil.copytree(ROOT, co, ignore=COPY_IGNORE, symlinks=True)
    (co / ".venv").symlink_to(ROOT / ".venv")
    return co


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not (k.startswith("CQT_") or k.startswith("COINGLASS_") or k == "PYTHONPATH")}


def run_install(co: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([str(co / "install.sh"), "--no-deps", *args], capture_output=True, text=True,
                       timeout=60, env=clean_env(), cwd=str(cwd or co))
    return p


def staged_prefix(root: Path, prefix: str = "/opt/cqt") -> Path:
    """Pre-seed the prefix's .venv (a symlink) so the prefix's install.sh needs no venv/pip."""
    disk = root / prefix.lstrip("/")
    disk.mkdir(parents=True)
    (disk / ".venv").symlink_to(ROOT / ".venv")
    return disk


def host_state() -> tuple:
    """What a staged install must not change on the host."""
    unit_dir = Path("/etc/systemd/system")
    units = sorted(p.name for p in unit_dir.glob("cqt*")) if unit_dir.is_dir() else []
    try:
        pwd.getpwnam("cqt")
        user = True
    except KeyError:
        user = False
    spool = Path("/var/spool/cron/crontabs")
    crontabs = sorted(p.name for p in spool.iterdir()) if spool.is_dir() else []
    return units, user, crontabs, Path("/opt/cqt").exists()


def test_install_twice_keeps_an_edited_env(checkout):
    first = run_install(checkout)
    assert first.returncode == 0, first.stderr
    env = checkout / ".env"
    assert env.exists() and (env.stat().st_mode & 0o777) == 0o600
    assert (checkout / "data" / "datasets").is_dir() and (checkout / "reports").is_dir()
    env.write_text(env.read_text() + "COINGLASS_API_KEY=operator-edited-value\n")
    before = env.read_bytes()
    second = run_install(checkout)
    assert second.returncode == 0, second.stderr
    assert ".env exists: left untouched" in second.stdout
    assert env.read_bytes() == before


def test_systemd_staged_under_root_renders_units_and_touches_nothing_else(checkout, tmp_path):
    root = tmp_path / "root"
    prefix = staged_prefix(root)
    host = host_state()
    p = run_install(checkout, "--systemd", "--root", str(root), "--user", "cqt")
    assert p.returncode == 0, p.stdout + p.stderr
    assert host_state() == host
    unit_dir = root / "etc/systemd/system"
    assert sorted(x.name for x in unit_dir.iterdir()) == UNITS
    upbit = (unit_dir / "cqt-collect-upbit.service").read_text()
    # Paths as the installed system sees them; the files themselves are under ROOT.
    assert "ExecStart=/opt/cqt/bin/cqt-collect-upbit\n" in upbit
    assert "EnvironmentFile=/opt/cqt/.env\n" in upbit
    assert "ReadWritePaths=/opt/cqt/data /opt/cqt/data/datasets /opt/cqt/reports\n" in upbit
    assert "User=cqt\n" in upbit and "Group=cqt\n" in upbit
    assert "@" not in "".join(ln for ln in upbit.splitlines() if ln.startswith(("Exec", "User", "Env", "Read")))
    # The toolkit was copied (code, not data), its venv/data/.env set up by its own install.sh.
    for rel in ("bin/cqt-collect-upbit", "lib/cqt/install.py", "checks/run_pipeline_checks.sh",
                "systemd/cqt.target", "install.sh", ".env", "data/datasets", "reports"):
        assert (prefix / rel).exists(), rel
    assert not (prefix / ".git").exists()
    assert os.access(prefix / "bin" / "cqt-aggregate", os.X_OK)
    assert list((prefix / "lib" / "cqt").glob("__pycache__/install.*.pyc")), "lib/ was not precompiled"
    assert "Next steps" in p.stdout and "systemctl enable --now cqt.target" in p.stdout


def test_systemd_rerun_is_safe_and_upgrades(checkout, tmp_path):
    root = tmp_path / "root"
    prefix = staged_prefix(root)
    assert run_install(checkout, "--systemd", "--root", str(root)).returncode == 0
    env = prefix / ".env"
    env.write_text(env.read_text() + "CQT_LOG_LEVEL=DEBUG\n")
    env_before = env.read_bytes()
    (prefix / "notes.txt").write_text("operator's file")
    (prefix / "data" / "cqt.db").write_bytes(b"pretend data")
    (prefix / "lib" / "cqt" / "obsolete_module.py").write_text("# from an older version\n")
    stale_unit = root / "etc/systemd/system/cqt-old.service"
    stale_unit.write_text(f"{install_units.MARKER} /opt/cqt/systemd/cqt-old.service\n[Service]\n")
    foreign_unit = root / "etc/systemd/system/cqt-mine.service"
    foreign_unit.write_text("[Service]\nExecStart=/bin/true\n")
    # an upgrade: the checkout changed
    (checkout / "bin" / "cqt-sim").write_text((checkout / "bin" / "cqt-sim").read_text() + "# v2\n")

    p = run_install(checkout, "--systemd", "--root", str(root))
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"{len(UNITS)} unchanged" in p.stdout and "1 obsolete removed" in p.stdout
    assert env.read_bytes() == env_before
    assert (prefix / "notes.txt").exists() and (prefix / "data" / "cqt.db").read_bytes() == b"pretend data"
    assert not (prefix / "lib" / "cqt" / "obsolete_module.py").exists()
    assert (prefix / "bin" / "cqt-sim").read_text().endswith("# v2\n")
    assert not stale_unit.exists() and foreign_unit.exists()


def test_in_place_when_the_prefix_is_the_checkout(checkout, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    p = run_install(checkout, "--systemd", "--root", str(root), "--prefix", str(checkout), "--user", "cqt")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "running in place" in p.stdout
    unit = (root / "etc/systemd/system/cqt-aggregate.service").read_text()
    assert f"ExecStart={checkout}/bin/cqt-aggregate\n" in unit
    assert f"ReadWritePaths={checkout}/data {checkout}/data/datasets {checkout}/reports\n" in unit
    assert not (root / checkout.relative_to("/")).exists()


def test_data_directories_follow_the_env_file(checkout, tmp_path):
    root = tmp_path / "root"
    prefix = staged_prefix(root)
    (prefix / ".env").write_text("CQT_DB=/var/lib/cqt/cqt.db\nCQT_REPORT=/srv/cqt-reports/run.md\n")
    p = run_install(checkout, "--systemd", "--root", str(root))
    assert p.returncode == 0, p.stdout + p.stderr
    unit = (root / "etc/systemd/system/cqt-nightly.service").read_text()
    assert "ReadWritePaths=/var/lib/cqt /opt/cqt/data/datasets /srv/cqt-reports\n" in unit
    assert "MPLCONFIGDIR=/var/lib/cqt/.cache/matplotlib" in unit
    assert (root / "var/lib/cqt").is_dir() and (root / "srv/cqt-reports").is_dir()


@pytest.mark.parametrize("env_text, message", [
    ("CQT_DB=/tmp/cqt.db\n", "would be writable by every unit"),
    ("CQT_DB='data/x.db'\n", "quotes are not allowed"),
])
def test_bad_data_settings_are_refused(checkout, tmp_path, env_text, message):
    root = tmp_path / "root"
    prefix = staged_prefix(root)
    (prefix / ".env").write_text(env_text)
    p = run_install(checkout, "--systemd", "--root", str(root))
    assert p.returncode == 1 and message in p.stderr, p.stdout + p.stderr
    assert not (root / "etc/systemd/system").exists()


def test_usage_errors(checkout, tmp_path):
    p = run_install(checkout, "--uninstall", "--systemd", "--root", str(tmp_path))
    assert p.returncode == 2 and "cannot be combined" in p.stderr
    p = run_install(checkout, "--systemd", "--root", str(tmp_path), "--prefix", "/opt/my cqt")
    assert p.returncode == 1 and "no spaces" in p.stderr
    p = run_install(checkout, "--systemd", "--root", str(tmp_path), "--user", "Bad User")
    assert p.returncode == 1 and "not a valid user name" in p.stderr
    p = run_install(checkout, "--systemd", "--root", str(tmp_path / "missing"))
    assert p.returncode == 1 and "not a directory" in p.stderr


def test_cron_staged_then_uninstall_keeps_data_and_foreign_lines(checkout, tmp_path):
    if not (ROOT / "cron" / "cqt.crontab").exists():
        pytest.fail("cron/cqt.crontab (the checks issue) is missing")
    root = tmp_path / "root"
    prefix = staged_prefix(root, "/srv/cqt-prod")
    host = host_state()
    args = ("--root", str(root), "--user", "cqt", "--prefix", "/srv/cqt-prod")
    assert run_install(checkout, "--systemd", *args).returncode == 0
    spool = root / "var/spool/cron/crontabs/cqt"
    spool.parent.mkdir(parents=True)
    spool.write_text("MAILTO=ops@example.org\n5 4 * * * /usr/local/bin/mine\n")
    for _ in range(2):                              # twice: the block is replaced, not appended
        p = run_install(checkout, "--cron", *args)
        assert p.returncode == 0, p.stdout + p.stderr
    text = spool.read_text()
    assert text.count(install_units.CRON_BEGIN) == 1 and "/usr/local/bin/mine" in text
    block = text[text.index(install_units.CRON_BEGIN):]
    assert "\nCQT_HOME=/srv/cqt-prod\n" in block and "/opt/cqt" not in block.replace("CQT_HOME=/opt/cqt", "")
    assert "pipeline_checks" in block and "nightly" in block
    assert (spool.stat().st_mode & 0o777) == 0o600

    # enablement links as `systemctl enable` would make them
    unit_dir = root / "etc/systemd/system"
    (unit_dir / "cqt.target.wants").mkdir()
    (unit_dir / "cqt.target.wants/cqt-scheduler.service").symlink_to("/etc/systemd/system/cqt-scheduler.service")
    (unit_dir / "multi-user.target.wants").mkdir()
    (unit_dir / "multi-user.target.wants/cqt.target").symlink_to("/etc/systemd/system/cqt.target")
    (unit_dir / "multi-user.target.wants/other.service").symlink_to("/lib/systemd/system/other.service")
    (unit_dir / "other.service").write_text("[Service]\nExecStart=/bin/true\n")
    (prefix / "data" / "cqt.db").write_bytes(b"data")

    p = run_install(checkout, "--uninstall", *args)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(x.name for x in unit_dir.iterdir()) == ["multi-user.target.wants", "other.service"]
    assert [x.name for x in (unit_dir / "multi-user.target.wants").iterdir()] == ["other.service"]
    assert spool.read_text() == "MAILTO=ops@example.org\n5 4 * * * /usr/local/bin/mine\n"
    assert (prefix / "data" / "cqt.db").read_bytes() == b"data" and (prefix / ".env").exists()
    assert host_state() == host
    # uninstalling again is a no-op
    p = run_install(checkout, "--uninstall", *args)
    assert p.returncode == 0 and "removed 0 unit files" in p.stdout


def test_crontab_block_replacement():
    block = f"{install_units.CRON_BEGIN}\n*/10 * * * * x\n{install_units.CRON_END}\n"
    assert install_units.replace_block("", block) == block
    mine = "MAILTO=a@b\n1 2 * * * mine\n"
    once = install_units.replace_block(mine, block)
    assert once == mine + "\n" + block
    assert install_units.replace_block(once, block) == once
    assert install_units.replace_block(once, None).strip() == mine.strip()
    assert install_units.replace_block(block, None) == ""


def test_monitoring_hooks_get_the_drop_ins_they_need_and_lose_them_with_the_settings(checkout, tmp_path):
    """Pings need the network the check, nightly and scheduler units do not have; a textfile
    directory must be writable by every unit that writes one. Without hooks: no drop-in."""
    root = tmp_path / "root"
    prefix = staged_prefix(root)
    units = root / "etc/systemd/system"
    (prefix / ".env").write_text("CQT_HC_URL_CHECKS=https://hc-ping.example/0d1e\nCQT_TEXTFILE_DIR=/var/lib/cqt-metrics\n")
    p = run_install(checkout, "--systemd", "--root", str(root))
    assert p.returncode == 0, p.stdout + p.stderr
    for unit in ("cqt-checks", "cqt-nightly", "cqt-scheduler"):
        text = (units / f"{unit}.service.d/50-cqt-monitoring.conf").read_text()
        assert "PrivateNetwork=no\n" in text and "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n" in text
        assert "ReadWritePaths=/var/lib/cqt-metrics\n" in text
    agg = (units / "cqt-aggregate.service.d/50-cqt-monitoring.conf").read_text()
    assert "ReadWritePaths=/var/lib/cqt-metrics\n" in agg and "PrivateNetwork" not in agg
    assert not (units / "cqt-collect-binance.service.d").exists()
    assert (root / "var/lib/cqt-metrics").is_dir()
    assert "0d1e" not in agg + p.stdout          # the ping URL is a secret: never copied anywhere
    # an operator's own override beside ours stays; hooks removed -> our drop-ins go
    own = units / "cqt-checks.service.d/override.conf"
    own.write_text("[Service]\nNice=5\n")
    (prefix / ".env").write_text("")
    p = run_install(checkout, "--systemd", "--root", str(root))
    assert p.returncode == 0, p.stdout + p.stderr
    assert not list(units.glob("cqt*.d/50-cqt-monitoring.conf")) and own.exists()
    assert not (units / "cqt-aggregate.service.d").exists()
    # uninstall removes ours only
    (prefix / ".env").write_text("CQT_HC_URL_NIGHTLY=https://hc-ping.example/77\n")
    assert run_install(checkout, "--systemd", "--root", str(root)).returncode == 0
    assert (units / "cqt-nightly.service.d/50-cqt-monitoring.conf").exists()
    p = run_install(checkout, "--uninstall", "--root", str(root))
    assert p.returncode == 0, p.stdout + p.stderr
    assert not list(units.glob("cqt*.d/50-cqt-monitoring.conf")) and own.exists()
