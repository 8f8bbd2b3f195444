"""Importing modeopt and FastNAS pulls in no optional package; torchvision ops still work once imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Imported by `import torch` itself on some builds; never by modeopt.
_HEAVY = ("torchvision", "torch._dynamo", "triton", "sklearn", "matplotlib", "transformers", "timm", "tqdm")


def _modules_after(code: str) -> dict[str, bool]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {list(_HEAVY)!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import modeopt_core, modeopt_fastnas",
        "import modeopt_autonas.space",
        "import modeopt_core.sdk, modeopt_core.distributed",
        "from modeopt_fastnas import prune, BinarySearcher, AccuracyScore, OutputAgreement",
    ],
)
def test_import_pulls_in_no_optional_package(code: str) -> None:
    baseline = _modules_after("import torch")
    loaded = _modules_after(code)
    extra = sorted(m for m, present in loaded.items() if present and not baseline[m])
    assert extra == [], f"`{code}` imports {extra}; import them lazily where a model or call needs them"


def test_stochastic_depth_is_known_once_torchvision_is_imported_after_modeopt() -> None:
    # torchvision imported after the analysis tables were built: the lazy registration must still see it
    code = """
import torch
from torch import nn
from modeopt_autonas.space import analyze
from torchvision.ops import StochasticDepth

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.drop = StochasticDepth(0.2, "row")
        self.b = nn.Conv2d(8, 4, 1)
    def forward(self, x):
        y = self.a(x)
        return self.b(y + self.drop(y))

report = analyze(Net()).report
print(report.group_of("a.out").searchable)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "True"
