#!/usr/bin/env bash
# cqt installer. Idempotent: safe to run again at any time.
#
#   ./install.sh                      create .venv, install requirements, make data/ reports/ .env
#   sudo ./install.sh --systemd       also install the systemd units (see --help)
#   sudo ./install.sh --cron          also install the crontab for the service user
#   sudo ./install.sh --uninstall     remove units and crontab (never the data)
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
MIN_PY_MINOR=11

usage() {
    cat <<'EOF'
Usage: ./install.sh [options]

Without options: find Python >= 3.11, create .venv, install the pinned
requirements.txt, create data/ and reports/, and create .env from .env.example
(mode 0600) if it does not exist. An existing .env is never overwritten.

Options:
  --systemd          install the systemd units (cqt-*.service, cqt.target) with real paths
  --cron             install cron/cqt.crontab for the service user
  --uninstall        remove the installed units and crontab (never the data)
  --prefix DIR       where the toolkit lives for systemd (default: /opt/cqt; the checkout
                     itself when DIR is this directory)
  --user NAME        the service user and group (default: cqt; created if missing)
  --root DIR         install under DIR (e.g. a test root): nothing outside DIR is changed,
                     no user is created and systemctl is not called
  --python PATH      the Python interpreter to use (default: python3.11, then python3)
  --no-deps          skip `pip install` (the .venv must already have the requirements)
  -h, --help         show this help and exit
EOF
}

want_systemd=0; want_cron=0; want_uninstall=0; no_deps=0
prefix=""; user=""; root=""; python_bin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --systemd) want_systemd=1 ;;
        --cron) want_cron=1 ;;
        --uninstall) want_uninstall=1 ;;
        --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
        --prefix=*) prefix=${1#*=} ;;
        --user) user=${2:?--user needs a name}; shift ;;
        --user=*) user=${1#*=} ;;
        --root) root=${2:?--root needs a directory}; shift ;;
        --root=*) root=${1#*=} ;;
        --python) python_bin=${2:?--python needs a path}; shift ;;
        --python=*) python_bin=${1#*=} ;;
        --no-deps) no_deps=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf 'install: %s\n' "$*"; }

find_python() {
    local c
    for c in ${python_bin:+"$python_bin"} python3.11 python3.12 python3.13 python3.14 python3; do
        if command -v "$c" >/dev/null 2>&1 &&
           "$c" -c "import sys; sys.exit(0 if sys.version_info >= (3, $MIN_PY_MINOR) else 1)" 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    return 1
}

PY=$(find_python) || {
    echo "install: error: Python >= 3.$MIN_PY_MINOR not found (tried ${python_bin:-python3.11..python3}). Install it (Debian: apt-get install python3 python3-venv) or pass --python PATH." >&2
    exit 1
}

# -- the virtualenv ---------------------------------------------------------------------
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    say "creating .venv with $PY ($("$PY" --version 2>&1))"
    "$PY" -m venv "$ROOT/.venv" || {
        echo "install: error: could not create .venv (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
if [ "$no_deps" -eq 0 ]; then
    say "installing pinned requirements into .venv"
    "$ROOT/.venv/bin/python" -m pip install --disable-pip-version-check -q -r "$ROOT/requirements.txt"
fi

# -- run-time directories and .env --------------------------------------------------------
mkdir -p "$ROOT/data" "$ROOT/data/datasets" "$ROOT/reports"
if [ ! -e "$ROOT/.env" ]; then
    (umask 077; cp "$ROOT/.env.example" "$ROOT/.env")
    chmod 600 "$ROOT/.env"
    say "created .env from .env.example (mode 0600): set COINGLASS_API_KEY, then run bin/cqt env check"
else
    say ".env exists: left untouched"
fi

# -- optional: systemd units, crontab -----------------------------------------------------
if [ "$want_systemd" -eq 1 ] || [ "$want_cron" -eq 1 ] || [ "$want_uninstall" -eq 1 ]; then
    args=()
    [ "$want_systemd" -eq 1 ] && args+=(--systemd)
    [ "$want_cron" -eq 1 ] && args+=(--cron)
    [ "$want_uninstall" -eq 1 ] && args+=(--uninstall)
    [ -n "$prefix" ] && args+=(--prefix "$prefix")
    [ -n "$user" ] && args+=(--user "$user")
    [ -n "$root" ] && args+=(--root "$root")
    # the prefix's own venv is set up like this one (cqt.install runs the prefix's install.sh)
    [ "$no_deps" -eq 1 ] && args+=(--no-deps)
    [ -n "$python_bin" ] && args+=(--python "$python_bin")
    PYTHONPATH="$ROOT/lib" exec "$ROOT/.venv/bin/python" -m cqt.install "${args[@]}"
fi

say "done. Next: .venv/bin/pytest -q   (tests)   |   bin/cqt demo   (the whole pipeline against cqt-sim)"
