"""Formatting helpers shared by the ``modeopt`` commands: sizes, compact ``key=value`` summaries, wrapping."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

__all__ = ["flatten", "format_bytes", "format_pairs", "print_json", "summarise", "wrap_pairs"]

_LIST_HEAD = 3  # items shown at each end of a long list


def format_bytes(num: int | float) -> str:
    """``1536`` -> ``"1.5 KiB"``; exact bytes below 1 KiB."""
    value = float(num)
    if value < 1024:
        return f"{int(value)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        items = [_value(v) for v in value]
        if len(items) > 2 * _LIST_HEAD + 1:
            items = [*items[:_LIST_HEAD], "…", *items[-_LIST_HEAD:]]
            return f"[{', '.join(items)}] ({len(value)} items)"
        return f"[{', '.join(items)}]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):  # only reached for empty mappings (flatten descends into the others)
        return "{}"
    return str(value)


def flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts -> ``[("a.b.c", leaf), ...]`` in insertion order (lists and scalars are leaves)."""
    if isinstance(tree, Mapping) and tree:
        out: list[tuple[str, Any]] = []
        for key, value in tree.items():
            out.extend(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return [(prefix or "<value>", tree)]


def format_pairs(pairs: Iterable[tuple[str, Any]]) -> list[str]:
    """``[("a", 1)] -> ["a=1"]`` with long lists shortened."""
    return [f"{key}={_value(value)}" for key, value in pairs]


def summarise(tree: Any, *, limit: int = 6) -> list[str]:
    """At most ``limit`` ``key=value`` items summarising a config; empty settings are left out."""
    pairs = [(k, v) for k, v in flatten(tree) if v not in ([], {}, ())]
    if not pairs:
        return ["(defaults)" if tree == {} else "(all empty)"]
    items = format_pairs(pairs[:limit])
    if len(pairs) > limit:
        items.append(f"… (+{len(pairs) - limit} more; --json shows all)")
    return items


def wrap_pairs(items: list[str], indent: str, label: str = "") -> str:
    """Lay ``items`` out greedily to the terminal width, never splitting one; continuation lines align."""
    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    lead = indent + label
    lines: list[str] = []
    current, empty = lead, True
    for item in items:
        if not empty and len(current) + 2 + len(item) > width:
            lines.append(current)
            current, empty = " " * len(lead), True
        current += item if empty else "  " + item
        empty = False
    lines.append(current)
    return "\n".join(line.rstrip() for line in lines)


def print_json(data: Any, stream: TextIO) -> None:
    """Pretty, stable JSON (sorted keys would reorder mode chains, so insertion order is kept)."""
    stream.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
