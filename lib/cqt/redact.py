"""Masking secrets in any text before it is logged, stored or cut."""
from __future__ import annotations

import functools
import re
from typing import Iterable

MASK = "***"
FRAGMENT_MIN = 8   # a piece of a secret at least this long is masked too (text cut upstream)


@functools.lru_cache(maxsize=64)
def _fragment_pattern(secrets: tuple[str, ...]) -> tuple[tuple[str, ...], re.Pattern | None]:
    """The secrets long enough for piece masking, and a regex for any FRAGMENT_MIN-long piece."""
    long_ones = tuple(s for s in secrets if len(s) >= FRAGMENT_MIN)
    if not long_ones:
        return long_ones, None
    grams = {s[i:i + FRAGMENT_MIN] for s in long_ones for i in range(len(s) - FRAGMENT_MIN + 1)}
    return long_ones, re.compile("|".join(re.escape(g) for g in sorted(grams)))


def _mask_all(text: str, secrets: tuple[str, ...]) -> str:
    """Mask every secret and every piece of one that is >= FRAGMENT_MIN characters long.

    Pieces matter when the text was cut before it reached us (a frame, a traceback, a
    message shortened by a library): the tail of a key cut in half is still most of the key.
    Secrets shorter than FRAGMENT_MIN are masked only whole."""
    long_ones, pattern = _fragment_pattern(secrets)
    if pattern is not None:
        out: list[str] = []
        pos = 0
        while True:
            m = pattern.search(text, pos)
            if m is None:
                break
            start, end = m.start(), m.end()
            # Grow the piece while it is still part of some secret, so one key is one mask.
            while end < len(text) and any(text[start:end + 1] in s for s in long_ones):
                end += 1
            out.append(text[pos:start])
            out.append(MASK)
            pos = end
        out.append(text[pos:])
        text = "".join(out)
    for s in sorted((s for s in secrets if len(s) < FRAGMENT_MIN), key=len, reverse=True):
        text = text.replace(s, MASK)
    return text


def redact(text: str, secrets: Iterable[str], limit: int | None = None) -> str:
    """`text` with every secret masked, then cut to `limit` characters: in that order, so a
    key that straddles the cut is never stored in part. Use this wherever text is shortened."""
    secrets = tuple(dict.fromkeys(s for s in secrets if s))
    if not secrets:
        return text if limit is None else text[:limit]
    if limit is None or len(text) <= limit:
        out = _mask_all(text, secrets)
        return out if limit is None else out[:limit]
    # A long text (a hostile frame can be megabytes): mask a growing head only. Masking is
    # local to one secret's length, so the head's first `limit` characters come out the same
    # as the whole text's once the masked head reaches `limit + longest` characters.
    longest = max(len(s) for s in secrets)
    window = limit + longest
    while True:
        head = text[:window]
        out = _mask_all(head, secrets)
        if len(head) == len(text) or len(out) >= limit + longest:
            return out[:limit]
        window *= 2
