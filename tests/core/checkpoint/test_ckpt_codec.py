from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeopt_core._codec import RESERVED_PREFIX, decode, encode, from_json, to_json
from modeopt_core.errors import CheckpointError
from tests.core.checkpoint.ckpt_helpers import assert_same, trees

PREFIX = RESERVED_PREFIX + "state/"


def roundtrip(value: Any, **kw: Any) -> Any:
    tree, tensors = encode(value, **kw)
    assert all(name.startswith(PREFIX) for name in tensors)
    text = to_json(tree)
    return decode(from_json(text), {k: v.clone() for k, v in tensors.items()})


@settings(max_examples=150, deadline=None)
@given(trees())
def test_roundtrip_is_exact(value: Any) -> None:
    assert_same(value, roundtrip(value))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1)), min_size=3, max_size=40),
       st.lists(st.floats(), min_size=3, max_size=40), st.booleans())
def test_packed_arrays_roundtrip_exactly(ints: list[int], floats: list[float], as_tuple: bool) -> None:
    value = {"i": tuple(ints) if as_tuple else ints, "f": tuple(floats) if as_tuple else floats}
    tree, tensors = encode(value, pack_threshold=3)
    assert set(tree) == {"i", "f"} and all("__array__" in tree[k] for k in tree)
    assert {t.dtype for t in tensors.values()} == {torch.int64, torch.float64}
    assert_same(value, decode(from_json(to_json(tree)), tensors))


def test_long_lists_leave_the_json_tree() -> None:
    value = {"ranks": list(range(5000)), "scores": [i / 7 for i in range(5000)], "short": [1, 2, 3]}
    tree, tensors = encode(value)
    assert len(to_json(tree)) < 300
    assert len(tensors) == 2
    assert_same(value, decode(tree, tensors))


@pytest.mark.parametrize(
    "value",
    [[True] * 2000, [1, 2.0] * 1000, [2**64] * 2000, ["a"] * 2000],
    ids=["bools", "mixed", "beyond-int64", "strings"],
)
def test_non_homogeneous_or_wide_lists_are_not_packed(value: list[Any]) -> None:
    tree, tensors = encode(value)
    assert tensors == {} and isinstance(tree, list)
    assert_same(value, decode(tree, tensors))


def test_markers_for_tuples_keys_and_nonfinite_floats() -> None:
    value = {"k": (7, 7), "m": {1: "a", (2, 3): None, 1.5: True}, "x": [math.inf, -math.inf], "q": {"__tuple__": 1}}
    tree, _ = encode(value)
    assert tree["k"] == {"__tuple__": [7, 7]}
    assert tree["m"] == {"__dict__": [[1, "a"], [{"__tuple__": [2, 3]}, None], [1.5, True]]}
    assert tree["x"] == [{"__float__": "inf"}, {"__float__": "-inf"}]
    assert tree["q"] == {"__dict__": [["__tuple__", 1]]}  # a dict that looks like a marker is escaped
    assert_same(value, decode(tree, {}))


def test_same_tensor_is_stored_once_and_decodes_to_one_object() -> None:
    t = torch.arange(6.0)
    tree, tensors = encode({"a": t, "b": [t, t.clone()]})
    assert len(tensors) == 2
    out = decode(tree, tensors)
    assert out["a"] is out["b"][0] and out["a"] is not out["b"][1]


def test_custom_prefix_and_subclasses_are_normalised() -> None:
    class MyInt(int):
        pass

    tree, tensors = encode(OrderedDict(a=MyInt(3), t=torch.ones(1)), prefix="__modeopt__/x/")
    assert list(tensors) == ["__modeopt__/x/0"]
    out = decode(tree, tensors, prefix="__modeopt__/x/")
    assert type(out["a"]) is int and out["a"] == 3
    with pytest.raises(CheckpointError, match="bad tensor reference"):
        decode(tree, tensors)  # default prefix does not match


@pytest.mark.parametrize(
    "value, where",
    [
        ({"a": {1, 2}}, "<root>['a']"),
        ({"a": [object()]}, "<root>['a'][0]"),
        ({"a": b"bytes"}, "<root>['a']"),
        ({frozenset(): 1}, "frozenset"),
        ({(1, object()): 1}, "tuple"),
        ({"t": {torch.ones(1): 1}}, "Tensor"),
    ],
    ids=["set", "object", "bytes", "frozenset-key", "object-in-key", "tensor-key"],
)
def test_unsupported_values_name_their_location(value: Any, where: str) -> None:
    with pytest.raises(CheckpointError, match="cannot store") as err:
        encode(value)
    assert where in str(err.value)


def test_cycles_and_depth_are_refused() -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    with pytest.raises(CheckpointError, match="cycle"):
        encode(cyclic)
    deep: Any = 0
    for _ in range(300):
        deep = [deep]
    with pytest.raises(CheckpointError, match="deeper"):
        encode(deep)
    shared = [1, 2]
    assert decode(*encode({"a": shared, "b": shared})) == {"a": [1, 2], "b": [1, 2]}  # a DAG is fine


T = {PREFIX + "0": torch.ones(2), PREFIX + "1": torch.ones(3, dtype=torch.int32)}


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"__nope__": 1}, "unknown marker"),
        ({"__tuple__": 3}, "__tuple__ .* must hold a list"),
        ({"__dict__": {"a": 1}}, "list of \\[key, value\\] pairs"),
        ({"__dict__": [[1]]}, "not a \\[key, value\\] pair"),
        ({"__dict__": [[[1, 2], 3]]}, "unsupported type list"),
        ({"__dict__": [[1, 2], [1, 3]]}, "repeats key 1"),
        ({"__dict__": [[{"__tensor__": PREFIX + "0"}, 3]]}, "unsupported type Tensor"),
        ({"__float__": "NaN"}, "__float__"),
        ({"__float__": 1.0}, "__float__"),
        ({"__tensor__": 5}, "bad tensor reference"),
        ({"__tensor__": "weights.0"}, "bad tensor reference"),
        ({"__tensor__": PREFIX + "9"}, "lacks"),
        ({"__array__": [PREFIX + "0", "int"]}, "__array__"),
        ({"__array__": [PREFIX + "0", "int", "list"]}, "1-D torch.int64"),
        ({"__array__": [PREFIX + "1", "float", "tuple"]}, "1-D torch.float64"),
        ({"__array__": [PREFIX + "0", "complex", "list"]}, "__array__"),
        ([1.5, float("nan")], "bare non-finite"),
        ({"a": {1, 2}}, "unexpected set"),
    ],
)
def test_decoding_untrusted_trees_is_strict(tree: Any, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        decode(tree, T)


def test_decoding_deep_nesting_is_refused() -> None:
    deep: Any = 0
    for _ in range(5000):
        deep = {"__tuple__": [deep]}
    with pytest.raises(CheckpointError, match="deeper|too deeply"):
        decode(deep, {})


def test_loader_function_is_called_once_per_name() -> None:
    calls: list[str] = []

    def load(name: str) -> torch.Tensor:
        calls.append(name)
        return torch.zeros(1)

    ref = {"__tensor__": PREFIX + "0"}
    out = decode([ref, ref, {"x": ref}], load)
    assert calls == [PREFIX + "0"] and out[0] is out[1] is out[2]["x"]
    with pytest.raises(CheckpointError, match="did not load as a tensor"):
        decode(ref, lambda name: "not a tensor")  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize("text", ["{", "[1,]", "NaN", '{"a": Infinity}', "[" * 100000])
def test_from_json_rejects_invalid_text(text: str) -> None:
    with pytest.raises(CheckpointError, match="JSON"):
        from_json(text)


def test_to_json_is_strict_and_compact() -> None:
    assert to_json({"a": [1, 2.5, None, "é"]}) == '{"a":[1,2.5,null,"é"]}'
    with pytest.raises(ValueError):
        to_json(float("nan"))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5)),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["__tuple__", "__dict__", "__float__", "__tensor__", "__array__", "__q__", "a"]),
                      inner, max_size=2),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_decodes_or_raises_checkpoint_error(tree: Any) -> None:
    try:
        decode(tree, T)
    except CheckpointError:
        pass
