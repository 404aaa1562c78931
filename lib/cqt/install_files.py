"""Copying the toolkit to the prefix, and writing installed files only when they change."""
from __future__ import annotations

import filecmp
import os
import shutil
import stat
from pathlib import Path

from .outputs import write_atomic

# Never copied to the prefix (top level), and never deleted from it.
TOP_EXCLUDE = {".git", ".venv", "data", "reports", ".env", "tmp", ".pytest_cache", ".mypy_cache",
               ".ruff_cache", ".idea", ".vscode"}
ANY_EXCLUDE = {"__pycache__", ".pytest_cache"}
EXCLUDE_SUFFIXES = (".pyc", ".pyo", ".swp")


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

    Each file is written to a temporary name and renamed into place (`write_atomic`), so a
    running service never imports a half-written module. Data, reports, .env and .venv are never touched.
    """
    files = source_files(src)
    dst.mkdir(parents=True, exist_ok=True)
    copied = 0
    for rel in files:
        s, d = src / rel, dst / rel
        if _same(s, d):
            continue
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)
        if s.is_symlink():
            copy_symlink(s, d)
        else:
            # copy2 keeps the source's mode and times (what `_same` compares), not the old file's.
            write_atomic(d, write=lambda tmp, s=s: shutil.copy2(s, tmp), keep_mode=False)
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


def copy_symlink(s: Path, d: Path) -> None:
    """d becomes a symlink with s's target, by rename. Not write_atomic: that writes (and fsyncs)
    a file's bytes, and a link is not opened -- its target may not even exist in the prefix."""
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.with_name(f".{d.name}.cqt-install-tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    os.symlink(os.readlink(s), tmp)
    os.replace(tmp, d)


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Atomically write text unless the file already holds it. True if written."""
    try:
        if path.read_text(encoding="utf-8") == text and stat.S_IMODE(path.stat().st_mode) == mode:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, mode)           # before the rename: the file never shows another mode

    write_atomic(path, write=write, keep_mode=False)
    return True
