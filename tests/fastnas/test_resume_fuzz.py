"""Property: resuming from a mutated FastNAS search checkpoint (digest recomputed) raises a ModeoptError
and leaves the model bit for bit as it was, or finishes; an unmutated checkpoint gives the same result.

Also the forged states the probe found (an out-of-range generator state, short entries, strings
where records belong, empty choice lists), each a CheckpointError naming the field.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modeopt_core as mo
from modeopt_autonas.space import has_search_space
from modeopt_core.base_searcher import SEARCH_CHECKPOINT_KIND
from modeopt_fastnas import prune
from tests.fastnas._models import INPUT_SHAPE, WidthScore, tiny_cnn

DUMMY = torch.zeros(INPUT_SHAPE)

values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5),
              st.sampled_from([2**32, -1, 0, 10**500, "conv2.out_channels", []])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
                            st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), inner, max_size=3)),
    max_leaves=6,
)


def _score() -> WidthScore:
    return WidthScore({"conv1.out_channels": lambda w: (16 - w) / 8, "conv2.out_channels": lambda w: (32 - w) / 4,
                       "conv3.out_channels": lambda w: (64 - w) / 16})


def _prune(ckpt: Path) -> tuple[Any, dict[str, Any]]:
    return prune(tiny_cnn(), {"flops": "50%"}, DUMMY, {"score_func": _score(), "checkpoint": str(ckpt),
                                                       "verbose": False})


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    ckpt = tmp_path_factory.mktemp("fastnas") / "search.ckpt"
    _, res = _prune(ckpt)
    return mo.read_state_file(ckpt, kind=SEARCH_CHECKPOINT_KIND), res


def _replace(tree: Any, path: list[int], value: Any, delete: bool) -> Any:
    if not path or not isinstance(tree, (list, tuple, dict)) or not tree:
        return value
    keys = list(range(len(tree))) if not isinstance(tree, dict) else list(tree)
    key = keys[path[0] % len(keys)]
    if isinstance(tree, dict):
        if delete and len(path) == 1:
            return {k: v for k, v in tree.items() if k != key}
        return {**tree, key: _replace(tree[key], path[1:], value, delete)}
    items = list(tree)
    if delete and len(path) == 1:
        del items[key]
    else:
        items[key] = _replace(items[key], path[1:], value, delete)
    return type(tree)(items)


def _exact(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.integers(0, 40), min_size=1, max_size=6), value=values, delete=st.booleans())
def test_mutated_search_checkpoint_fails_cleanly_or_resumes(
    tmp_path: Path, finished: tuple[dict[str, Any], dict[str, Any]], path: list[int], value: Any, delete: bool
) -> None:
    data, _ = finished
    ckpt = tmp_path / "search.ckpt"
    mutated = _replace(copy.deepcopy(data), [0, *path] if path[0] % 2 else [1, *path], value, delete)
    try:
        mo.write_state_file(ckpt, mutated, kind=SEARCH_CHECKPOINT_KIND)
    except mo.CheckpointError:
        return  # not storable (e.g. a dict key type the codec refuses): nothing to resume
    model = tiny_cnn()
    before = _exact(model)
    try:
        prune(model, {"flops": "50%"}, DUMMY, {"score_func": _score(), "checkpoint": str(ckpt), "verbose": False})
    except mo.ModeoptError:
        assert mo.applied_modes(model) == [] and not has_search_space(model)
        now = model.state_dict()
        assert all(torch.equal(now[k], v) for k, v in before.items())


def test_an_unmutated_checkpoint_resumes_to_the_same_result(tmp_path: Path,
                                                           finished: tuple[dict[str, Any], dict[str, Any]]) -> None:
    data, reference = finished
    ckpt = tmp_path / "search.ckpt"
    mo.write_state_file(ckpt, data, kind=SEARCH_CHECKPOINT_KIND)
    _, res = _prune(ckpt)
    assert res["resumed"] and res["subnet"] == reference["subnet"]
    assert res["sensitivity_raw"] == reference["sensitivity_raw"] and res["num_score_evals"] == 0


@pytest.mark.parametrize("edit, match", [
    (lambda s: s["rng_state"][1].__setitem__(0, 2**40), r"rng_state: generator words"),
    (lambda s: s["rng_state"][1].__setitem__(-1, 10**6), r"rng_state: generator position"),
    (lambda s: s.__setitem__("rng_state", [3, "abc", None]), r"rng_state: expected 625"),
    (lambda s: s["sensitivity_raw"]["conv2.out_channels"].__setitem__(0, [4]), r"sensitivity_raw\['conv2"),
    (lambda s: s["sensitivity_raw"].__setitem__("conv2.out_channels", []), r"sensitivity_raw\['conv2"),
    (lambda s: s["sensitivity_raw"].__setitem__("nope", [[1, None]]), "not a prunable hparam"),
    (lambda s: s.__setitem__("history", ["x"]), r"history\[0\]"),
    (lambda s: s.__setitem__("original_score", float("nan")), "original_score"),
    (lambda s: s.__setitem__("num_score_evals", True), "num_score_evals"),
    (lambda s: s.__setitem__("iter_num", 10**30), "iter_num"),
    (lambda s: s["original_config"].__setitem__("conv1.out_channels", None), "original_config"),  # found by the fuzz
    (lambda s: s["original_config"].__setitem__("conv1.out_channels", 3), "original_config"),
])
def test_forged_states_the_probe_found(tmp_path: Path, finished: tuple[dict[str, Any], dict[str, Any]],
                                       edit: Any, match: str) -> None:
    data = copy.deepcopy(finished[0])
    edit(data["state"])
    ckpt = tmp_path / "forged.ckpt"
    mo.write_state_file(ckpt, data, kind=SEARCH_CHECKPOINT_KIND)
    model = tiny_cnn()
    before = _exact(model)
    with pytest.raises(mo.CheckpointError, match=match) as err:
        prune(model, {"flops": "50%"}, DUMMY, {"score_func": _score(), "checkpoint": str(ckpt), "verbose": False})
    assert str(ckpt) in str(err.value) and "start afresh" in str(err.value)
    assert mo.applied_modes(model) == [] and all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
