"""A deterministic latency "timer" for tests: it runs the call and charges a fixed cost per aten op.

Convolutions and matmuls cost their multiply-accumulates (times 3 when the output channels are not a
multiple of 8, the way a vector unit leaves lanes empty), batch norms their elements, everything else
(activations, additions, pooling, views) nothing, plus a constant per timed call. A whole forward
pass therefore costs exactly the sum of its layers' costs plus one constant, so a latency table built
with this timer must predict every subnet's "latency" exactly, and a narrower layer can be slower.

With ``activation_element_s`` > 0, ReLUs cost that much per element: a cost between the searchable
layers that grows with the widths but not as the layers' sum does, so the calibrated prediction is
close to the measurement but not exact (as on real hardware).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
CALL_OVERHEAD_S = 5e-6
SECONDS_PER_MAC = 1e-9
SECONDS_PER_NORM_ELEMENT = 2e-9
MISALIGNED_PENALTY = 3.0


def _conv_cost(out: torch.Tensor, weight: torch.Tensor, transposed: bool, groups: int) -> float:
    out_channels = weight.shape[1] * groups if transposed else weight.shape[0]
    per_output = (weight.shape[0] // groups if transposed else weight.shape[1]) * math.prod(weight.shape[2:])
    macs = out.numel() * per_output
    return macs * SECONDS_PER_MAC * (MISALIGNED_PENALTY if out_channels % 8 else 1.0)


class _Charge(TorchDispatchMode):
    def __init__(self, activation_element_s: float = 0.0) -> None:
        super().__init__()
        self.activation_element_s = activation_element_s
        self.seconds = 0.0
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        # Under torch.inference_mode the mode sees the high-level ops (conv2d, linear, batch_norm),
        # otherwise their decompositions (convolution, addmm, native_batch_norm): either, never both.
        if packet is aten.convolution:
            self.seconds += _conv_cost(out, args[1], bool(args[6]), int(args[8]))
        elif packet in (aten.conv1d, aten.conv2d, aten.conv3d):
            self.seconds += _conv_cost(out, args[1], False, int(args[6]) if len(args) > 6 else 1)
        elif packet in (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d):
            self.seconds += _conv_cost(out, args[1], True, int(args[6]) if len(args) > 6 else 1)
        elif packet in (aten.addmm, aten.mm, aten.linear):
            if packet is aten.linear:
                rows, inner, cols = out.numel() // out.shape[-1], args[1].shape[1], args[1].shape[0]
            else:
                a, b = (args[1], args[2]) if packet is aten.addmm else (args[0], args[1])
                rows, inner, cols = a.shape[0], a.shape[1], b.shape[1]
            self.seconds += rows * inner * cols * SECONDS_PER_MAC * (MISALIGNED_PENALTY if cols % 8 else 1.0)
        elif packet in (aten.batch_norm, aten._native_batch_norm_legit_no_training, aten.native_batch_norm,
                        aten._native_batch_norm_legit, aten.layer_norm, aten.native_layer_norm, aten.group_norm,
                        aten.native_group_norm):
            self.seconds += args[0].numel() * SECONDS_PER_NORM_ELEMENT
        elif packet in (aten.relu, aten.relu_):
            self.seconds += out.numel() * self.activation_element_s
        self.ops.append(str(packet))
        return out


class OpCostTimer:
    """``timer(fn) -> seconds`` with the costs of the module doc; counts its calls.

    ``overhead_s`` is charged once per call: with a fixed number of layers it becomes the offset of
    the calibration; with elastic depth (a varying number of layers) use 0 to keep the sum exact.
    """

    def __init__(self, overhead_s: float = CALL_OVERHEAD_S, activation_element_s: float = 0.0) -> None:
        self.calls = 0
        self.overhead_s = overhead_s
        self.activation_element_s = activation_element_s

    def __call__(self, fn: Callable[[], Any]) -> float:
        self.calls += 1
        charge = _Charge(self.activation_element_s)
        with charge:
            fn()
        return charge.seconds + self.overhead_s
