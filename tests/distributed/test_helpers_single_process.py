"""``modeopt_core.distributed`` without a process group: trivial, exact fast paths (and the codec)."""

from __future__ import annotations

import math

import pytest
import torch

from modeopt_core import distributed
from modeopt_core.distributed import DistributedError, _decode, _encode


def test_without_a_group_everything_is_local() -> None:
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(iter("abc")) == ["a", "b", "c"]
    value = {"x": [1, 2]}
    assert distributed.broadcast_object(value) is value
    assert distributed.all_gather_objects(value)[0] is value
    assert distributed.run_and_gather(lambda: 3) == [3]
    assert distributed.run_on_main(lambda: 4) == 4
    distributed.barrier()
    model = torch.nn.BatchNorm1d(2)
    before = model.running_mean.clone()
    distributed.broadcast_buffers(model)
    assert torch.equal(model.running_mean, before)
    ran = []
    with distributed.main_process_first():
        ran.append(1)
    assert ran == [1]
    assert distributed.only_main(lambda a, b=1: a + b)(1, b=2) == 3


def test_errors_are_the_callers_own_without_a_group() -> None:
    def boom() -> None:
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        distributed.run_and_gather(boom)
    with pytest.raises(KeyError, match="mine"):
        distributed.run_on_main(boom)


def test_payload_round_trip_keeps_types_without_pickle() -> None:
    obj = {"t": torch.arange(4, dtype=torch.int16).reshape(2, 2), (1, None): (1.5, "s"), 7: [True, None],
           "inf": -math.inf, "many": list(range(2000))}
    back = _decode(_encode(obj), source=0)
    assert torch.equal(back["t"], obj["t"]) and back["t"].dtype == torch.int16
    assert back[(1, None)] == (1.5, "s") and back[7] == [True, None]
    assert back["inf"] == -math.inf and back["many"] == obj["many"]


def test_unsendable_objects_raise_a_typed_error() -> None:
    with pytest.raises(DistributedError, match="cannot send this object to other ranks.*builtins.set"):
        _encode({"a": {1, 2}})

