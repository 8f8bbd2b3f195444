"""The latency model with a deterministic op-cost timer: sum rule, grid mode, slow widths, side effects.

With :class:`OpCostTimer` a forward pass costs exactly the sum of its layers' costs (plus a constant
per timed call), so the calibrated table must reproduce the "measured" latency of every exported
subnet to rounding error. Real timings are never asserted.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import modeopt_core as mo
from modeopt_autonas.space import LatencyModel, SearchSpace, SubnetConfigError, get_search_space
from modeopt_core import ConfigError
from modeopt_fastnas.digits import DigitsResNet
from tests._fake_timer import OpCostTimer

from .._models import (
    MLP,
    ConcatNet,
    ConvChain,
    DepthNet,
    concat_structure,
    conv_chain_structure,
    depth_structure,
    mlp_structure,
)
from .._structures import make_rules

RULES = make_rules(ratios=(0.25, 0.5, 0.75, 1.0), kernel=(1, 3), min_depth=0)
FAST = {"runs": 1, "warmup": 0, "calibration_runs": 1, "report_runs": 1}

CASES = {
    "conv2d": (lambda: ConvChain(2, False, 1), conv_chain_structure, (2, 4, 6, 6)),
    "depthwise1d": (lambda: ConvChain(1, False, 8), conv_chain_structure, (2, 4, 7)),
    "grouped3d_T": (lambda: ConvChain(3, True, 4), conv_chain_structure, (1, 4, 3, 3, 3)),
    "concat": (ConcatNet, lambda m: concat_structure(), (2, 3, 6, 6)),
    "mlp": (MLP, lambda m: mlp_structure(), (2, 5, 8)),
    "depth": (DepthNet, depth_structure, (2, 3, 6, 6)),
}


def _space(case: str) -> tuple[SearchSpace, torch.Tensor]:
    make, structure, shape = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    return SearchSpace.build(model, structure(model), RULES), torch.randn(*shape)


@pytest.mark.parametrize("case", list(CASES))
def test_prediction_is_the_sum_of_the_layers(case: str, tmp_path: Path) -> None:
    space, x = _space(case)
    # elastic depth changes the number of layers that run: no per-call constant, or the sum is not exact
    timer = OpCostTimer(overhead_s=0.0 if case == "depth" else 5e-6)
    model = LatencyModel.build(space, x, timer=timer, cache_dir=tmp_path, **FAST)
    rng = random.Random(0)
    configs = [space.sample("random", rng) for _ in range(6)] + [space.sample("min")]
    space.sample("max")
    measured = model.measure(configs, runs=1)
    for config, ms in zip(configs, measured):
        assert model.latency(config) == pytest.approx(ms, rel=1e-9, abs=1e-12), config
        assert sum(model.layer_latencies(config).values()) == pytest.approx(model.raw_latency(config), rel=1e-12)
    assert model.calibration["max_abs_error"] < 1e-9
    assert model.latency() == pytest.approx(model.calibration["reference_ms"])  # max == original here


def test_kernel_size_and_dropped_blocks_are_axes_and_conditions(tmp_path: Path) -> None:
    space, x = _space("depth")
    model = LatencyModel.build(space, x, timer=OpCostTimer(0.0), cache_dir=tmp_path, **FAST)
    axes = {tuple(r["axes"]) for r in model.rows()}
    assert ("in", "out", "kernel") in axes and ("features",) in axes
    shallow = {**space.config(), "blocks.depth": 1}
    per_layer = model.layer_latencies(shallow)
    assert all(per_layer[f"blocks.{i}.conv1"] == 0.0 for i in (1, 2, 3)) and per_layer["blocks.0.conv1"] > 0
    assert model.latency(shallow) < model.latency()


def test_build_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    space, x = _space("depth")
    space.model.train()
    config = space.sample("random", random.Random(3))
    state = {k: v.clone() for k, v in space.model.state_dict().items()}
    LatencyModel.build(space, x, timer=OpCostTimer(0.0), cache_dir=tmp_path, **FAST)
    assert space.config() == config
    assert all(m.training for m in space.model.modules())
    assert all(torch.equal(v, space.model.state_dict()[k]) for k, v in state.items())


def test_queries_validate_configs_and_do_not_select(tmp_path: Path) -> None:
    space, x = _space("conv2d")
    model = LatencyModel.build(space, x, timer=OpCostTimer(), cache_dir=tmp_path, **FAST)
    small = space.sample("min")
    expected = model.latency()
    space.sample("max")
    assert model.latency(small) == expected and space.config() != small
    with pytest.raises(SubnetConfigError, match="no hparam named 'nope'"):
        model.latency({"nope": 1})
    name = next(iter(space.config()))
    with pytest.raises(SubnetConfigError, match="is not a choice"):
        model.latency({name: 10_000})


def test_grid_mode_interpolates_and_corrects_per_axis(tmp_path: Path) -> None:
    """Above max_exact tuples a layer is timed on a grid plus per-axis sweeps; for costs that are a
    product of per-axis factors (the fake timer's MACs x misalignment penalty, without the per-call
    constant) that is still exact."""
    torch.manual_seed(0)
    model = mo.apply_mode(DigitsResNet((8, 16, 16)).eval(), ["fastnas"])
    space = get_search_space(model)
    x = torch.randn(2, 1, 8, 8)
    exact = LatencyModel.build(space, x, timer=OpCostTimer(0.0), cache_dir=tmp_path / "a", **FAST)
    grid = LatencyModel.build(space, x, timer=OpCostTimer(0.0), cache_dir=tmp_path / "b", max_exact=20,
                              grid_points=3, **FAST)
    modes = {r["layers"][0]: r["mode"] for r in grid.rows()}
    assert modes["layer2.0.conv2"] == "grid" and modes["stem.1"] == "exact"
    assert grid.stats["variants"] < exact.stats["variants"]
    rng = random.Random(1)
    for _ in range(10):
        config = space.sample("random", rng)
        assert grid.raw_latency(config) == pytest.approx(exact.raw_latency(config), rel=1e-9)


def test_widths_slower_than_a_wider_one_are_listed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = mo.apply_mode(DigitsResNet((8, 16, 16)).eval(), ["fastnas"])
    space = get_search_space(model)
    lm = LatencyModel.build(space, torch.randn(2, 1, 8, 8), timer=OpCostTimer(), cache_dir=tmp_path, **FAST)
    slow = lm.slow_widths()
    stem = [s for s in slow if s["layers"] == ["stem.0"]]
    # out=7 wastes a lane (x3 cost): 8 output channels are faster
    assert {"widths": {"in": 1, "out": 7}, "wider": {"in": 1, "out": 8}} in [
        {"widths": s["widths"], "wider": s["wider"]} for s in stem]
    assert all(s["widths"]["out"] % 8 for s in stem)
    text = lm.table()
    assert "stem.0" in text and "in=1 out=7" in text and "calibration: measured ~" in text


def test_options_are_checked() -> None:
    space, x = _space("conv2d")
    with pytest.raises(ConfigError, match="unknown latency option"):
        LatencyModel.build(space, x, bogus=1)
    with pytest.raises(ConfigError, match="runs=0 must be an int >= 1"):
        LatencyModel.build(space, x, runs=0)
    with pytest.raises(ConfigError, match="must be a LatencyTimer"):
        LatencyModel.build(space, x, timer="fast")


def test_report_compares_prediction_and_measurement(tmp_path: Path) -> None:
    space, x = _space("conv2d")
    lm = LatencyModel.build(space, x, timer=OpCostTimer(), cache_dir=tmp_path, **FAST)
    small = space.sample("min")
    space.sample("max")
    report = lm.report(small, visited=[small, space.config()])
    assert report["error"] == pytest.approx(0.0, abs=1e-9)
    assert report["measured_ratio"] == pytest.approx(report["predicted_ratio"]) and report["measured_ratio"] < 1
    assert len(report["visited"]) == 2 and report["runs"] == 1
    assert space.config() == {n: hp.max for n, hp in space.named_hparams()}


class _SlowingTimer(OpCostTimer):
    """The op-cost timer on a machine that runs ``factor`` times slower than when the table was built."""

    factor = 1.0

    def __call__(self, fn: Callable[[], Any]) -> float:
        return self.factor * super().__call__(fn)


def test_report_separates_the_machine_drift_from_the_ratio_error(tmp_path: Path) -> None:
    space, x = _space("conv2d")
    timer = _SlowingTimer()
    lm = LatencyModel.build(space, x, timer=timer, cache_dir=tmp_path, **FAST)
    small = space.sample("min")
    space.sample("max")
    timer.factor = 2.0
    report = lm.report(small)
    assert report["measured_before"] == pytest.approx(2 * lm.reference_ms, rel=1e-9)
    assert report["error"] == pytest.approx(-0.5, rel=1e-9)  # milliseconds: the machine's drift
    assert report["ratio_error"] == pytest.approx(0.0, abs=1e-9)  # ratios: the model's own error


def test_a_shared_module_called_twice_is_two_units(tmp_path: Path) -> None:
    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.head = torch.nn.Conv2d(8, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x)).mean((2, 3)) + self.head(self.conv(x[..., ::2, ::2])).mean((2, 3))

    torch.manual_seed(0)
    model = mo.apply_mode(Twice().eval(), ["fastnas"])
    space = get_search_space(model)
    lm = LatencyModel.build(space, torch.randn(1, 3, 8, 8), timer=OpCostTimer(0.0), cache_dir=tmp_path, **FAST)
    names = set(lm.layer_latencies())
    assert {"conv#0", "conv#1", "head#0", "head#1"} <= names
    config = space.sample("min")
    space.sample("max")
    assert lm.latency(config) == pytest.approx(lm.measure([config], runs=1)[0], rel=1e-9)


def test_copies_of_the_space_share_nothing_with_the_model(tmp_path: Path) -> None:
    """Variants are views of the real tensors: timing them must not write into the model."""
    space, x = _space("conv2d")
    before = copy.deepcopy(space.model.state_dict())
    LatencyModel.build(space, x, timer=OpCostTimer(), cache_dir=tmp_path, **FAST)
    after = space.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("case", ["conv2d", "grouped3d_T", "concat", "depth"])
def test_a_variant_is_what_export_gives(case: str) -> None:
    """The timed variant (a shallow export onto views) has the class, attributes and tensor shapes of
    the real export of the same layer at the same widths."""
    from modeopt_autonas.space.export import export_model
    from modeopt_autonas.space.latency.units import _meta_template, exported_view

    space, _ = _space(case)
    rng = random.Random(5)
    for _ in range(4):
        space.sample("random", rng)
        exported = dict(space.export(inplace=False).named_modules())
        for name, module in space.dynamic_modules().items():
            if name not in exported or not hasattr(module, "weight"):
                continue
            template = _meta_template(module)
            buffers = {f"{kind}.{n}": t.detach().reshape(-1) for kind in ("_parameters", "_buffers")
                       for n, t in getattr(module, kind).items() if t is not None}
            view = exported_view(template, buffers)
            real = exported[name]
            assert type(view) is type(real) and view.extra_repr() == real.extra_repr(), name
            assert {n: t.shape for n, t in view.named_parameters()} == {n: t.shape for n, t in real.named_parameters()}
            assert {n: t.shape for n, t in view.named_buffers()} == {n: t.shape for n, t in real.named_buffers()}
            assert not view.training
            copy_ = export_model(copy.deepcopy(template))
            assert copy_.extra_repr() == real.extra_repr()
