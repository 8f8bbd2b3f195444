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


def recorded_metadata(path: str) -> list[Any]:
    """Per recorded mode, its metadata as plain JSON (tensors shown as ``"<tensor>"``, none loaded).

    Reads only the header's JSON (the file was already checked by ``inspect_checkpoint``).
    """
    from safetensors import safe_open

    from ._codec import from_json

    with safe_open(path, framework="pt") as handle:
        header = handle.metadata() or {}
    state = from_json(header.get("state", "{}"))
    return [
        _plain(entry.get("metadata")) if isinstance(entry, dict) else None
        for entry in (state.get("modes", []) if isinstance(state, dict) else [])
    ]


def selected_subnets(path: str) -> list[dict[str, Any] | None]:
    """Per recorded mode, the subnet in its metadata (key ``subnet`` or ``subnet_config``), else None."""
    out: list[dict[str, Any] | None] = []
    for metadata in recorded_metadata(path):
        subnet = None
        if isinstance(metadata, Mapping):
            subnet = next((metadata[k] for k in _SUBNET_KEYS if isinstance(metadata.get(k), Mapping)), None)
        out.append(dict(subnet) if subnet is not None else None)
    return out


def _summary(name: str, config: dict[str, Any], metadata: Any) -> str | None:
    """The mode plugin's one-line summary (``modeopt_summarize_metadata``), None without its plugin."""
    from .plugins import get_plugin_manager
    from .registry import get_mode, list_modes

    if name not in list_modes() or not isinstance(metadata, Mapping):
        return None
    text = get_plugin_manager().hook.modeopt_summarize_metadata(mode=get_mode(name), config=config, metadata=metadata)
    return str(text).replace("\n", " ") if text else None


def _details(info: CheckpointInfo) -> tuple[list[dict[str, Any] | None], list[str | None]]:
    """Per mode, its subnet and its plugin's summary (both best effort: the integrity verdict stands alone)."""
    empty: list[Any] = [None] * len(info.modes)
    try:
        metadata = recorded_metadata(info.path)
        subnets = selected_subnets(info.path)
    except Exception as exc:
        _log.debug("could not read the recorded metadata of %s: %s", info.path, exc)
        return empty, list(empty)
    if len(metadata) != len(info.modes):
        return empty, list(empty)
    summaries: list[str | None] = []
    for (name, config), meta in zip(info.modes, metadata):
        try:
            summaries.append(_summary(name, config, meta))
        except Exception as exc:  # a plugin's summary must not break inspect
            _log.debug("summary of mode %r failed: %s", name, exc)
            summaries.append(None)
    return subnets, summaries


def _print_text(info: CheckpointInfo, subnets: list[dict[str, Any] | None], summaries: list[str | None]) -> None:
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
    for i, ((name, config), subnet, summary) in enumerate(zip(info.modes, subnets, summaries), start=1):
        dist, version = info.plugin_versions.get(name, ("?", ""))
        origin = "registered explicitly" if dist == "<unregistered>" else f"{dist} {version}".strip()
        out.write(f"  {i}. {name}  [{origin}]\n")
        if summary:
            out.write(f"       summary: {summary}\n")
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
    subnets: list[dict[str, Any] | None] = [None] * len(info.modes)
    summaries: list[str | None] = [None] * len(info.modes)
    if info.intact:
        subnets, summaries = _details(info)
    if args.json:
        data = info.as_dict()
        for entry, subnet, summary in zip(data["modes"], subnets, summaries):
            entry["subnet"] = subnet
            entry["summary"] = summary
        print_json(data, sys.stdout)
    elif info.intact:
        _print_text(info, subnets, summaries)
    if not info.intact:
        diagnosis = (info.diagnosis or "the file is damaged").replace("\n", " ")
        sys.stderr.write(f"modeopt inspect: error: {diagnosis}\n")
        return 1
    return 0
