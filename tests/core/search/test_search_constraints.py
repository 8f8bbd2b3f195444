from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modeopt_core.constraints import (
    CONSTRAINT_NAMES,
    ConstraintResult,
    Constraints,
    ForwardProfiler,
    ModelProfiler,
    run_with_dummy_input,
    unpack_dummy_input,
)
from modeopt_core.errors import ConstraintError, ModeoptError
from tests.core.search.search_toys import BATCH, IN_FEATURES, expected_flops, expected_params, make_net

# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1000, 1000),
        (2.5e6, 2.5e6),
        ("60%", "60%"),
        ("60 %", "60%"),
        (" 12.5% ", "12.5%"),
        ("150%", "150%"),
        ("1e1%", "10%"),
    ],
)
def test_parse_accepts_numbers_and_percentages(raw: object, expected: object) -> None:
    parsed = Constraints.parse({"flops": raw})
    assert parsed.to_dict() == {"flops": expected}
    assert Constraints.parse(parsed.to_dict()) == parsed  # the normalised spec parses back


def test_parse_both_keys_in_canonical_order_and_empty() -> None:
    both = Constraints.parse({"params": "50%", "flops": 10})
    assert both.names == ["flops", "params"] and both
    assert not Constraints.parse({}) and not Constraints.parse(None)
    assert Constraints.parse(both) is both


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("abc", "not understood"),
        ("60", "not understood"),
        ("%", "not understood"),
        ("60%%", "not understood"),
        ("-5%", "above 0%"),
        ("0%", "above 0%"),
        ("0 %", "above 0%"),
        (0, "above 0"),
        (-3, "above 0"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (True, "type bool"),
        ([1], "type list"),
        (None, "type NoneType"),
    ],
)
def test_parse_rejects_bad_limits(raw: object, fragment: str) -> None:
    with pytest.raises(ConstraintError, match=fragment) as info:
        Constraints.parse({"flops": raw})
    assert "60%" in str(info.value)  # the message shows the accepted forms
    assert isinstance(info.value, ModeoptError) and isinstance(info.value, ValueError)


def test_unknown_keys_and_non_mapping_list_accepted_keys() -> None:
    with pytest.raises(ConstraintError, match=r"unknown constraint\(s\) \['energy'\].*\['flops', 'params', 'latency'\]"):
        Constraints.parse({"energy": 3, "flops": 5})
    with pytest.raises(ConstraintError, match=r"must be a dict.*\['flops', 'params', 'latency'\]"):
        Constraints.parse([("flops", 3)])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- checking


class FixedProfiler:
    """A profiler reporting fixed numbers (the protocol without ``measure``)."""

    def __init__(self, flops: float, params: float) -> None:
        self.values = {"flops": flops, "params": params}
        self.calls: list[str] = []

    def flops(self) -> float:
        self.calls.append("flops")
        return self.values["flops"]

    def params(self) -> float:
        self.calls.append("params")
        return self.values["params"]


def test_resolve_limits_and_check() -> None:
    original = FixedProfiler(flops=1000, params=400)
    assert isinstance(original, ModelProfiler)
    cons = Constraints.parse({"flops": "60%", "params": 300})
    assert not cons.is_resolved
    with pytest.raises(ConstraintError, match="resolve"):
        cons.limits  # noqa: B018
    resolved = cons.resolve(original)
    assert original.calls == ["flops"]  # only percentage limits need the original value
    assert resolved.is_resolved and resolved.reference == {"flops": 1000}
    assert resolved.limits == {"flops": 600.0, "params": 300}
    assert resolved.resolve(original) is resolved

    ok = resolved.check(FixedProfiler(flops=600, params=120))
    assert ok == ConstraintResult(True, {"flops": 600, "params": 120}, resolved.limits, {"flops": 1.0, "params": 0.4})
    assert ok.violated == []
    bad = resolved.check(FixedProfiler(flops=601, params=500))
    assert not bad.satisfied and bad.violated == ["flops", "params"]
    assert bad.to_dict()["ratios"]["params"] == pytest.approx(500 / 300)


def test_absolute_constraints_check_without_resolve_and_empty_always_satisfied() -> None:
    assert Constraints.parse({"params": 10}).check(FixedProfiler(1, 10)).satisfied
    empty = Constraints.parse({}).check(FixedProfiler(1, 1))
    assert empty.satisfied and empty.values == {}


@pytest.mark.parametrize("bad", [math.nan, "12", None, True])
def test_profiler_returning_non_numbers_is_an_error(bad: object) -> None:
    with pytest.raises(ConstraintError, match="expected a finite number"):
        Constraints.parse({"params": 10}).check(FixedProfiler(1, bad))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- dummy input convention


class Recorder(nn.Module):
    def forward(self, *args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
        return args, kwargs


def test_dummy_input_convention() -> None:
    x, y = torch.ones(1), torch.zeros(1)
    rec = Recorder()
    assert run_with_dummy_input(rec, x) == ((x,), {})
    assert run_with_dummy_input(rec, (x, y)) == ((x, y), {})
    assert run_with_dummy_input(rec, (x, {"mask": y})) == ((x,), {"mask": y})
    assert run_with_dummy_input(rec, ({"a": x}, {})) == (({"a": x},), {})  # dict passed positionally
    assert run_with_dummy_input(rec, [x, y]) == (([x, y],), {})  # a list is one object
    assert unpack_dummy_input(()) == ((), {})
    with pytest.raises(ConstraintError, match="keys must be str"):
        unpack_dummy_input((x, {1: y}))


# ----------------------------------------------------------------------------- FlopCounterMode counting


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = self.pool(self.conv2(x)).flatten(1)
        return self.fc(self.drop(x)) * scale


def test_forward_profiler_flops_match_hand_computed_macs_on_conv_and_linear() -> None:
    model = ConvNet()
    x = torch.randn(2, 3, 16, 16)
    # conv: 2 x out_elements x in_channels/groups x kernel elements; BN/ReLU/pool count 0.
    conv1 = 2 * (2 * 8 * 16 * 16) * 3 * 9
    conv2 = 2 * (2 * 16 * 8 * 8) * (8 // 2) * 9
    fc = 2 * 2 * 16 * 10
    profiler = ForwardProfiler(model, (x, {"scale": 2.0}))
    assert profiler.flops() == conv1 + conv2 + fc
    n_params = sum(p.numel() for p in model.parameters())
    assert profiler.params() == n_params
    assert profiler.measure(["flops", "params"]) == {"flops": conv1 + conv2 + fc, "params": n_params}
    # Doubling the batch doubles the FLOPs: they are counted for the dummy input as given.
    assert ForwardProfiler(model, torch.randn(4, 3, 16, 16)).flops() == 2 * (conv1 + conv2 + fc)
    with pytest.raises(ConstraintError, match="cannot measure"):
        profiler.measure(["energy"])


def test_forward_profiler_counts_only_parameters_used_and_tied_once() -> None:
    net = make_net()
    config = {"blocks.0": 4, "blocks.1": 32, "blocks.2": 8}
    for i, block in enumerate(net.blocks):
        block.active = config[f"blocks.{i}"]
    profiler = ForwardProfiler(net, torch.randn(BATCH, IN_FEATURES))
    assert profiler.params() == expected_params(config)
    assert profiler.flops() == expected_flops(config)

    tied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    assert ForwardProfiler(tied, torch.tensor([[1, 2, 3]])).params() == 40


def test_forward_profiler_restores_modes_and_needs_dummy_input() -> None:
    model = ConvNet().train()
    model.bn.eval()  # a per-module flag must survive, not be overwritten by model.train()
    before_stats = model.bn.running_mean.clone()
    ForwardProfiler(model, torch.randn(1, 3, 8, 8)).flops()
    assert model.training and not model.bn.training and model.drop.training
    assert torch.equal(model.bn.running_mean, before_stats)  # ran in eval: BN stats untouched
    with pytest.raises(ConstraintError, match="needs a dummy_input"):
        ForwardProfiler(model, None)


def test_constraint_names_constant() -> None:
    assert CONSTRAINT_NAMES == ("flops", "params", "latency")
