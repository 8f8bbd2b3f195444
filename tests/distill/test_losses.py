"""The loss of one pair: the formulas, and invariants that hold for any logits (hypothesis)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from modeopt_distill.losses import kd_term


def test_kl_div_matches_the_textbook_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    temperature = 3.0
    p_t = F.softmax(t / temperature, 1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / temperature, 1))).sum(1).mean() * temperature**2
    assert torch.allclose(kd_term("kl_div", s, t, temperature=temperature, dim=1), expected, atol=1e-6)


def test_kl_div_over_the_class_dim_of_dense_outputs() -> None:
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    per_pixel = kd_term("kl_div", s.permute(0, 2, 3, 1).reshape(-1, 4), t.permute(0, 2, 3, 1).reshape(-1, 4),
                        temperature=1.0, dim=1)
    assert torch.allclose(kd_term("kl_div", s, t, temperature=1.0, dim=1), per_pixel, atol=1e-6)


def test_mse_and_cosine() -> None:
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(3, 6, 2, generator=gen), torch.randn(3, 6, 2, generator=gen)
    assert torch.allclose(kd_term("mse", s, t, temperature=1.0, dim=1), ((s - t) ** 2).mean())
    cos = (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1))
    assert torch.allclose(kd_term("cosine", s, t, temperature=1.0, dim=1), (1 - cos).mean(), atol=1e-6)
    assert float(kd_term("cosine", s, 2.5 * s, temperature=1.0, dim=1)) < 1e-6  # scale-free


def test_half_precision_outputs_are_compared_in_float32() -> None:
    gen = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 50, generator=gen), torch.randn(4, 50, generator=gen)
    wide = kd_term("kl_div", s, t, temperature=2.0, dim=1)
    half = kd_term("kl_div", s.bfloat16(), t.bfloat16(), temperature=2.0, dim=1)
    assert half.dtype == torch.float32 and math.isclose(float(half), float(wide), rel_tol=0.05)


_logits = st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=2, max_size=8)


@settings(max_examples=60, deadline=None)
@given(s=_logits, t=_logits, shift=st.floats(-50, 50, allow_nan=False, width=32),
       temperature=st.floats(0.25, 16, allow_nan=False))
def test_kl_div_invariants(s: list[float], t: list[float], shift: float, temperature: float) -> None:
    n = min(len(s), len(t))
    student, teacher = torch.tensor([s[:n]], dtype=torch.float64), torch.tensor([t[:n]], dtype=torch.float64)
    loss = float(kd_term("kl_div", student, teacher, temperature=temperature, dim=1))
    assert loss >= -1e-9  # a divergence
    assert abs(float(kd_term("kl_div", teacher, teacher, temperature=temperature, dim=1))) < 1e-9
    # softmax ignores a constant shift of the logits, so the loss does too
    shifted = float(kd_term("kl_div", student + shift, teacher - shift, temperature=temperature, dim=1))
    assert math.isclose(shifted, loss, rel_tol=1e-6, abs_tol=1e-9)
