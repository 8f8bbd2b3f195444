"""The README's quickstart is real code: run it (in a temp dir) and check what it promises."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def _quickstart() -> str:
    text = README.read_text()
    section = text[text.index("## Quickstart") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README quickstart has no python block"
    return match.group(1)


def test_readme_quickstart_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict[str, object] = {}
        exec(compile(_quickstart(), "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    ratio, fresh_params = capsys.readouterr().out.split()
    assert float(ratio) <= 0.60
    original = sum(p.numel() for p in namespace["torchvision"].models.resnet18(num_classes=10).parameters())  # type: ignore[attr-defined]
    assert int(fresh_params) < original
    assert (tmp_path / "pruned.safetensors").is_file()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(namespace["fresh"].eval()(x), namespace["model"].eval()(x))  # type: ignore[attr-defined]
