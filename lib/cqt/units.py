"""Numbers shown to people: the one way cqt writes a size in bytes."""
from __future__ import annotations

BYTE_UNITS = ("B", "KiB", "MiB", "GiB")


def fmt_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'; whole bytes below 1 KiB, GiB is the largest unit."""
    for unit in BYTE_UNITS:
        if n < 1024 or unit == BYTE_UNITS[-1]:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
