"""``modeopt inspect CKPT``: what a checkpoint holds and whether it is intact, without loading weights."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._cli_output import flatten, format_bytes, format_pairs, print_json, summarise, wrap_pairs
from .errors import ModeoptError

if TYPE_CHECKING:
    from .checkpoint import CheckpointInfo

__all__ = ["configure", "run", "selected_subnets"]

_log = logging.getLogger(__name__)

#: metadata keys under which a mode records the subnet it selected
_SUBNET_KEYS = ("subnet", "subnet_config")


def _plain(node: Any) -> Any:
    """The header's encoded JSON made readable: markers become lists/placeholders (no tensor is loaded)."""
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, dict):
        if len(node) == 1:
            (key, payload), = node.items()
            if key == "__tuple__" and isinstance(payload, list):
                return [_plain(v) for v in payload]
            if key == "__dict__" and isinstance(payload, list):
                return {str(_plain(p[0])): _plain(p[1]) for p in payload if isinstance(p, list) and len(p) == 2}
            if key == "__float__":
                return payload
            if key in ("__tensor__", "__array__"):
                return "<tensor>"
        return {str(k): _plain(v) for k, v in node.items()}
    return node


def selected_subnets(path: str) -> list[dict[str, Any] | None]:
    """Per recorded mode, the subnet in its metadata (key ``subnet`` or ``subnet_config``), else None.

    Reads only the header's JSON (the file was already checked by ``inspect_checkpoint``).
    """
    from safetensors import safe_open

    from ._codec import from_json

    with safe_open(path, framework="pt") as handle:
        header = handle.metadata() or {}
    state = from_json(header.get("state", "{}"))
    out: list[dict[str, Any] | None] = []
    for entry in state.get("modes", []) if isinstance(state, dict) else []:
        metadata = _plain(entry.get("metadata")) if isinstance(entry, dict) else None
        subnet = None
        if isinstance(metadata, Mapping):
            subnet = next((metadata[k] for k in _SUBNET_KEYS if isinstance(metadata.get(k), Mapping)), None)
        out.append(dict(subnet) if subnet is not None else None)
    return out


def _subnets_or_empty(info: CheckpointInfo) -> list[dict[str, Any] | None]:
    try:
        subnets = selected_subnets(info.path)
    except Exception as exc:  # the subnet is a nicety; the integrity verdict stands without it
        _log.debug("could not read the subnet from %s: %s", info.path, exc)
        return [None] * len(info.modes)
    return subnets if len(subnets) == len(info.modes) else [None] * len(info.modes)


def _print_text(info: CheckpointInfo, subnets: list[dict[str, Any] | None]) -> None:
    out = sys.stdout
    rows = [
        ("checkpoint", f"{info.path} ({format_bytes(info.file_bytes)}, {'intact' if info.intact else 'DAMAGED'})"),
        ("format", f"modeopt format v{info.format_version}, written by modeopt-core {info.library_version}"),
        ("model", info.model_class or "?"),
        ("tensors", f"{info.num_tensors} stored"
         + (f" (+{info.num_aliases} tied aliases)" if info.num_aliases else "")
         + f", {format_bytes(info.tensor_bytes)} of tensor data"),
        ("modes", " -> ".join(name for name, _ in info.modes) if info.modes else "none (plain weights)"),
    ]
    for label, value in rows:
        out.write(f"{label:<12}{value}\n")
    for i, ((name, config), subnet) in enumerate(zip(info.modes, subnets), start=1):
        dist, version = info.plugin_versions.get(name, ("?", ""))
        origin = "registered explicitly" if dist == "<unregistered>" else f"{dist} {version}".strip()
        out.write(f"  {i}. {name}  [{origin}]\n")
        out.write(wrap_pairs(summarise(config), "       ", "config: ") + "\n")
        if subnet is not None:
            out.write(wrap_pairs(format_pairs(flatten(subnet)), "       ", "subnet: ") + "\n")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``modeopt inspect``."""
    parser.add_argument("checkpoint", metavar="CKPT", help="a file written by modeopt_core.save()")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    """Describe the checkpoint; exit status 1 (and a one-line diagnosis on stderr) unless it is intact."""
    from .checkpoint import inspect_checkpoint  # imported here so a broken import cannot take down other commands

    try:
        info = inspect_checkpoint(args.checkpoint)
    except (ModeoptError, OSError) as exc:
        diagnosis = str(exc).replace("\n", " ")
        if args.json:
            print_json({"path": str(args.checkpoint), "intact": False, "diagnosis": diagnosis}, sys.stdout)
        sys.stderr.write(f"modeopt inspect: error: {diagnosis}\n")
        return 1
    subnets: list[dict[str, Any] | None] = _subnets_or_empty(info) if info.intact else [None] * len(info.modes)
    if args.json:
        data = info.as_dict()
        for entry, subnet in zip(data["modes"], subnets):
            entry["subnet"] = subnet
        print_json(data, sys.stdout)
    elif info.intact:
        _print_text(info, subnets)
    if not info.intact:
        diagnosis = (info.diagnosis or "the file is damaged").replace("\n", " ")
        sys.stderr.write(f"modeopt inspect: error: {diagnosis}\n")
        return 1
    return 0
