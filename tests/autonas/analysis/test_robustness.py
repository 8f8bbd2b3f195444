"""Untraceable code, opaque modules, user globs, bad input, and leaving the model untouched."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modeopt_autonas.space.analysis import AnalysisInputError, analyze
from modeopt_autonas.space.errors import SearchSpaceError
from modeopt_autonas.space.layers import LayerRegistry, LayerSpec, LayerType

from . import _models as M
from ._checks import assert_consistent
from ._slice_by_structure import check_slicing


class DataDependent(nn.Module):
    """Control flow on a tensor value: fx cannot trace this module's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Conv2d(8, 8, 3, padding=1)
        self.inner = nn.Sequential(nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = self.gate(x)
        return self.inner(x)


class WithUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.dyn = DataDependent()
        self.head = nn.Conv2d(8, 4, 1)
        self.tail = nn.Sequential(nn.Conv2d(4, 5, 1), nn.ReLU(), nn.Conv2d(5, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.head(self.dyn(self.stem(x))))


class UntraceableRoot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        self.b = nn.Sequential(nn.Conv2d(8, 5, 1), nn.ReLU(), nn.Conv2d(5, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(len(x)):  # len() of a proxy fails
            pass
        return self.b(self.a(x))


class Functional(nn.Module):
    """A conv used normally and a linear whose weight is used through F.linear; plus a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 4)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(x).flatten(2).transpose(1, 2)
        t = t + self.att(t, t, t)[0]
        return F.linear(t, self.fc.weight) * torch.tensor(2.0)


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        name: (
            type(m),
            sorted(m.__dict__),
            dict(m._parameters),
            dict(m._buffers),
            dict(m._modules),
            m.training,
        )
        for name, m in model.named_modules()
    }


def test_untraceable_submodule_is_opaque_and_its_children_are_analysed_separately():
    model = WithUntraceable()
    result = analyze(model)
    assert_consistent(model, result)
    report = result.report
    assert list(report.untraceable) == ["dyn"]
    assert "TraceError" in report.untraceable["dyn"]
    assert report.group_of("stem.out").reasons[0].startswith("flows into untraceable module dyn: TraceError")
    assert report.group_of("head.in").reasons[0].startswith("fed by output of untraceable module dyn")
    assert report.group_of("dyn.inner.0.out").searchable  # traced on its own
    assert not report.group_of("dyn.inner.0.in").searchable
    assert report.group_of("tail.0.out").searchable
    frozen = {f.module: f.reason for f in result.structure.frozen}
    assert frozen["dyn.gate"] == "not searchable: inside untraceable module dyn"
    assert frozen["dyn"].startswith("untraceable module dyn: TraceError")
    check_slicing(model, result.structure, torch.randn(1, 3, 8, 8))


def test_untraceable_root_degrades_to_per_child_analysis():
    model = UntraceableRoot()
    result = analyze(model)
    assert_consistent(model, result)
    assert "" in result.report.untraceable
    assert result.report.group_of("b.0.out").searchable
    assert "its parent is untraceable" in result.report.group_of("b.0.in").reasons[0]
    assert "untraceable parent" in result.report.group_of("a.0.out").reasons[0]


def test_functional_weights_attention_and_constants_are_frozen_without_touching_the_model():
    model = Functional()
    before = _snapshot(model)
    result = analyze(model)
    assert _snapshot(model) == before  # fx would normally store the constant on the model
    assert not hasattr(model, "_tensor_constant0")
    assert_consistent(model, result)
    frozen = {f.module: f.reason for f in result.structure.frozen}
    assert "weight is used directly" in frozen["fc"]
    # the attention's stream meets the functional linear (frozen); its heads stay searchable
    assert any("functional.linear" in r for r in result.report.group_of("att.in").reasons)
    assert result.report.group_of("att.qkv").searchable and result.report.group_of("att.out_proj.in").searchable


def test_zoo_model_is_left_unchanged():
    from ._zoo import build

    model = build("efficientnet_b0")
    before = _snapshot(model)
    analyze(model, leaf_modules=["features.2*"], frozen_modules=["classifier"])
    assert _snapshot(model) == before


def test_leaf_glob_makes_a_module_opaque():
    model = M.ResNetLike()
    result = analyze(model, leaf_modules=["stage2.1"])
    report = result.report
    assert "user leaf module stage2.1" in report.group_of("stage2.0.short.out").reasons[0]
    assert not report.group_of("fc.in").searchable
    frozen = {f.module: f.reason for f in result.structure.frozen}
    assert "inside user leaf module stage2.1" in frozen["stage2.1.conv1"]
    assert report.group_of("stem.0.out").searchable
    depth = {d.module: d.skippable for d in result.structure.depth}
    assert depth == {"stage1": (0, 1), "stage2": (2,)}  # the leaf child 1 cannot be skipped
    check_slicing(model, result.structure, torch.randn(1, 3, 8, 8))


def test_frozen_glob_keeps_widths_and_covers_containers():
    model = M.ResNetLike()
    result = analyze(model, frozen_modules=["stage1.1", "fc"])
    report = result.report
    stream = report.group_of("stem.0.out")
    assert not stream.searchable and "frozen by user glob 'stage1.1'" in stream.reasons
    assert "frozen by user glob 'stage1.1'" in report.group_of("stage1.1.conv1.out").reasons
    assert "frozen by user glob 'fc'" in report.group_of("fc.in").reasons
    assert report.group_of("stage1.0.conv1.out").searchable
    assert len(report.searchable_groups) == 3


def test_unmatched_glob_is_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="modeopt_autonas.space.analysis"):
        analyze(M.FlattenNet(), frozen_modules=["no_such_module*"])
    assert "matches no module" in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [{"leaf_modules": "fc"}, {"frozen_modules": ["fc", 3]}],
)
def test_bad_globs_raise_a_typed_error(kwargs):
    with pytest.raises(AnalysisInputError, match="list of fnmatch globs"):
        analyze(M.FlattenNet(), **kwargs)


def test_non_module_raises_a_typed_error():
    with pytest.raises(AnalysisInputError, match="needs a torch.nn.Module") as info:
        analyze(lambda x: x)  # type: ignore[arg-type]
    assert isinstance(info.value, SearchSpaceError) and isinstance(info.value, TypeError)


def test_custom_registry_decides_what_is_a_layer():
    layers = LayerRegistry()
    layers.register(LayerType(nn.Conv2d, lambda m: LayerSpec("producer", 1, 1)))
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 2, 1))
    result = analyze(model, layers=layers)
    assert not result.report.group_of("0.out").searchable  # BatchNorm2d is not a layer here: opaque
    assert "opaque module 1 (BatchNorm2d)" in result.report.group_of("0.out").reasons[0]
    assert result.report.group_of("2.out").searchable
    assert not result.structure.bindings_of("1")


def test_frozen_reason_of_a_spec_freezes_its_groups():
    layers = LayerRegistry()
    layers.register(LayerType(nn.Conv2d, lambda m: LayerSpec("producer", 1, 1, frozen_reason="pinned for the test")))
    result = analyze(nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)), layers=layers)
    assert all(not g.searchable for g in result.structure.groups)
    assert "0: pinned for the test" in result.report.group_of("0.out").reasons


def test_model_that_is_a_single_layer():
    result = analyze(nn.Conv2d(3, 4, 1))
    assert [(b.module, b.role) for b in result.structure.bindings] == [("", "in"), ("", "out")]
    assert not result.report.searchable_groups


def test_tuple_and_dict_outputs_are_frozen():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 8, 1)
            self.a = nn.Conv2d(8, 2, 1)
            self.b = nn.Conv2d(8, 3, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            y = self.body(x)
            return {"a": self.a(y), "rest": (self.b(y), y)}

    result = analyze(TwoHeads())
    assert result.report.group_of("a.out").reasons == ("model output",)
    assert result.report.group_of("b.out").reasons == ("model output",)
    assert result.report.group_of("body.out").reasons == ("model output",)


def test_forward_flags_with_defaults_are_traced_as_constants():
    class Flagged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor, extra: bool = False, scale: float | None = None) -> torch.Tensor:
            y = self.a(x)
            if extra:
                y = torch.flip(y, [1])
            if scale is not None:
                y = y * scale
            return self.b(y)

    result = analyze(Flagged())
    assert result.report.group_of("a.out").searchable and not result.report.untraceable


def test_an_internal_error_on_one_node_freezes_around_it_instead_of_raising(monkeypatch, caplog):
    from modeopt_autonas.space.analysis import dispatch

    real = dispatch.call_method

    def flaky(p, node):
        if node.target == "contiguous":
            raise RuntimeError("simulated bug")
        return real(p, node)

    class UsesContiguous(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 6, 1)
            self.b = nn.Conv2d(6, 4, 1)
            self.c = nn.Conv2d(4, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.b(self.a(x).contiguous()))

    monkeypatch.setattr(dispatch, "call_method", flaky)
    with caplog.at_level(logging.WARNING, logger="modeopt_autonas.space.analysis"):
        result = analyze(UsesContiguous())
    assert "simulated bug" in caplog.text
    assert result.report.group_of("a.out").reasons[0].startswith("analysis error in Tensor.contiguous")
    assert result.report.group_of("b.out").searchable
