"""`python -m cqt <program> [args…]`: what every bin script runs."""
import os
import sys

from cqt.cli import run_program

if len(sys.argv) < 2:
    print("usage: python -m cqt <program> [args...]", file=sys.stderr)
    sys.exit(2)
name = os.path.basename(sys.argv.pop(1))
sys.argv[0] = name
run_program(name)
