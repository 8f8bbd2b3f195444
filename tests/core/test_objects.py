"""``modeopt_core.sdk.load_object``: the callable a ``"module:attr"`` reference names, or a typed error."""

from __future__ import annotations

import collections

import pytest

import modeopt_core as mo
from modeopt_core.sdk import load_object


def test_a_reference_names_a_callable_through_nested_attributes() -> None:
    assert load_object("collections:OrderedDict.fromkeys", "--model") == collections.OrderedDict.fromkeys


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("collections.OrderedDict", "--model 'collections.OrderedDict' must look like MODULE:NAME"),
        ("no_such_module_xyz:f", "--model 'no_such_module_xyz:f': cannot import 'no_such_module_xyz'"),
        ("collections:NoSuch", "--model 'collections:NoSuch': 'collections' has no attribute 'NoSuch'"),
        ("math:pi", "--model 'math:pi' is not callable, a factory is needed"),
    ],
)
def test_bad_references_are_config_errors_naming_the_problem(reference: str, message: str) -> None:
    with pytest.raises(mo.ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        load_object(reference, "--model", callable_hint=", a factory is needed")
