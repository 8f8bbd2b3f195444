"""Coverage of the search space over timm: every model family timm ships, random weights, eval mode.

Each case goes through :func:`tests.autonas.zoo.checks.check_model`: convert with the ``fastnas`` mode,
at least one searchable dimension, the minimum and a random subnet run with finite outputs, their export
equals the dynamic model (``max|a - b| <= 1e-4 * max(1, max|a|)``), analytic FLOPs within 1% of
``torch.utils.flop_counter`` on the export, parameters exact. The default run takes a subset that spans
the layer kinds of issue 11 (norm+activation layers, standardized convs, channel splits and slices,
layer scales, attention); ``-m slow`` runs the whole sample. ``bench/timm_zoo.py`` runs the same check
over the sample with a table of what stays frozen in each model (docs/architectures.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.autonas.zoo.checks import check_model
from tests.autonas.zoo.timm_cases import CASES, EXCLUDED, FAMILIES

timm = pytest.importorskip("timm")

# Subnets are compared without re-estimating batch-norm statistics on purpose (slicing, not accuracy).
pytestmark = pytest.mark.filterwarnings("ignore::modeopt_autonas.StaleBatchNormWarning")

#: the default-run subset: one model per mechanism the analysis needs for timm
FAST = {
    "efficientnet_b0",  # BatchNormAct2d (a BatchNorm2d subclass calling F.batch_norm), SE blocks
    "nf_resnet26",  # ScaledStdConv2d (weight standardisation with a per-channel gain)
    "cspresnet50",  # channel splits (chunk) and concatenation of the halves
    "ghostnet_050",  # channel slicing (x[:, :k]) of cheap-operation outputs
    "convnext_atto",  # channels-last LayerNorm, layer scale on the residual stream
    "deit_tiny_distilled_patch16_224",  # attention heads, class and distillation tokens, position embeddings
}

#: cases that fail the check, with the reason (strict: a fix makes the test fail until it is removed here)
KNOWN_FAILURES: dict[str, str] = {
    "mobilenetv5_base": "no searchable dimension: its MSFA neck has data-dependent control flow (untraceable), "
                        "and its RMS-norm-like BatchNorm multiplies by a channel mean",
    "pvt_v2_b0": "no searchable dimension: reshapes of the patch embedding and of q/kv (spatial reduction) "
                 "are not followed",
    "gmlp_ti16_224": "no searchable dimension: a mean of unknown rank in the stem, chunk-split spatial gating",
    "deepseek_vit_412m": "no searchable dimension: reshapes of the patch embedding and of qkv are not followed",
}


def _params() -> list:
    params = []
    for c in CASES:
        marks: list = [] if c.name in FAST else [pytest.mark.slow]
        if c.name in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[c.name]))
        params.append(pytest.param(c.name, marks=marks, id=c.name))
    return params


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small single-image inputs: extra intra-op threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", _params())
def test_timm_model_converts_and_exports_exactly(name: str) -> None:
    from tests.autonas.zoo.timm_models import build_timm, timm_input

    outcome = check_model(name, build_timm(name), timm_input(name, seed=3))
    assert outcome.status == "pass", f"{name}: {outcome.status}: {outcome.detail}"
    assert outcome.hparams >= 1


def test_the_sample_covers_every_family_timm_ships() -> None:
    from timm.models._registry import _model_to_module

    shipped = set(_model_to_module.values())
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)
    assert shipped - set(FAMILIES) - set(EXCLUDED) == set(), "families timm ships that the sample lacks"
    wrong = {c.name: (c.family, _model_to_module.get(c.name)) for c in CASES if _model_to_module.get(c.name) != c.family}
    assert not wrong, f"cases whose family is not the module timm defines them in: {wrong}"
    assert FAST <= {c.name for c in CASES} and set(KNOWN_FAILURES) <= {c.name for c in CASES}
