"""The kd_loss config: strict validation with messages that name the field, and an exact JSON round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import modeopt_core as mo
from modeopt_distill import LOSSES, KDLossConfig, LayerPair


def test_defaults_distil_the_logits() -> None:
    config = mo.validate_config(KDLossConfig, None)
    (pair,) = config.pairs
    assert (pair.student, pair.teacher_name, pair.loss, pair.weight, pair.dim) == ("", "", "kl_div", 1.0, 1)
    assert config.temperature == 1.0 and config.student_loss_weight == 1.0 and config.teacher_no_grad
    assert config.resolved_teacher_eval() is True
    assert mo.validate_config(KDLossConfig, {"teacher_subnet": "max"}).resolved_teacher_eval() is False


@pytest.mark.parametrize(("raw", "message"), [
    ({"temperature": 0}, "temperature: Input should be greater than 0"),
    ({"tempreature": 2}, "tempreature: unknown key 'tempreature', did you mean 'temperature'? accepted keys are"),
    ({"pairs": []}, "pairs: List should have at least 1 item"),
    ({"pairs": [{"loss": "kl"}]}, "pairs.0.loss: Input should be 'kl_div', 'mse' or 'cosine'"),
    ({"pairs": [{"loss": "mse", "temperature": 2.0}]}, "'temperature' applies to loss 'kl_div' only"),
    ({"pairs": [{"weight": -1}]}, "pairs.0.weight: Input should be greater than or equal to 0"),
    ({"pairs": [{"studnet": "x"}]}, "pairs.0.studnet: unknown key"),
    ({"teacher": "not a reference"}, "is not a factory reference: use 'package.module:function'"),
    ({"teacher": "a.b:c", "teacher_subnet": "max"}, "give either 'teacher' (a factory) or 'teacher_subnet'"),
    ({"teacher_subnet": "largest"}, "teacher_subnet: Input should be 'max' or 'original'"),
])
def test_bad_configs_name_the_field(raw: dict, message: str) -> None:
    with pytest.raises(mo.ConfigError) as info:
        mo.validate_config(KDLossConfig, raw)
    assert message in str(info.value)


def test_pair_labels_and_defaults() -> None:
    assert LayerPair().label() == "output kl_div"
    assert LayerPair(student="features", loss="mse").label() == "features mse"
    assert LayerPair(student="a.b", teacher="c", loss="cosine").label() == "a.b->c cosine"
    pair = LayerPair(output="logits")
    assert pair.label() == "output['logits'] kl_div" and pair.teacher_item == "logits"
    assert LayerPair(output=0, teacher_output="logits").teacher_item == "logits"


_names = st.text(alphabet="abc.", max_size=6)
_pairs = st.builds(
    dict,
    student=_names,
    teacher=st.none() | _names,
    loss=st.sampled_from(LOSSES),
    weight=st.floats(0, 10, allow_nan=False),
    dim=st.integers(-3, 3),
    output=st.none() | st.integers(0, 3) | st.sampled_from(["logits", "hidden"]),
    adapter=st.booleans(),
)


@given(
    pairs=st.lists(_pairs, min_size=1, max_size=4),
    temperature=st.floats(0.1, 20, allow_nan=False),
    ce=st.floats(0, 5, allow_nan=False),
    factory=st.none() | st.just("tests.distill._models:teacher"),
    no_grad=st.booleans(),
)
def test_dump_round_trips_exactly(pairs: list[dict], temperature: float, ce: float, factory: str | None,
                                  no_grad: bool) -> None:
    config = mo.validate_config(KDLossConfig, {"pairs": pairs, "temperature": temperature, "student_loss_weight": ce,
                                               "teacher": factory, "teacher_no_grad": no_grad})
    dumped = config.dump()
    again = mo.validate_config(KDLossConfig, dumped)
    assert again == config and again.dump() == dumped
