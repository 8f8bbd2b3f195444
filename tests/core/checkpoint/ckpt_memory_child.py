"""Child process for the memory test: measures the peak anonymous RSS growth while restoring.

Anonymous RSS (``RssAnon``) counts heap memory such as tensor storage, but not the pages of the
memory-mapped checkpoint, which the kernel can drop at will. A sampling thread records the peak.
Prints one JSON line: sizes in MiB.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

import modeopt_core as mo
from modeopt_core.checkpoint import restore, save
from tests.core.toymodes import ToyPlugin

MIB = 1 << 20


def rss(field: str = "RssAnon") -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_growth(work: Callable[[], Any]) -> tuple[float, float, Any]:
    """Peak growth of anonymous and of total RSS (MiB) while ``work`` runs, and its result."""
    gc.collect()
    base_anon, base_total = rss(), rss("VmRSS")
    peak_anon, peak_total = base_anon, base_total
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_anon, peak_total
        while not stop.is_set():
            peak_anon, peak_total = max(peak_anon, rss()), max(peak_total, rss("VmRSS"))
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = work()
        peak_anon, peak_total = max(peak_anon, rss()), max(peak_total, rss("VmRSS"))
    finally:
        stop.set()
        sampler.join()
    return (peak_anon - base_anon) / MIB, (peak_total - base_total) / MIB, result


def build() -> nn.Module:
    return nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(20)])


def main() -> None:
    path = sys.argv[1]
    torch.set_num_threads(1)
    mo.register_plugin(ToyPlugin(), name="toy")
    torch.manual_seed(0)
    source = mo.apply_mode(build(), "toy_tag")
    save(source, path)
    expected = [p.detach()[0, :4].clone() for p in source.parameters() if p.dim() == 2]
    weights = sum(p.numel() * p.element_size() for p in source.parameters()) / MIB
    del source
    torch.manual_seed(1)
    fresh = build()
    restore_peak, restore_total, restored = peak_growth(lambda: restore(fresh, path))
    got = [p.detach()[0, :4] for p in restored.parameters() if p.dim() == 2]
    correct = all(torch.equal(a, b) for a, b in zip(expected, got)) and mo.applied_modes(restored) == ["toy_tag"]
    # Control: a loader holding a private copy of every tensor at once (as torch.load would).
    full_peak, _, _ = peak_growth(lambda: len({k: v.clone() for k, v in load_file(path).items()}))
    print(json.dumps({"weights_mib": weights, "restore_peak_mib": restore_peak, "restore_total_rss_mib": restore_total,
                      "full_copy_peak_mib": full_peak, "correct": correct}))


if __name__ == "__main__":
    main()
