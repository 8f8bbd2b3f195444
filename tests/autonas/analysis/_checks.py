"""Structural invariants every analysis result must satisfy, independent of the model."""

from __future__ import annotations

from torch import nn

from modeopt_autonas.space.analysis import AnalysisResult
from modeopt_autonas.space.structure import ROLES, SpaceStructure, is_role

_WIDTH_ATTRS = {
    "out": ("out_channels", "out_features"),
    "in": ("in_channels", "in_features", "embed_dim"),
    "features": ("num_features", "num_channels", "normalized_shape"),
}


def module_width(module: nn.Module, role: str) -> int:
    for attr in _WIDTH_ATTRS[role]:
        value = getattr(module, attr, None)
        if value is not None:
            return int(value[-1]) if isinstance(value, (tuple, list)) else int(value)
    raise AssertionError(f"{type(module).__name__} has no width for role {role}")


def assert_consistent(model: nn.Module, result: AnalysisResult) -> None:
    """Bindings match module widths, ids are compact, JSON round-trips, the report agrees."""
    structure = result.structure
    modules = dict(model.named_modules())
    sizes = {g.id: g.size for g in structure.groups}
    assert [g.id for g in structure.groups] == list(range(len(structure.groups)))
    seen = set()
    for b in structure.bindings:
        assert is_role(b.role) and b.module in modules, b
        assert (b.module, b.role) not in seen, f"duplicate binding {b}"
        seen.add((b.module, b.role))
        width = sum(sizes[s.group] * s.repeat for s in b.segments)
        module = modules[b.module]
        for name, dim in b.tensors:
            tensor = module._parameters.get(name, module._buffers.get(name))
            assert tensor is not None and tensor.shape[dim] == width, f"{b}: tensor {name} does not fit"
        if b.role in ROLES:
            assert width == module_width(module, b.role), f"{b} does not add up to the module width"
    for g in structure.groups:
        assert g.searchable == (g.reason == ""), g
    assert SpaceStructure.from_json(structure.to_json()) == structure
    report = result.report
    assert [g.id for g in report.groups] == [g.id for g in structure.groups]
    assert len(report.searchable_groups) == sum(g.searchable for g in structure.groups)
    assert report.format_table()
