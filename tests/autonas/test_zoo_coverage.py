"""Coverage of the ``autonas`` mode over the torchvision zoo: convert, sample, export, profile, save.

Every model goes through the real mode (``modeopt_core.apply_mode`` through the plugin registry) and
the real export mode. Models are enlivened (see ``_zoo_cases``) so that subnets give distinct,
non-trivial outputs. The default run covers a representative subset; ``-m slow`` covers the rest.

Tolerances: outputs are compared with ``max|a - b| <= 1e-5 * max(1, max|a|)``, i.e. absolute 1e-5 in
fp32 for logits up to 1, relative beyond. EfficientNets, MNASNet and Inception-v3 have logits of
10..2000 with random weights (residual streams without a final norm grow), so they need the relative
part; in practice every comparison is bitwise equal.
"""

from __future__ import annotations

import copy
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import modeopt_autonas as mtn
import modeopt_core as mo
from modeopt_autonas.space.dynamic import is_dynamic
from tests.autonas._zoo_cases import ZOO, build, zoo_input

# Subnets are evaluated without re-estimating batch-norm statistics: that is what the warning is
# about, and what these tests do on purpose (they check slicing and export, not accuracy).
pytestmark = pytest.mark.filterwarnings("ignore::modeopt_autonas.StaleBatchNormWarning")

#: configurable hparams under the default ``autonas`` rules (divisor 8, ratios 0.5/0.67/1), reviewed
#: against the analysis report: e.g. resnet18 = 4 residual streams + 8 block-inner widths + 2 keeps (layer1)
#: + 3 trailing depths.
HPARAMS = {
    "resnet18": 17,
    "resnet50": 41,
    "resnext50_32x4d": 25,
    "wide_resnet50_2": 41,
    "mobilenet_v2": 25,
    "mobilenet_v3_small": 26,
    "mobilenet_v3_large": 30,
    "efficientnet_b0": 41,
    "efficientnet_v2_s": 82,
    "regnet_x_400mf": 30,
    "regnet_y_400mf": 39,
    "convnext_tiny": 41,  # residual streams too: LayerNorm2d and layer_scale follow them
    "densenet121": 120,
    "shufflenet_v2_x1_0": 18,
    "squeezenet1_1": 25,
    "mnasnet0_5": 29,
    "googlenet": 61,
    "inception_v3": 96,
    "vgg11_bn": 10,
    "alexnet": 7,
    # stream + 12 x (heads, MLP width, keep): nn.MultiheadAttention's heads and embedding width are searchable
    "vit_b_16": 37,
    # 4 stage streams + 12 x (heads, MLP width, keep) + the trailing depth of the stages: shifted-window
    # attention's heads (with their relative position biases) and patch merging follow the streams
    "swin_t": 41,
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Batch-1 inputs of 32..80 pixels: extra intra-op threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: default-run models whose ``torch.export.export`` is left to the slow run (about 8 s for 120 concats)
SLOW_TORCH_EXPORT = {"densenet121"}


def _cases(names: list[str]) -> list:
    return [pytest.param(n, marks=() if ZOO[n].default else pytest.mark.slow, id=n) for n in names]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    tol = 1e-5 * max(1.0, expected.abs().max().item())
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"{what}: max abs diff {diff:.3g} > {tol:.3g}"


def _measure(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = model(x)
    return y, counter.get_total_flops(), sum(p.numel() for p in model.parameters())


def _check_export(model: nn.Module, profiler: mtn.SubnetProfiler, x: torch.Tensor, name: str) -> None:
    """Export a copy at the selected subnet; compare outputs, classes, FLOPs and params."""
    config = mtn.get_subnet_config(model)
    with torch.no_grad():
        y = model(x)
    exported = mo.export(copy.deepcopy(model))
    # the same class (a root holding searchable tensors, ViT's class token, is class-swapped until export)
    assert isinstance(model, type(exported)) and not is_dynamic(exported)
    assert not mtn.has_search_space(exported)
    dynamic = [n for n, m in exported.named_modules() if is_dynamic(m)]
    assert not dynamic, f"{name}: dynamic modules left after export: {dynamic[:5]}"
    y_exported, flops, params = _measure(exported.eval(), x)
    _assert_close(y_exported, y, f"{name}: export vs supernet")
    assert abs(profiler.flops() - flops) <= 0.01 * flops, f"{name}: analytic FLOPs {profiler.flops()} vs {flops}"
    assert profiler.params() == params, f"{name}: analytic params {profiler.params()} vs {params}"
    # exporting a copy leaves the supernet and its selection alone
    assert mtn.has_search_space(model) and mtn.get_subnet_config(model) == config


@pytest.mark.parametrize("name", _cases(list(ZOO)))
def test_zoo_model_converts_samples_and_exports(name: str) -> None:
    model = build(name)
    x = zoo_input(name, seed=1)
    with torch.no_grad():
        reference = model(x)
    model = mo.apply_mode(model, ["autonas"])
    assert mo.applied_modes(model) == ["autonas"]
    assert mtn.search_space_size(model) > 1
    space = mtn.get_search_space(model)
    assert sum(1 for _ in space.named_hparams(True)) == HPARAMS[name]
    with torch.no_grad():
        _assert_close(model(x), reference, f"{name}: max subnet vs original model")
    profiler = mtn.SubnetProfiler(space, x)
    full_flops = profiler.flops()

    rng = random.Random(zlib.crc32(name.encode()))
    for mode in ("min", "random", "random"):
        config = mtn.sample(model, mode, seed=rng)
        with torch.no_grad():
            y = model(x)
        assert torch.isfinite(y).all()
        if mode == "min":
            # the space is real: the smallest subnet computes something else, with fewer FLOPs
            assert (y - reference).abs().max() > 1e-3 * reference.abs().max(), f"{name}: min subnet == max subnet"
            assert profiler.flops() < full_flops
        _check_export(model, profiler, x, name)
        assert mtn.get_subnet_config(model) == config


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=() if c.default and n not in SLOW_TORCH_EXPORT else pytest.mark.slow, id=n)
        for n, c in ZOO.items()
    ],
)
def test_zoo_export_is_accepted_by_torch_export(name: str) -> None:
    x = zoo_input(name, seed=4)
    model = mo.apply_mode(build(name), ["autonas"])
    mtn.sample(model, "random", seed=5)
    exported = mo.export(model)
    program = torch.export.export(exported, (x,))
    with torch.no_grad():
        _assert_close(program.module()(x), exported(x), f"{name}: torch.export program vs export")


@pytest.mark.parametrize("name", _cases(["resnet18", "efficientnet_b0"]))
def test_zoo_save_restore_is_exact(name: str, tmp_path: Path) -> None:
    x = zoo_input(name, seed=2)
    model = mo.apply_mode(build(name), ["autonas"])
    config = mtn.sample(model, "random", seed=3)
    with torch.no_grad():
        y = model(x)
    mo.save(model, tmp_path / "supernet.safetensors")
    # a fresh instance with other random weights: everything must come from the checkpoint
    restored = mo.restore(build(name, seed=1), tmp_path / "supernet.safetensors").eval()
    assert mo.applied_modes(restored) == ["autonas"]
    assert mtn.get_subnet_config(restored) == config
    with torch.no_grad():
        assert torch.equal(restored(x), y)

    exported = mo.export(model)
    with torch.no_grad():
        y_exported = exported(x)
    _assert_close(y_exported, y, f"{name}: export vs supernet")
    mo.save(exported, tmp_path / "exported.safetensors")
    restored = mo.restore(build(name, seed=2), tmp_path / "exported.safetensors").eval()
    assert mo.applied_modes(restored) == ["autonas", "export_nas"]
    assert not any(is_dynamic(m) for m in restored.modules())
    assert {k: v.shape for k, v in restored.state_dict().items()} == {
        k: v.shape for k, v in exported.state_dict().items()
    }
    with torch.no_grad():
        assert torch.equal(restored(x), y_exported)


def test_googlenet_aux_heads_train_after_shrinking() -> None:
    """The mode traces in train mode, so the auxiliary heads follow their shrunk producers."""
    x = zoo_input("googlenet", batch=2, seed=6)
    model = mo.apply_mode(build("googlenet"), ["autonas"]).train()
    for _ in range(2):  # each training forward samples a new subnet
        out = model(x)
        assert [tuple(t.shape) for t in out] == [(2, 10)] * 3
    mtn.sample(model, "min")
    exported = mo.export(copy.deepcopy(model)).train()
    with mtn.pause_sampling(model):
        torch.manual_seed(7)  # same dropout masks in both (same shapes at every dropout)
        expected = model(x)
    torch.manual_seed(7)
    actual = exported(x)
    for name, a, e in zip(actual._fields, actual, expected):
        _assert_close(a.detach(), e.detach(), f"googlenet train-mode {name}")
