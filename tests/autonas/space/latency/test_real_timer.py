"""One smoke test with the real wall-clock timer (no timing is asserted, only that it works end to end)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

import modeopt_core as mo
from modeopt_autonas.space import LatencyModel, get_search_space
from tests.fastnas._models import INPUT_SHAPE, tiny_cnn


def test_real_timer_builds_predicts_and_reuses(tmp_path: Path) -> None:
    space = get_search_space(mo.apply_mode(tiny_cnn(), ["fastnas"]))
    x = torch.randn(INPUT_SHAPE)
    options = {"cache_dir": tmp_path, "runs": 3, "warmup": 1, "calibration_runs": 3, "report_runs": 3}
    model = LatencyModel.build(space, x, **options)
    assert model.stats["context"]["timer"] == "modeopt_core.latency.WallClockTimer"
    assert model.stats["measured"] == model.stats["variants"] > 0
    assert Path(model.stats["cache_file"]).is_file()
    small = space.sample("min")
    space.sample("max")
    for config in (None, small):
        value = model.latency(config)
        assert math.isfinite(value) and value > 0
    assert all(math.isfinite(v) and v >= 0 for row in model.rows() for v in row["ms"].values())
    report = model.report(small)
    assert report["measured_before"] > 0 and report["measured_after"] > 0 and math.isfinite(report["error"])
    again = LatencyModel.build(space, x, **options)
    assert again.stats["measured"] == 0 and not again.stats["calibrated"]
    assert again.latency(small) == model.latency(small)
