"""The container format: a safetensors file whose header carries modeopt metadata and a content digest.

This module knows the bytes: parsing and checking a header (from bytes already read), the digest,
and making tensors storable. Opening files is :mod:`._reader`'s job, writing them :mod:`._writer`'s.
See ``docs/checkpoint-format.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

__all__ = [
    "DIGEST_KEY",
    "FORMAT_KEY",
    "MAX_HEADER_BYTES",
    "VERSION_KEY",
    "Header",
    "TensorEntry",
    "bad",
    "check_format",
    "digest_algorithm",
    "digest_placeholder",
    "dtype_code",
    "feed_digest",
    "new_digest",
    "parse_aliases",
    "parse_header",
    "prepare_tensors",
    "same_file_identity",
    "tensor_bytes",
    "torch_dtype",
    "written_algorithm",
]

FORMAT_KEY = "format"
VERSION_KEY = "format_version"
DIGEST_KEY = "digest"
#: safetensors refuses headers above 100 MB; stay clear of that with our own, clearer error.
MAX_HEADER_BYTES = 100_000_000
# SHA-256 is written: CPUs with SHA extensions hash it ~1.8x faster than BLAKE2b (measured 1.28 vs
# 0.71 GiB/s here). BLAKE2b files (early v1) still verify.
_DIGEST_ALGO = "sha256"
_DIGEST_FACTORIES: dict[str, Callable[[], Any]] = {"sha256": hashlib.sha256, "blake2b-256": lambda: hashlib.blake2b(digest_size=32)}
_HEX_LENGTH = 64  # both algorithms give 32 bytes
#: an element count no real tensor reaches; bounds forged shapes before any arithmetic on them
_MAX_ELEMENTS = 2**62

_DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64", torch.complex64: "C64",
}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}
_CODE_SIZES = {code: torch.empty((), dtype=dt).element_size() for dt, code in _DTYPE_CODES.items()}


def bad(path: Path | str, why: str) -> CheckpointError:
    """A CheckpointError that names the file."""
    return CheckpointError(f"{path}: {why}")


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype (``F32``); KeyError for dtypes safetensors cannot store."""
    return _DTYPE_CODES[dtype]


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a (validated) safetensors dtype code."""
    return _CODE_DTYPES[code]


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


# --------------------------------------------------------------------------- tensors for writing
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


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a contiguous CPU tensor (uint8 reinterpretation, then numpy's buffer)."""
    if tensor.numel() == 0:
        return memoryview(b"")
    return tensor.reshape(-1).view(torch.uint8).numpy().data


# --------------------------------------------------------------------------- digest
def _frame(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(8, "little") + raw


def new_digest(metadata: Mapping[str, str], algo: str = _DIGEST_ALGO) -> Any:
    """A hash object already fed with the metadata part (every key but ``digest``, sorted)."""
    h = _DIGEST_FACTORIES[algo]()
    for key in sorted(metadata):
        if key != DIGEST_KEY:
            h.update(_frame(key))
            h.update(_frame(metadata[key]))
    return h


def feed_digest(h: Any, tensors: Iterable[tuple[str, str, tuple[int, ...], memoryview]]) -> None:
    """Feed ``(name, dtype code, shape, bytes)`` of each tensor, in name order, to ``h``."""
    for name, code, shape, data in tensors:
        h.update(_frame(name))
        h.update(_frame(code))
        h.update(_frame(",".join(map(str, shape))))
        h.update(data.nbytes.to_bytes(8, "little"))
        h.update(data)


def digest_algorithm(header: Header) -> str:
    """The algorithm of the stored digest (checked to be known and well-formed)."""
    stored = header.metadata.get(DIGEST_KEY)
    if stored is None:
        raise bad(header.path, f"no {DIGEST_KEY!r} in the header: not written by modeopt, or edited")
    algo, sep, hexdigest = stored.partition(":")
    if not sep or algo not in _DIGEST_FACTORIES:
        raise bad(header.path, f"unknown digest algorithm in {stored[:40]!r}; expected one of {sorted(_DIGEST_FACTORIES)}")
    if len(hexdigest) != _HEX_LENGTH or any(c not in "0123456789abcdef" for c in hexdigest):
        raise bad(header.path, f"malformed digest {stored[:80]!r}: expected {_HEX_LENGTH} lowercase hex digits")
    return algo


def digest_placeholder(algo: str = _DIGEST_ALGO) -> str:
    """A digest string of the final length, written first and overwritten once the hash is known."""
    return f"{algo}:" + "0" * _HEX_LENGTH


def written_algorithm() -> str:
    """The digest algorithm new files use."""
    return _DIGEST_ALGO


# --------------------------------------------------------------------------- header parsing
def _json_object(p: Path, raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: bad JSON, ints over 4300 digits
        raise bad(p, f"{what} is not valid JSON: not a safetensors file, or corrupted") from None


def parse_header(p: Path, prefix: bytes, size: int, read: Callable[[int, int], bytes]) -> Header:
    """Parse and structurally validate a safetensors header.

    Args:
        prefix: the file's first 8 bytes; ``size``: the file size; ``read(start, end)``: bytes of the
            same (already opened) file, so the header comes from the very file being read.

    Raises:
        CheckpointError: truncated, or not a safetensors file.
    """
    if size == 0:
        raise bad(p, "empty file (0 bytes); an interrupted copy or a file that was never written")
    if size < 8:
        raise bad(p, f"only {size} bytes; too short to be a safetensors file")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise bad(p, f"declared header length {n} does not fit in the {size}-byte file: truncated, or not a "
                     "safetensors file")
    header = _json_object(p, read(8, 8 + n), "header")
    if not isinstance(header, dict):
        raise bad(p, "header is not a JSON object: not a safetensors file")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad(p, "header __metadata__ is not a string-to-string map")
    data_start = 8 + n
    tensors = {name: _entry(p, name, info, data_start, size) for name, info in header.items()}
    spans = sorted((e.start, e.end, name) for name, e in tensors.items())
    cursor = data_start
    for start, end, name in spans:
        if start != cursor:
            raise bad(p, f"tensor {name!r} starts at byte {start}, expected {cursor}: overlapping or gapped data")
        cursor = end
    if cursor < size:
        raise bad(p, f"{size - cursor} unexpected trailing bytes after the tensor data: corrupted")
    return Header(p, size, n, metadata, tensors)


def _entry(p: Path, name: str, info: object, data_start: int, size: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise bad(p, f"header entry {name!r} is not a tensor description")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(code, str) or code not in _CODE_SIZES:
        raise bad(p, f"tensor {name!r} has unsupported dtype {str(code)[:40]!r}")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= _MAX_ELEMENTS for d in shape):
        raise bad(p, f"tensor {name!r} has an invalid shape {str(shape)[:80]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and 0 <= o <= size for o in offsets)):
        raise bad(p, f"tensor {name!r} has invalid data offsets {str(offsets)[:80]}")
    begin, end = offsets
    count = prod(shape)
    if count > _MAX_ELEMENTS or end - begin != count * _CODE_SIZES[code]:
        raise bad(p, f"tensor {name!r}: {end - begin} data bytes do not match dtype {code} and shape {shape}")
    if data_start + end > size:
        raise bad(p, f"truncated: tensor {name!r} ends at byte {data_start + end} of a {size}-byte file")
    return TensorEntry(code, tuple(shape), data_start + begin, data_start + end)


def check_format(header: Header, expected: str, supported_version: int, *, hint: str) -> int:
    """Check ``format`` and ``format_version`` of the header; return the version.

    Args:
        hint: what the caller should do with a foreign file (appended to that message).
    """
    fmt = header.metadata.get(FORMAT_KEY)
    if fmt is None:
        raise bad(header.path, f"a safetensors file without modeopt metadata (made by another tool?); {hint}")
    if fmt != expected:
        kind = header.metadata.get("kind")
        what = f"a {fmt[:60]!r} file" + (f" of kind {kind[:60]!r}" if kind else "")
        raise bad(header.path, f"{what}, not a {expected!r} file; {hint}")
    raw = header.metadata.get(VERSION_KEY, "")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6):
        raise bad(header.path, f"invalid {VERSION_KEY} {raw[:20]!r}; the file is corrupted")
    version = int(raw)
    if version > supported_version:
        lib = header.metadata.get("library_version", "?")[:40]
        raise bad(
            header.path,
            f"written with {expected} format version {version} (modeopt {lib!r}); this modeopt reads versions "
            f"1..{supported_version}: upgrade modeopt-core",
        )
    if version < 1:
        raise bad(header.path, f"invalid {VERSION_KEY} {version}; the file is corrupted")
    return version


def parse_aliases(header: Header, text: str) -> dict[str, str]:
    """Parse an alias table ``{alias: stored_name}``; every target must be stored, no alias may be."""
    try:
        aliases = json.loads(text)
    except (ValueError, RecursionError):
        raise bad(header.path, "alias table is not valid JSON") from None
    if not isinstance(aliases, dict):
        raise bad(header.path, "alias table is not a JSON object")
    for alias, target in aliases.items():
        if not isinstance(target, str) or target not in header.tensors or alias in header.tensors:
            raise bad(header.path, f"alias {alias[:80]!r} -> {str(target)[:80]!r} does not point at a stored tensor")
    return aliases


def same_file_identity(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two ``fstat`` results describe the same file with unmodified content.

    Not the change time nor the link count: both change when a writer renames a new file over this
    one (the old inode loses its name), which leaves the content that is being read intact.
    """
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_mtime_ns)
