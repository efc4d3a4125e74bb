"""Counts in messages for people: "1 layer", "2 layers", "1,024 filters"."""

from __future__ import annotations


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``n`` with thousands separators and the noun in the number it takes.

    ``plural`` defaults to ``singular + "s"``; give it for irregular nouns.
    """
    noun = singular if n == 1 else (plural or f"{singular}s")
    return f"{n:,} {noun}"
