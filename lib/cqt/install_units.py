"""Rendering the systemd units and the crontab block with the real paths, and finding installed units."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .install_layout import InstallError, Layout

UNIT_SUFFIXES = (".service", ".timer", ".target")
# Written into every rendered unit: uninstall removes only files carrying it.
MARKER = "# Installed by cqt (./install.sh --systemd) from"
CRON_BEGIN = "# BEGIN cqt (installed by ./install.sh --cron; re-run it to update, --uninstall to remove)"
CRON_END = "# END cqt"
PLACEHOLDER_RE = re.compile(r"@[A-Z_]+@")


def render(text: str, values: dict[str, str], origin: str) -> str:
    for key, val in values.items():
        text = text.replace(key, val)
    left = sorted(set(PLACEHOLDER_RE.findall(text)))
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


# The units that send healthchecks pings (the gate, the nightly job, the scheduler that runs both)
# and those that write a Prometheus textfile (the same, and the aggregator).
PING_UNITS = ("cqt-checks.service", "cqt-nightly.service", "cqt-scheduler.service")
TEXTFILE_UNITS = PING_UNITS + ("cqt-aggregate.service",)
DROPIN_NAME = "50-cqt-monitoring.conf"


def monitoring_dropins(lay: Layout) -> dict[str, str]:
    """`<unit>.d/50-cqt-monitoring.conf` -> its text, for the hooks the .env sets: network for the
    units that ping (the default sandbox has none), the textfile directory writable for the units
    that write one. Nothing when no hook is set, so the default units stay as strict as shipped."""
    out: dict[str, str] = {}
    lines: dict[str, list[str]] = {}
    if lay.monitoring.get("CQT_HC_URL_CHECKS") or lay.monitoring.get("CQT_HC_URL_NIGHTLY"):
        for unit in PING_UNITS:
            lines.setdefault(unit, []).extend([
                "# healthchecks pings (CQT_HC_URL_*): this unit needs the network",
                "PrivateNetwork=no", "IPAddressDeny=", "RestrictAddressFamilies=",
                "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"])
    textfile_dir = lay.monitoring.get("CQT_TEXTFILE_DIR")
    if textfile_dir:
        for unit in TEXTFILE_UNITS:
            lines.setdefault(unit, []).extend(["# Prometheus textfiles (CQT_TEXTFILE_DIR)",
                                               f"ReadWritePaths={textfile_dir}"])
    for unit, body in sorted(lines.items()):
        out[f"{unit}.d/{DROPIN_NAME}"] = (f"{MARKER} the monitoring settings of {lay.env_file}\n"
                                          "[Service]\n" + "\n".join(body) + "\n")
    return out


def written_by_us(p: Path) -> bool:
    """A regular file (not a link) whose first line is MARKER: this installer wrote it."""
    if not p.is_file() or p.is_symlink():
        return False
    try:
        with p.open(encoding="utf-8") as f:
            return f.readline().startswith(MARKER)
    except (OSError, UnicodeDecodeError):
        return False


def installed_dropins(unit_dir: Path) -> list[Path]:
    """Monitoring drop-ins this installer wrote; an operator's own are never listed."""
    if not unit_dir.is_dir():
        return []
    return [p for p in sorted(unit_dir.glob(f"cqt*.d/{DROPIN_NAME}")) if written_by_us(p)]


def installed_units(unit_dir: Path) -> list[Path]:
    """Unit files in unit_dir that this installer wrote."""
    if not unit_dir.is_dir():
        return []
    return [p for p in sorted(unit_dir.iterdir())
            if p.name.startswith("cqt") and p.suffix in UNIT_SUFFIXES and written_by_us(p)]


def ensure_exec_paths(lay: Layout, units: dict[str, str]) -> None:
    """Every ExecStart= program must exist on disk (systemd refuses to start the unit otherwise)."""
    for name, text in units.items():
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                exe = Path(line.split("=", 1)[1].split()[0].lstrip("-@:+!"))
                on_disk = lay.disk(exe)
                if not os.access(on_disk, os.X_OK):
                    raise InstallError(f"{name}: {on_disk} is missing or not executable")


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
