"""The safetensors container shared by checkpoints and state files: write atomically, read defensively.

A container is a plain safetensors file whose ``__metadata__`` carries ``format``, ``format_version``
and a ``digest`` over every other metadata entry and every tensor (name, dtype, shape, bytes), so
that truncation, bit rot and edits are detected before anything is loaded. The header is parsed here
(not only by safetensors) to turn every structural problem into a one-line diagnosis.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ._atomic import atomic_path
from .errors import CheckpointError

__all__ = [
    "DIGEST_KEY",
    "FORMAT_KEY",
    "MAX_HEADER_BYTES",
    "VERSION_KEY",
    "Header",
    "TensorEntry",
    "TensorReader",
    "check_format",
    "parse_aliases",
    "prepare_tensors",
    "read_header",
    "verify_digest",
    "write_container",
]

FORMAT_KEY = "format"
VERSION_KEY = "format_version"
DIGEST_KEY = "digest"
#: safetensors refuses headers above 100 MB; stay clear of that with our own, clearer error.
MAX_HEADER_BYTES = 100_000_000
# SHA-256 is written: CPUs with SHA extensions hash it ~1.8x faster than BLAKE2b (measured 1.28 vs
# 0.71 GiB/s here), and the digest dominates save/restore time. BLAKE2b files (early v1) still verify.
_DIGEST_ALGO = "sha256"
_DIGEST_FACTORIES: dict[str, Callable[[], Any]] = {"sha256": hashlib.sha256, "blake2b-256": lambda: hashlib.blake2b(digest_size=32)}

_DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64", torch.complex64: "C64",
}
_CODE_SIZES = {code: torch.empty((), dtype=dt).element_size() for dt, code in _DTYPE_CODES.items()}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the file (absolute byte offsets)."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Header:
    """A parsed, structurally valid safetensors header."""

    path: Path
    file_size: int
    header_size: int
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]

    @property
    def data_bytes(self) -> int:
        return self.file_size - 8 - self.header_size


def prepare_tensors(named: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Make tensors storable: CPU, contiguous, no shared memory; exact duplicates become aliases.

    Returns:
        ``(tensors, aliases)``: tensors to write, and ``{alias_name: stored_name}`` for every name whose
        tensor is the very same view (same storage, offset, shape, stride, dtype) as an earlier one,
        e.g. tied weights. Tensors that overlap in memory in any other way are copied apart.
    """
    aliases: dict[str, str] = {}
    owner_of_view: dict[tuple[object, ...], str] = {}
    by_storage: dict[tuple[object, ...], list[str]] = defaultdict(list)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in named.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{name!r} is a {type(tensor).__name__}, not a tensor")
        if tensor.layout != torch.strided:
            raise CheckpointError(f"tensor {name!r} has layout {tensor.layout}; convert it with .to_dense()")
        if tensor.device.type == "meta":
            raise CheckpointError(f"tensor {name!r} is on the meta device and holds no data; materialize it first")
        if tensor.dtype not in _DTYPE_CODES:
            raise CheckpointError(
                f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot store; "
                f"supported: {sorted(str(d) for d in _DTYPE_CODES)}"
            )
        tensor = tensor.detach()
        if tensor.numel() == 0:
            out[name] = tensor.cpu().contiguous()
            continue
        storage_key = (tensor.device, tensor.untyped_storage().data_ptr())
        view_key = (*storage_key, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if view_key in owner_of_view:
            aliases[name] = owner_of_view[view_key]
            continue
        owner_of_view[view_key] = name
        by_storage[storage_key].append(name)
        out[name] = tensor
    for names in by_storage.values():
        shared = len(names) > 1
        for name in names:
            tensor = out[name]
            if tensor.device.type != "cpu":
                tensor = tensor.to("cpu")
            elif shared:
                tensor = tensor.clone(memory_format=torch.contiguous_format)
            out[name] = tensor.contiguous()
    return out, aliases


def _frame(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(8, "little") + raw


def _digest(
    metadata: Mapping[str, str],
    tensors: Iterable[tuple[str, str, tuple[int, ...], memoryview]],
    algo: str = _DIGEST_ALGO,
) -> str:
    h = _DIGEST_FACTORIES[algo]()
    for key in sorted(metadata):
        if key != DIGEST_KEY:
            h.update(_frame(key))
            h.update(_frame(metadata[key]))
    for name, code, shape, data in tensors:
        h.update(_frame(name))
        h.update(_frame(code))
        h.update(_frame(",".join(map(str, shape))))
        h.update(data.nbytes.to_bytes(8, "little"))
        h.update(data)
    return f"{algo}:{h.hexdigest()}"


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    # A zero-copy byte view of a contiguous CPU tensor (uint8 reinterpretation, then numpy's buffer).
    return tensor.reshape(-1).view(torch.uint8).numpy().data


def write_container(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Atomically write prepared tensors (see :func:`prepare_tensors`) and metadata, adding the digest."""
    metadata = dict(metadata)
    digest = _digest(
        metadata,
        ((n, _DTYPE_CODES[tensors[n].dtype], tuple(tensors[n].shape), _tensor_bytes(tensors[n])) for n in sorted(tensors)),
        _DIGEST_ALGO,
    )
    metadata[DIGEST_KEY] = digest
    estimate = len(json.dumps(metadata)) + sum(len(n) + 120 for n in tensors)
    if estimate > MAX_HEADER_BYTES:
        biggest = max(metadata, key=lambda k: len(metadata[k]))
        raise CheckpointError(
            f"checkpoint header would be ~{estimate / 1e6:.0f} MB (limit {MAX_HEADER_BYTES / 1e6:.0f} MB), mostly "
            f"{biggest!r}: keep large numeric state in tensors, not in Python lists/dicts"
        )
    target = Path(path)
    if not target.parent.is_dir():
        raise CheckpointError(f"cannot write {target}: directory {target.parent} does not exist")
    try:
        with atomic_path(target) as tmp:
            save_file(dict(tensors), str(tmp), metadata=metadata)
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot write {target}: {type(exc).__name__}: {exc}") from exc


def _bad(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: {why}")


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse and structurally validate the safetensors header of ``path`` (reads only the header).

    Raises:
        CheckpointError: missing, empty, truncated, or not a safetensors file.
    """
    p = Path(path)
    if not p.exists():
        raise _bad(p, "no such file")
    if not p.is_file():
        raise _bad(p, "not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise _bad(p, "empty file (0 bytes); an interrupted copy or a file that was never written")
    if size < 8:
        raise _bad(p, f"only {size} bytes; too short to be a safetensors file")
    with open(p, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise _bad(p, f"declared header length {n} does not fit in the {size}-byte file: truncated, or not a "
                          "safetensors file")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _bad(p, "header is not valid JSON: not a safetensors file, or corrupted") from None
    if not isinstance(header, dict):
        raise _bad(p, "header is not a JSON object: not a safetensors file")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _bad(p, "header __metadata__ is not a string-to-string map")
    data_start = 8 + n
    tensors: dict[str, TensorEntry] = {}
    for name, info in header.items():
        tensors[name] = _entry(p, name, info, data_start)
    spans = sorted((e.start, e.end, name) for name, e in tensors.items())
    cursor = data_start
    for start, end, name in spans:
        if start != cursor:
            raise _bad(p, f"tensor {name!r} starts at byte {start}, expected {cursor}: overlapping or gapped data")
        cursor = end
    if cursor > size:
        raise _bad(p, f"truncated: tensors need {cursor - data_start} data bytes but the file has {size - data_start}")
    if cursor < size:
        raise _bad(p, f"{size - cursor} unexpected trailing bytes after the tensor data: corrupted")
    return Header(p, size, n, metadata, tensors)


def _entry(p: Path, name: str, info: object, data_start: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise _bad(p, f"header entry {name!r} is not a tensor description")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if code not in _CODE_SIZES:
        raise _bad(p, f"tensor {name!r} has unsupported dtype {code!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _bad(p, f"tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
        raise _bad(p, f"tensor {name!r} has invalid data offsets {offsets!r}")
    begin, end = offsets
    if end - begin != prod(shape) * _CODE_SIZES[code]:
        raise _bad(p, f"tensor {name!r}: {end - begin} data bytes do not match dtype {code} and shape {shape}")
    return TensorEntry(code, tuple(shape), data_start + begin, data_start + end)


def check_format(header: Header, expected: str, supported_version: int, *, hint: str) -> int:
    """Check ``format`` and ``format_version`` of the header; return the version.

    Args:
        hint: what the caller should do with a foreign file (appended to that message).
    """
    fmt = header.metadata.get(FORMAT_KEY)
    if fmt is None:
        raise _bad(header.path, f"a safetensors file without modeopt metadata (made by another tool?); {hint}")
    if fmt != expected:
        kind = header.metadata.get("kind")
        what = f"a {fmt!r} file" + (f" of kind {kind!r}" if kind else "")
        raise _bad(header.path, f"{what}, not a {expected!r} file; {hint}")
    raw = header.metadata.get(VERSION_KEY, "")
    if not (raw.isascii() and raw.isdigit()):
        raise _bad(header.path, f"invalid {VERSION_KEY} {raw!r}; the file is corrupted")
    version = int(raw)
    if version > supported_version:
        lib = header.metadata.get("library_version", "?")
        raise _bad(
            header.path,
            f"written with {expected} format version {version} (modeopt {lib}); this modeopt reads versions "
            f"1..{supported_version}: upgrade modeopt-core",
        )
    if version < 1:
        raise _bad(header.path, f"invalid {VERSION_KEY} {version}; the file is corrupted")
    return version


def verify_digest(header: Header) -> None:
    """Re-hash the file (through a read-only memory map) and compare with the stored digest."""
    stored = header.metadata.get(DIGEST_KEY)
    if stored is None:
        raise _bad(header.path, f"no {DIGEST_KEY!r} in the header: not written by modeopt, or edited")
    algo = stored.split(":", 1)[0]
    if algo not in _DIGEST_FACTORIES or ":" not in stored:
        raise _bad(header.path, f"unknown digest algorithm in {stored[:40]!r}; expected one of {sorted(_DIGEST_FACTORIES)}")
    names = sorted(header.tensors)
    with open(header.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if len(mm) != header.file_size:
            raise _bad(header.path, "file changed while being read")
        view = memoryview(mm)
        try:
            actual = _digest(
                header.metadata,
                ((n, header.tensors[n].dtype, header.tensors[n].shape, view[header.tensors[n].start:header.tensors[n].end])
                 for n in names),
                algo,
            )
        finally:
            view.release()
    if actual != stored:
        raise _bad(header.path, "content digest mismatch: the file is corrupted or was modified after saving")


def parse_aliases(header: Header, text: str) -> dict[str, str]:
    """Parse an alias table ``{alias: stored_name}``; every target must be stored, no alias may be."""
    try:
        aliases = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise _bad(header.path, "alias table is not valid JSON") from None
    if not isinstance(aliases, dict):
        raise _bad(header.path, "alias table is not a JSON object")
    for alias, target in aliases.items():
        if not isinstance(target, str) or target not in header.tensors or alias in header.tensors:
            raise _bad(header.path, f"alias {alias!r} -> {target!r} does not point at a stored tensor")
    return aliases


class TensorReader:
    """Memory-mapped, tensor-by-tensor access to a checked container (a context manager).

    ``reader(name)`` returns the tensor stored under ``name`` or under the name it aliases; it raises
    ``KeyError`` for unknown names (what :func:`~modeopt_core._codec.decode` expects).
    """

    def __init__(self, header: Header, aliases: Mapping[str, str]) -> None:
        self.header = header
        self.aliases = dict(aliases)
        try:
            self._handle = safe_open(str(header.path), framework="pt", device="cpu")
            self._file = self._handle.__enter__()
        except (SafetensorError, OSError) as exc:
            raise _bad(header.path, f"safetensors cannot open it: {exc}") from exc

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.__exit__(None, None, None)

    def __call__(self, name: str) -> torch.Tensor:
        stored = self.aliases.get(name, name)
        if stored not in self.header.tensors:
            raise KeyError(name)
        try:
            return self._file.get_tensor(stored)
        except (SafetensorError, OSError) as exc:
            raise _bad(self.header.path, f"cannot read tensor {stored!r}: {exc}") from exc
