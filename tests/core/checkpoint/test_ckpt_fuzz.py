"""Property: a mutated checkpoint (digest recomputed, so only the structure can catch it) gives a
ModeoptError with the fresh model untouched, or a model that is exactly what the file says.

Mutations: any node of any JSON table in the header metadata replaced by arbitrary JSON (huge
integers, marker objects, wrong types) or deleted, a metadata key dropped or set to junk, and the
tensor entries' dtype, shape and offsets changed. ``inspect_checkpoint`` must describe every one of
them without raising.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import modeopt_core as mo
from modeopt_core._reader import ContainerFile
from modeopt_core.checkpoint import inspect_checkpoint, restore, save
from modeopt_core.errors import ModeoptError
from tests.core.checkpoint.test_ckpt_errors import Unchanged
from tests.core.checkpoint.test_ckpt_hardening import forge

_TABLES = ["state", "extra_state", "aliases", "mode_provider", "module_versions"]

json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=6), st.sampled_from([10**400, -1, 0, 2**63, "__modeopt__/state/0", "F32", "*"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
        st.builds(lambda k, v: {k: v}, st.sampled_from(["__tuple__", "__dict__", "__float__", "__tensor__",
                                                         "__array__", "__x__"]), inner),
    ),
    max_leaves=8,
)


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))


def _replace_at(tree: Any, choices: list[int], value: Any, delete: bool) -> Any:
    """``tree`` with the node reached by ``choices`` (indices into children) replaced or deleted."""
    if not choices or not isinstance(tree, (list, dict)) or not tree:
        return value
    keys = list(range(len(tree))) if isinstance(tree, list) else list(tree)
    key = keys[choices[0] % len(keys)]
    if delete and len(choices) == 1:
        if isinstance(tree, list):
            return tree[:key] + tree[key + 1 :]  # type: ignore[operator]
        return {k: v for k, v in tree.items() if k != key}
    child = _replace_at(tree[key], choices[1:], value, delete)
    if isinstance(tree, list):
        return [*tree[:key], child, *tree[key + 1 :]]  # type: ignore[misc]
    return {**tree, key: child}


@st.composite
def mutations(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["table", "table", "table", "key", "entry"]))
    if kind == "table":
        table = draw(st.sampled_from(_TABLES))
        path = draw(st.lists(st.integers(0, 50), min_size=0, max_size=6))
        value, delete = draw(json_values), draw(st.booleans())

        def edit(header: dict[str, Any]) -> None:
            meta = header["__metadata__"]
            meta[table] = json.dumps(_replace_at(json.loads(meta[table]), path, value, delete))
        return edit
    if kind == "key":
        key = draw(st.sampled_from([*_TABLES, "format", "format_version", "model_class", "library_version", "other"]))
        junk = draw(st.one_of(st.none(), st.text(max_size=20), json_values.map(json.dumps)))

        def edit(header: dict[str, Any]) -> None:
            if junk is None:
                header["__metadata__"].pop(key, None)
            else:
                header["__metadata__"][key] = junk
        return edit
    field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    value = draw(st.one_of(json_values, st.sampled_from(["I32", "F16", "U8", "BOOL", "C64"]),
                           st.lists(st.integers(0, 300), max_size=3)))
    index = draw(st.integers(0, 20))

    def edit(header: dict[str, Any]) -> None:
        names = sorted(k for k in header if k != "__metadata__")
        header[names[index % len(names)]][field] = value
    return edit


def _file_tensors(path: Path) -> dict[str, torch.Tensor]:
    with ContainerFile(path) as f:
        aliases = json.loads(f.header.metadata.get("aliases", "{}"))
        names = [*f.header.tensors, *aliases]
        return {n: f.reader(aliases, own=True)(n) for n in names}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edit=mutations())
def test_mutated_checkpoint_restores_exactly_or_fails_cleanly(tmp_path: Path, ckpt_modes: str, edit: Any) -> None:
    path = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    payload = {"k": (1, 2.5), "t": torch.arange(3), 3: "x", "nan": float("nan")}
    save(mo.apply_mode(build(), "ckpt_payload", mode_kwargs={"payload": payload}), path)
    forge(path, edit)
    info = inspect_checkpoint(path)  # never raises on a file's content
    assert info.intact or (info.diagnosis and "modeopt bug" not in info.diagnosis), info.diagnosis
    fresh = build()
    guard = Unchanged(fresh)
    try:
        out = restore(fresh, path)
    except ModeoptError:
        guard.check()
        return
    assert info.intact, info.diagnosis  # restore accepted it: inspect must agree
    assert mo.applied_modes(out) == [name for name, _ in info.modes]
    stored = _file_tensors(path)
    for name, tensor in out.state_dict().items():
        torch.testing.assert_close(tensor, stored[name].to(tensor.dtype), rtol=0, atol=0, equal_nan=True)


def test_the_mutation_engine_reaches_each_kind_of_damage(tmp_path: Path, ckpt_modes: str) -> None:
    # the property above is only as good as its mutations: they must produce errors and successes
    path = tmp_path / "m.safetensors"
    save(mo.apply_mode(build(), "ckpt_payload", mode_kwargs={"payload": [1, 2]}), path)
    raw = path.read_bytes()
    outcomes = set()
    for edit in (lambda h: h["__metadata__"].__setitem__("state", '{"modes": 1}'),
                 lambda h: h["0.weight"].__setitem__("dtype", "I32"),  # same size: a valid, different file
                 lambda h: None):
        path.write_bytes(raw)
        forge(path, edit)
        try:
            restore(build(), path)
            outcomes.add("restored")
        except ModeoptError:
            outcomes.add("refused")
    assert outcomes == {"restored", "refused"}
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n > 0
