"""Lossless encoding of nested Python state (with tensors) into a JSON tree plus named tensors.

JSON alone cannot hold tuples, non-string dict keys, NaN/infinity or tensors, so those become
*marker objects*: JSON objects with exactly one key of the form ``__name__``:

- ``{"__tuple__": [item, ...]}``: a tuple.
- ``{"__dict__": [[key, value], ...]}``: a dict whose keys are not all strings (keys may be
  int, float, bool, None, str or tuples of those), or a str-keyed dict that would itself look like a
  marker (exactly one key of the form ``__name__``).
- ``{"__float__": "nan" | "inf" | "-inf"}``: a non-finite float.
- ``{"__tensor__": name}``: a tensor, stored separately under ``name`` (``prefix`` + counter).
- ``{"__array__": [name, "int" | "float", "list" | "tuple"]}``: a long homogeneous list/tuple of
  Python ints or floats, packed into a 1-D int64/float64 tensor so that it stays out of the header.

Any other JSON object is a plain str-keyed dict. Decoding is strict: it is fed untrusted files, so
every deviation raises :class:`~modeopt_core.errors.CheckpointError`; it never runs code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .errors import CheckpointError

__all__ = ["RESERVED_PREFIX", "decode", "encode", "from_json", "to_json"]

#: Tensor names starting with this are owned by modeopt (state tensors, packed arrays).
RESERVED_PREFIX = "__modeopt__/"

_MAX_DEPTH = 200
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_MARKERS = ("__tuple__", "__dict__", "__float__", "__tensor__", "__array__")


def _looks_like_marker(key: str) -> bool:
    return len(key) >= 4 and key.startswith("__") and key.endswith("__")


class _Encoder:
    def __init__(self, prefix: str, pack_threshold: int) -> None:
        self.prefix = prefix
        self.pack_threshold = pack_threshold
        self.tensors: dict[str, torch.Tensor] = {}
        self._names_by_id: dict[int, str] = {}
        self._active: set[int] = set()  # containers on the current path, to report cycles

    def _new_name(self) -> str:
        return f"{self.prefix}{len(self.tensors)}"

    def tensor(self, value: torch.Tensor) -> dict[str, Any]:
        name = self._names_by_id.get(id(value))
        if name is None:
            name = self._new_name()
            self._names_by_id[id(value)] = name
            self.tensors[name] = value.detach()
        return {"__tensor__": name}

    def _packable(self, items: list[Any] | tuple[Any, ...]) -> str | None:
        if len(items) < self.pack_threshold:
            return None
        if all(type(v) is int for v in items):
            return "int" if all(_INT64_MIN <= v <= _INT64_MAX for v in items) else None
        if all(type(v) is float for v in items):
            return "float"
        return None

    def encode(self, value: Any, path: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise CheckpointError(f"state nested deeper than {_MAX_DEPTH} levels at {path}")
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, (str, int)):  # subclasses (enums) are stored as the plain type
            return str(value) if isinstance(value, str) else int(value)
        if isinstance(value, float):
            value = float(value)
            if math.isfinite(value):
                return value
            return {"__float__": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if isinstance(value, torch.Tensor):
            return self.tensor(value)
        if isinstance(value, (list, tuple, dict)):
            if id(value) in self._active:
                raise CheckpointError(f"state contains a reference cycle at {path}; state must be a tree")
            self._active.add(id(value))
            try:
                return self._container(value, path, depth)
            finally:
                self._active.discard(id(value))
        raise CheckpointError(
            f"cannot store a value of type {type(value).__module__}.{type(value).__qualname__} at {path}: "
            "state may hold only dict, list, tuple, int, float, bool, str, None and torch.Tensor "
            "(convert it, e.g. numpy arrays to tensors, sets to sorted lists)"
        )

    def _container(self, value: Any, path: str, depth: int) -> Any:
        if isinstance(value, (list, tuple)):
            kind = self._packable(value)
            if kind is not None:
                dtype = torch.int64 if kind == "int" else torch.float64
                name = self._new_name()
                self.tensors[name] = torch.tensor(list(value), dtype=dtype)
                return {"__array__": [name, kind, "tuple" if isinstance(value, tuple) else "list"]}
            items = [self.encode(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
            return {"__tuple__": items} if isinstance(value, tuple) else items
        if all(type(k) is str for k in value) and not (len(value) == 1 and _looks_like_marker(next(iter(value)))):
            return {k: self.encode(v, f"{path}[{k!r}]", depth + 1) for k, v in value.items()}
        pairs = []
        for k, v in value.items():
            if not _is_key(k):
                raise CheckpointError(
                    f"cannot store dict key {k!r} of type {type(k).__name__} at {path}: keys may be "
                    "str, int, float, bool, None or tuples of those"
                )
            pairs.append([self.encode(k, f"{path}.key({k!r})", depth + 1), self.encode(v, f"{path}[{k!r}]", depth + 1)])
        return {"__dict__": pairs}


def _is_key(key: Any) -> bool:
    if key is None or isinstance(key, (bool, int, float, str)):
        return True
    return isinstance(key, tuple) and all(_is_key(k) for k in key)


def encode(
    value: Any, *, prefix: str = RESERVED_PREFIX + "state/", pack_threshold: int = 1024
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``value`` into a JSON-able tree and the tensors it references.

    Args:
        prefix: tensor names are ``prefix`` + a counter; the same tensor object is stored once.
        pack_threshold: lists/tuples of at least this many ints (or floats) are packed into a tensor.

    Raises:
        CheckpointError: for unsupported types, cycles or excessive nesting, naming the location.
    """
    encoder = _Encoder(prefix, max(1, pack_threshold))
    tree = encoder.encode(value, "<root>", 0)
    return tree, encoder.tensors


class _Decoder:
    def __init__(self, load_tensor: Callable[[str], torch.Tensor], prefix: str) -> None:
        self.load_tensor = load_tensor
        self.prefix = prefix
        self.cache: dict[str, torch.Tensor] = {}

    def tensor(self, name: Any, path: str) -> torch.Tensor:
        if not isinstance(name, str) or not name.startswith(self.prefix):
            raise CheckpointError(f"bad tensor reference {name!r} at {path}: expected a name under {self.prefix!r}")
        if name not in self.cache:
            try:
                tensor = self.load_tensor(name)
            except KeyError:
                raise CheckpointError(f"state refers to tensor {name!r} (at {path}), which the file lacks") from None
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f"state tensor {name!r} did not load as a tensor")
            self.cache[name] = tensor
        return self.cache[name]

    def decode(self, node: Any, path: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise CheckpointError(f"state nested deeper than {_MAX_DEPTH} levels at {path}")
        if node is None or isinstance(node, (bool, str)):
            return node
        if isinstance(node, int):
            return node
        if isinstance(node, float):
            if not math.isfinite(node):
                raise CheckpointError(f"bare non-finite float at {path}; expected a __float__ marker")
            return node
        if isinstance(node, list):
            return [self.decode(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node)]
        if not isinstance(node, dict):
            raise CheckpointError(f"unexpected {type(node).__name__} at {path} in encoded state")
        if len(node) == 1:
            (key, payload), = node.items()
            if _looks_like_marker(key):
                return self._marker(key, payload, path, depth)
        return {k: self.decode(v, f"{path}[{k!r}]", depth + 1) for k, v in node.items()}

    def _marker(self, key: str, payload: Any, path: str, depth: int) -> Any:
        if key == "__tuple__":
            if not isinstance(payload, list):
                raise CheckpointError(f"__tuple__ at {path} must hold a list, got {type(payload).__name__}")
            return tuple(self.decode(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(payload))
        if key == "__dict__":
            return self._pairs(payload, path, depth)
        if key == "__float__":
            if not isinstance(payload, str) or payload not in _NONFINITE:
                raise CheckpointError(f"__float__ at {path} must be one of {sorted(_NONFINITE)}, got {payload!r}")
            return _NONFINITE[payload]
        if key == "__tensor__":
            return self.tensor(payload, path)
        if key == "__array__":
            return self._array(payload, path)
        raise CheckpointError(f"unknown marker {key!r} at {path}; known markers: {list(_MARKERS)}")

    def _pairs(self, payload: Any, path: str, depth: int) -> dict[Any, Any]:
        if not isinstance(payload, list):
            raise CheckpointError(f"__dict__ at {path} must hold a list of [key, value] pairs")
        out: dict[Any, Any] = {}
        for i, pair in enumerate(payload):
            if not isinstance(pair, list) or len(pair) != 2:
                raise CheckpointError(f"__dict__ entry {i} at {path} is not a [key, value] pair")
            key = self.decode(pair[0], f"{path}.key[{i}]", depth + 1)
            if not _is_key(key):
                raise CheckpointError(f"__dict__ key {i} at {path} has unsupported type {type(key).__name__}")
            if key in out:
                raise CheckpointError(f"__dict__ at {path} repeats key {key!r}")
            out[key] = self.decode(pair[1], f"{path}[{key!r}]", depth + 1)
        return out

    def _array(self, payload: Any, path: str) -> list[Any] | tuple[Any, ...]:
        if (
            not isinstance(payload, list) or len(payload) != 3 or payload[1] not in ("int", "float")
            or payload[2] not in ("list", "tuple")
        ):
            raise CheckpointError(f"__array__ at {path} must be [name, 'int'|'float', 'list'|'tuple'], got {payload!r}")
        name, kind, container = payload
        tensor = self.tensor(name, path)
        expected = torch.int64 if kind == "int" else torch.float64
        if tensor.dtype != expected or tensor.dim() != 1:
            raise CheckpointError(
                f"packed array {name!r} at {path} must be a 1-D {expected} tensor, "
                f"got {tensor.dtype} of shape {tuple(tensor.shape)}"
            )
        items = tensor.tolist()
        return tuple(items) if container == "tuple" else items


def decode(
    tree: Any,
    tensors: Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor],
    *,
    prefix: str = RESERVED_PREFIX + "state/",
) -> Any:
    """Rebuild the value that :func:`encode` split into ``tree`` and ``tensors``.

    Args:
        tensors: the named tensors, or a function loading one by name (raising ``KeyError`` if absent);
            each name is loaded once, so repeated references give the same tensor object.

    Raises:
        CheckpointError: on any malformed node, unknown marker or missing tensor.
    """
    load = tensors.__getitem__ if isinstance(tensors, Mapping) else tensors
    try:
        return _Decoder(load, prefix).decode(tree, "<root>", 0)
    except RecursionError:
        raise CheckpointError("encoded state is nested too deeply") from None


def to_json(tree: Any) -> str:
    """Serialize an encoded tree to compact, strict JSON (no NaN/Infinity literals)."""
    return json.dumps(tree, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _reject_constant(name: str) -> Any:
    raise CheckpointError(f"invalid JSON constant {name!r} in stored state")


def from_json(text: str, what: str = "state") -> Any:
    """Parse strict JSON produced by :func:`to_json`.

    Raises:
        CheckpointError: naming ``what`` when the text is not valid JSON.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # ValueError also covers integers over 4300 digits
        raise CheckpointError(f"stored {what} is not valid JSON: {str(exc)[:200]}") from None
