"""Smoke tests of the benchmark scripts: each runs with ``--quick`` in a subprocess and prints a table.

The scripts' figures are not checked (they depend on the machine); the tables' structure, the
reproduce line and a few invariants that hold on any machine are.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parents[2]
BENCH = ROOT / "bench"
_RULE = re.compile(r"^\|(:?-+:?\|)+$")


def _load_common() -> ModuleType:
    name = "_modeopt_bench_common"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH / "_common.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text`` as rows of cells (header first, the rule line dropped)."""
    tables: list[list[list[str]]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if _RULE.match(line.strip()) and i > 0 and lines[i - 1].startswith("|"):
            rows = [lines[i - 1]]
            for follow in lines[i + 1:]:
                if not follow.startswith("|"):
                    break
                rows.append(follow)
            tables.append([[c.strip() for c in r.strip().strip("|").split("|")] for r in rows])
    return tables


def _run(script: str, *args: str, timeout: float = 300) -> tuple[str, list[list[list[str]]]]:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    assert re.search(r"^machine: \d+ cores .*CPU probe [\d.]+ ms$", out, re.M), out
    expected = " ".join([".venv/bin/python", f"bench/{script}", "--quick", *args])
    assert f"reproduce: {expected}" in out, out
    tables = _tables(out)
    assert tables, f"{script} printed no markdown table:\n{out}"
    for table in tables:
        assert len(table) >= 2 and all(len(row) == len(table[0]) for row in table), table
    return out, tables


def _column(table: list[list[str]], name: str) -> list[str]:
    return [row[table[0].index(name)] for row in table[1:]]


def test_markdown_table_layout() -> None:
    common = _load_common()
    text = common.markdown_table(["name", "value"], [["a", 1], ["bbbb", 22.5]])
    assert text.splitlines() == [
        "| name | value |",
        "|:-----|------:|",
        "| a    |     1 |",
        "| bbbb |  22.5 |",
    ]
    assert _tables(text) == [[["name", "value"], ["a", "1"], ["bbbb", "22.5"]]]


def test_measure_counts_and_orders_runs() -> None:
    common = _load_common()
    calls: list[str] = []
    timing = common.measure(lambda: calls.append("x"), runs=4, warmup=2)
    assert len(calls) == 6 and len(timing.wall) == len(timing.cpu) == 4
    assert timing.best <= timing.median
    calls.clear()
    timings = common.measure_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, 0)
    assert calls == ["a", "b", "b", "a"]  # who goes first alternates
    assert set(timings) == {"a", "b"} and all(len(t.wall) == 2 for t in timings.values())


def test_convert_time() -> None:
    _, (table,) = _run("convert_time.py")
    assert {(r[0], r[2]) for r in table[1:]} >= {("resnet18", "autonas"), ("resnet18", "fastnas")}
    assert all(int(h) > 0 for h in _column(table, "hparams"))
    assert all(float(ms) > 0 for ms in _column(table, "convert ms (median)"))


def test_checkpoints() -> None:
    out, (table, ratio) = _run("checkpoints.py")
    ops = _column(table, "operation")
    assert {"modeopt save", "modeopt restore", "torch.save", "torch.load"} <= set(ops)
    assert all(size.endswith(("KiB", "MiB", "GiB")) for size in _column(table, "file"))
    assert _column(ratio, "operation")[:3] == ["torch.save", "modeopt save", "modeopt save durable"]
    assert _column(ratio, "vs torch.save / torch.load")[0] == "1.00x"
    assert re.search(r"modeopt save / torch.save = [\d.]+ \(target <= 1.2\)", out), out


@pytest.mark.slow
def test_exported_speed() -> None:
    _, (table,) = _run("exported_speed.py")
    variants = _column(table, "variant")
    assert {"original", "fastnas @ max", "autonas @ max"} <= set(variants)
    assert any(v.endswith("exported") for v in variants)
    for variant, flops in zip(variants, _column(table, "FLOPs")):
        if variant.endswith("exported"):
            assert float(flops.rstrip("%")) < 100.0, (variant, flops)


@pytest.mark.slow
def test_search_time(tmp_path: Path) -> None:
    out, tables = _run("search_time.py", "--cache", str(tmp_path))
    fastnas, autonas = tables
    assert [r[0].split()[0] for r in fastnas[1:]] == ["digits", "resnet18"]
    assert all(int(n) > 0 for n in _column(fastnas, "score evals"))
    assert all(int(n) >= 1 for n in _column(autonas, "iterations"))
    assert "bench/fastnas_resnet18.py output" in out


@pytest.mark.slow
def test_quality(tmp_path: Path) -> None:
    _, (table,) = _run("quality.py", "--cache", str(tmp_path))
    names = _column(table, "model")
    assert names[0] == "baseline" and any(n.startswith("FastNAS 50%") for n in names)
    pruned = [float(f.rstrip("%")) for n, f in zip(names, _column(table, "FLOPs kept")) if n.startswith("FastNAS")]
    assert pruned and all(f <= 50.0 for f in pruned)


def test_checkpoint_stress() -> None:
    out, tables = _run("checkpoint_stress.py")
    files, kills, races = tables
    assert "failures (untyped errors, mixed or damaged files, changed models): 0" in out
    assert sum(int(n) for n in _column(files, "count")) >= 20
    assert any(o.startswith("crafted: refused") for o in _column(files, "outcome"))
    assert "file restores to one complete save" in _column(kills, "outcome")
    assert "one complete save" in _column(races, "outcome")


def test_latency(tmp_path: Path) -> None:
    """The latency bench on the digits CNN only (its ResNet-18 part runs the same code at a larger size)."""
    out, (table, pruned) = _run("latency.py", "--models", "digits", "--plots", str(tmp_path))
    assert _column(table, "model") == ["digits CNN 32x1x8x8"]
    assert int(_column(table, "layer calls")[0]) > 0 and float(_column(table, "build s (empty cache)")[0]) > 0
    variants = _column(pruned, "variant")
    assert variants[0] == "original" and "flops 60%" in variants
    assert all(float(ms) > 0 for ms in _column(pruned, "measured ms"))
    # on a heavily loaded machine the measured table can make the budget look unreachable: that is reported
    assert "latency 60%" in variants or "the latency search failed" in out
    assert "latency 60%" not in variants or ("prediction error" in out and (tmp_path / "latency-digits.png").exists())
    assert "latency 60%" not in variants or "the search's own check:" in out  # its measured check is printed


def test_distill_digits() -> None:
    out, (table,) = _run("distill_digits.py")
    assert table[0][:2] == ["seed", "FLOPs kept"] and [r[0] for r in table[1:]] == ["0", "median"]
    assert float(table[1][1].rstrip("%")) <= 30.0  # pruned to the 30% budget
    plain, kd, diff = (float(table[-1][table[0].index(c)]) for c in ("fine-tune 1 ep", "kd_loss 1 ep",
                                                                        "kd - fine-tune"))
    assert diff == pytest.approx(kd - plain, abs=0.011)
    assert re.search(r"^median of 1 seed\(s\): fine-tune [\d.]+%, kd_loss [\d.]+%, difference [+-][\d.]+ points", out,
                     re.M), out
    assert '"temperature"' in out  # the distillation config it used


@pytest.mark.slow
def test_vs_modelopt_runs_without_modelopt(tmp_path: Path) -> None:
    # a path that does not exist: only our figures (ModelOpt is never installed in the test venv)
    out, tables = _run("vs_modelopt.py", "--cache", str(tmp_path), "--modelopt-python", str(tmp_path / "none"),
                       "--parts", "digits,resnet18,import,load", "--ours", "defaults,activation", "--finetune",
                       "--finetune-shuffles", "2", timeout=900)
    digits, resnet, imports, load = tables
    assert _column(digits, "library") == ["modeopt", "modeopt (activation)"]
    assert all(float(v.rstrip("%")) <= 50.0 for v in _column(digits, "FLOPs kept"))
    # two fine-tunes per result: their median and range
    assert all(re.fullmatch(r"[\d.]+ \([\d.]+-[\d.]+\)", v) for v in _column(digits, "after fine-tune"))
    assert re.search(r"^baseline after the same fine-tune: [\d.]+ \([\d.]+-[\d.]+\)$", out, re.M)
    assert _column(resnet, "library") == ["modeopt"] and int(_column(resnet, "score evals")[0]) > 0
    assert _column(imports, "statement") == [
        "import modeopt_core, modeopt_fastnas", "from modeopt_fastnas import prune, AccuracyScore",
        "... + mo.get_mode('fastnas') (all a prune imports)"]
    assert all(float(v) > 0 for v in _column(imports, "s"))
    assert float(_column(load, "ratio")[0]) > 0
    assert "downstream evaluations" in out


@pytest.mark.slow
def test_transformers_prune() -> None:
    out, (llama, gpt2) = _run("transformers_prune.py")
    assert "llama pruned: hidden" in out
    assert _column(llama, "budget") == ["params 50%"] and float(_column(llama, "params kept")[0].rstrip("%")) <= 50.0
    assert int(_column(llama, "score evals")[0]) > 0 and float(_column(llama, "exported latency ratio")[0]) > 0
    assert float(_column(gpt2, "convert s (median)")[0]) > 0 and float(_column(gpt2, "forward ratio")[0]) > 0
