"""Markdown helpers of the report: numbers, verdicts, tables."""

from __future__ import annotations


def num(value: float | None, digits: int = 0) -> str:
    """``value`` with thousands separators, ``-`` when unknown."""
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text  # no "-0.0"


def verdict(ok: bool | None) -> str:
    """A target's result: met, missed (a missed target is reported, never fatal), or
    ``-`` when it was not measured."""
    return "-" if ok is None else ("met" if ok else "**missed**")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
