"""Shared pieces of the checkpoint tests: strict comparison, hypothesis strategies, models and modes."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st
from pydantic import Field
from safetensors import safe_open
from torch import nn

from modeopt_core import ModeConfig, ModeDescriptor, hookimpl
from modeopt_core._container import prepare_tensors
from modeopt_core._reader import read_header
from modeopt_core._writer import write_container

# ---------------------------------------------------------------------------------------------------
# Strict structural equality: types (tuple vs list, int vs bool), key types, tensors bit for bit.


def assert_same(a: Any, b: Any, path: str = "<root>") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{path}: tensor became {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), f"{path}: data differs"
        return
    assert type(a) is type(b), f"{path}: type {type(a).__name__} became {type(b).__name__}"
    if isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), f"{path}: keys {list(a)} vs {list(b)}"
        for (ka, va), kb in zip(a.items(), b.keys()):
            assert_same(ka, kb, f"{path}.key({ka!r})")
            assert_same(va, b[kb], f"{path}[{ka!r}]")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


# ---------------------------------------------------------------------------------------------------
# Hypothesis strategies for state trees.

_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int8,
           torch.uint8, torch.bool]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(_DTYPES))
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        t = torch.randn(shape, generator=gen).to(dtype)
    elif dtype == torch.bool:
        t = torch.randint(0, 2, shape, generator=gen).bool()
    else:
        t = torch.randint(0, 100, shape, generator=gen).to(dtype)
    if draw(st.booleans()) and t.dim() == 2:
        t = t.t()  # non-contiguous
    return t


keys = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.tuples(inner, inner) | st.tuples(inner),
    max_leaves=4,
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["__tuple__", "__tensor__", "__x__", "__", "____"]),
)


def trees(with_tensors: bool = True) -> st.SearchStrategy[Any]:
    leaves = st.one_of(scalars, tensors()) if with_tensors else scalars
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.lists(inner, max_size=4).map(tuple),
            st.dictionaries(st.text(max_size=10), inner, max_size=4),
            st.dictionaries(st.sampled_from(["__tuple__", "__dict__", "__tensor__", "__zz__", "a"]), inner, max_size=1),
            st.dictionaries(keys, inner, max_size=4),
        ),
        max_leaves=20,
    )


# ---------------------------------------------------------------------------------------------------
# Models.


class TiedLM(nn.Module):
    """An embedding whose weight is shared with the output projection (as in language models)."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.embed(idx))))


class SharedBlock(nn.Module):
    """The same Linear registered twice under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.second = self.first
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.second(torch.relu(self.first(x))))


class WithExtraState(nn.Module):
    """A module with non-tensor extra state (get_extra_state / set_extra_state)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.info: dict[Any, Any] = {"steps": 0, "window": (3, 3)}

    def get_extra_state(self) -> Any:
        return dict(self.info)

    def set_extra_state(self, state: Any) -> None:
        self.info = dict(state)


class Locked(nn.Module):
    """A model that cannot be deep-copied (holds a lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.lock = threading.Lock()


# ---------------------------------------------------------------------------------------------------
# Modes used only by the checkpoint tests.


class ShrinkConfig(ModeConfig):
    target: str = Field(description="name of the nn.Linear to replace")
    out_features: int = Field(gt=0)


class ShrinkMode(ModeDescriptor):
    """Replaces a Linear by a narrower one: the restored model has different shapes from the fresh one."""

    name = "ckpt_shrink"  # type: ignore[assignment]
    config_class = ShrinkConfig  # type: ignore[assignment]

    def convert(self, model: nn.Module, config: Any, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        return self.restore(model, config, {}), {"kept": tuple(range(config.out_features))}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        old = model.get_submodule(config.target)
        new = nn.Linear(old.in_features, config.out_features, bias=old.bias is not None)
        parent_name, _, child = config.target.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        return model


class PayloadMode(ModeDescriptor):
    """Records whatever metadata it is given through ``mode_kwargs={"payload": ...}``."""

    name = "ckpt_payload"  # type: ignore[assignment]
    config_class = ModeConfig  # type: ignore[assignment]

    def convert(self, model: nn.Module, config: Any, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        return model, {"payload": kw.get("payload")}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        model.payload_seen = metadata["payload"]
        return model


class NeedsDataMode(ModeDescriptor):
    """Its restore reads weight values, which a data-less (meta) copy cannot give."""

    name = "ckpt_needs_data"  # type: ignore[assignment]
    config_class = ModeConfig  # type: ignore[assignment]

    def convert(self, model: nn.Module, config: Any, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        return self.restore(model, config, {}), {}

    def restore(self, model: nn.Module, config: Any, metadata: dict[str, Any]) -> nn.Module:
        first = next(model.parameters())
        model.first_value = float(first.reshape(-1)[0].item())  # fails on the meta device
        model.extra = nn.Linear(2, 2)
        return model


class CheckpointModes:
    @hookimpl
    def modeopt_register_modes(self, register: Any) -> None:
        register(ShrinkMode())
        register(PayloadMode())
        register(NeedsDataMode())


# ---------------------------------------------------------------------------------------------------
# Crafting files: rewrite a valid file's header metadata (with a fresh, valid digest).


def rewrite(path: Path, *, drop: tuple[str, ...] = (), tensors: dict[str, torch.Tensor] | None = None,
            **metadata: str) -> None:
    header = read_header(path)
    with safe_open(str(path), framework="pt") as f:
        stored = {n: f.get_tensor(n) for n in f.keys()}
    stored.update(tensors or {})
    meta = {k: v for k, v in header.metadata.items() if k not in drop and k != "digest"}
    meta.update(metadata)
    prepared, _ = prepare_tensors(stored)
    write_container(path, prepared, meta)


def state_dict_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}
