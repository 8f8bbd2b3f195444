"""A human-readable account of an analysis: searchable groups, frozen groups and items, depth."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

from ..structure import Binding, DepthSpec, FrozenItem, SpaceStructure

__all__ = ["AnalysisReport", "GroupReport", "build_report"]

_WIDTH = 110


@dataclass(frozen=True)
class GroupReport:
    """One channel group: its width, whether it is searchable (or every reason it is not), its members.

    Members read ``module.role``; ``[2/3]`` marks the 2nd of 3 concatenated segments of that dim and
    ``(x49)`` a group flattened with 49 features per channel.
    """

    id: int
    width: int
    searchable: bool
    reasons: tuple[str, ...]
    members: tuple[str, ...]


@dataclass
class AnalysisReport:
    groups: list[GroupReport] = field(default_factory=list)
    frozen: list[FrozenItem] = field(default_factory=list)
    depth: list[DepthSpec] = field(default_factory=list)
    untraceable: dict[str, str] = field(default_factory=dict)

    @property
    def searchable_groups(self) -> list[GroupReport]:
        return [g for g in self.groups if g.searchable]

    @property
    def frozen_groups(self) -> list[GroupReport]:
        return [g for g in self.groups if not g.searchable]

    def group_of(self, member: str) -> GroupReport:
        """The group holding ``member`` (e.g. ``"layer1.0.conv2.out"``); KeyError when none does."""
        for g in self.groups:
            if any(m == member or m.startswith(member + "[") or m.startswith(member + "(") for m in g.members):
                return g
        raise KeyError(f"no channel group has member {member!r}")

    def summary(self) -> str:
        return (
            f"{len(self.searchable_groups)} searchable channel groups, {len(self.frozen_groups)} frozen, "
            f"{len(self.frozen)} frozen items, {len(self.depth)} elastic-depth Sequentials"
        )

    def format_table(self) -> str:
        """A plain-text table of everything above."""
        lines = [self.summary(), ""]
        lines += _section(
            f"Searchable channel groups ({len(self.searchable_groups)})",
            ("id", "width", "members"),
            [(str(g.id), str(g.width), ", ".join(g.members)) for g in self.searchable_groups],
        )
        lines += _section(
            f"Frozen channel groups ({len(self.frozen_groups)})",
            ("id", "width", "reason / members"),
            [
                (str(g.id), str(g.width), _reasons(g.reasons) + " | members: " + ", ".join(g.members))
                for g in self.frozen_groups
            ],
        )
        lines += _section(
            f"Elastic depth ({len(self.depth)})",
            ("sequential", "skippable children"),
            [(d.module or "(model)", ", ".join(map(str, d.skippable))) for d in self.depth],
        )
        lines += _section(
            f"Frozen items ({len(self.frozen)})",
            ("module", "reason"),
            [(f.module or "(model)", f.reason) for f in self.frozen],
        )
        return "\n".join(lines).rstrip() + "\n"


def _section(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = [title, "-" * len(title)]
    if not rows:
        return [*lines, "  (none)", ""]
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header) - 1)]
    indent = 2 + sum(w + 2 for w in widths)
    last_width = max(30, _WIDTH - indent)

    def fmt(cells: tuple[str, ...]) -> list[str]:
        head = "  " + "".join(c.ljust(w + 2) for c, w in zip(cells, widths))
        wrapped = textwrap.wrap(cells[-1], last_width) or [""]
        return [head + wrapped[0]] + [" " * indent + w for w in wrapped[1:]]

    lines += fmt(header)
    for row in rows:
        lines += fmt(row)
    return [*lines, ""]


def _reasons(reasons: tuple[str, ...], shown: int = 2) -> str:
    text = "; ".join(reasons[:shown])
    return text + (f"; (+{len(reasons) - shown} more)" if len(reasons) > shown else "")


def _member(binding: Binding, index: int) -> str:
    seg = binding.segments[index]
    text = f"{binding.module or '(model)'}.{binding.role}"
    if len(binding.segments) > 1:
        text += f"[{index + 1}/{len(binding.segments)}]"
    if seg.repeat > 1:
        text += f"(x{seg.repeat})"
    return text


def build_report(
    structure: SpaceStructure, reasons: dict[int, list[str]], untraceable: dict[str, str]
) -> AnalysisReport:
    members: dict[int, list[str]] = {g.id: [] for g in structure.groups}
    for b in structure.bindings:
        for i, seg in enumerate(b.segments):
            members[seg.group].append(_member(b, i))
    groups = [
        GroupReport(g.id, g.size, g.searchable, tuple(reasons.get(g.id, ())), tuple(members[g.id]))
        for g in structure.groups
    ]
    return AnalysisReport(groups, list(structure.frozen), list(structure.depth), dict(untraceable))
