"""Dynamic convolutions (1/2/3-d, transposed, grouped, depthwise) with elastic width and kernel size."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from ..hparam import Hparam
from .base import DimBinding, DynamicModule, attr_view, param_view

__all__ = [
    "DynamicConv1d",
    "DynamicConv2d",
    "DynamicConv3d",
    "DynamicConvTranspose1d",
    "DynamicConvTranspose2d",
    "DynamicConvTranspose3d",
    "kernel_size_choices",
]


def kernel_size_choices(conv: nn.modules.conv._ConvNd, wanted: Iterable[int]) -> tuple[list[int], str]:
    """The kernel sizes in ``wanted`` that ``conv`` can run with its output size unchanged.

    A smaller kernel is the centred crop of the original one, with padding reduced by
    ``dilation * (K - k) / 2`` per side. Returns the valid sizes (always including the original) and,
    when some were dropped or the kernel cannot change, the reason.
    """
    ks = tuple(conv.kernel_size)
    if len(set(ks)) != 1:
        return [], f"non-square kernel {ks} (kernel-size search needs equal kernel dims)"
    big = ks[0]
    if conv.padding_mode != "zeros":
        return [big], f"padding_mode={conv.padding_mode!r} (kernel-size search needs zero padding)"
    if conv.padding == "valid":
        return [big], "padding='valid' (a smaller kernel would change the output size)"
    valid, dropped = {big}, list[int]()
    for k in wanted:
        ok = isinstance(k, int) and 1 <= k <= big and (big - k) % 2 == 0
        if ok and not isinstance(conv.padding, str):
            ok = all(p - d * (big - k) // 2 >= 0 for p, d in zip(conv.padding, conv.dilation))
        (valid.add if ok else dropped.append)(k)
    reason = f"kernel sizes {dropped} do not fit kernel {big} with padding {conv.padding}" if dropped else ""
    return sorted(valid), reason


class _DynamicConvNd(DynamicModule):
    """Conv with searchable ``out``/``in`` channels and, optionally, kernel size."""

    dynamic_roles = {"out": "out_channels", "in": "in_channels"}

    weight = param_view("weight")
    bias = param_view("bias")
    out_channels = attr_view("out_channels")
    in_channels = attr_view("in_channels")
    groups = attr_view("groups")
    kernel_size = attr_view("kernel_size")
    padding = attr_view("padding")

    @staticmethod
    def dynamic_full_width(module: Any, role: str) -> int:
        return int(module.out_channels if role == "out" else module.in_channels)

    @staticmethod
    def dynamic_layout(module: Any) -> dict[str, tuple[tuple[str, int], ...]]:
        d = module.__dict__
        transposed, grouped = d["transposed"], d["groups"] > 1
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        out: list[tuple[str, int]] = [("bias", 0)]
        inp: list[tuple[str, int]] = []
        if not grouped:
            out.append(("weight", out_dim))
            inp.append(("weight", in_dim))
        elif transposed:
            # weight is (in, out/groups, k...): channels live on dim 0, out/groups is constant
            inp.append(("weight", 0))
        else:
            # weight is (out, in/groups, k...): channels live on dim 0, in/groups is constant
            out.append(("weight", 0))
        return {"out": tuple(out), "in": tuple(inp)}

    def dynamic_channel_weight(self, role: str) -> tuple[str, int] | None:
        """The weight dim whose slices belong to the channels of ``role`` (for importance)."""
        d = self.__dict__
        if d["groups"] > 1:
            return ("weight", 0)
        return ("weight", (1 if role == "out" else 0) if d["transposed"] else (0 if role == "out" else 1))

    def _dyn_extra_hparams(self) -> tuple[Hparam, ...]:
        kernel = self.__dict__.get("_dyn_kernel")
        return () if kernel is None else (kernel,)

    def _dyn_extra_indices(self) -> dict[str, dict[int, slice]]:
        kernel = self.__dict__.get("_dyn_kernel")
        if kernel is None or kernel.active == kernel.original:
            return {}
        k, big = kernel.active, kernel.original
        off = (big - k) // 2
        n = len(self.__dict__["kernel_size"])
        return {"weight": {2 + i: slice(off, off + k) for i in range(n)}}

    def dynamic_attrs(self, widths: dict[str, int]) -> dict[str, Any]:
        d = self.__dict__
        out = widths.get("out", d["out_channels"])
        inp = widths.get("in", d["in_channels"])
        groups = d["groups"]
        if groups > 1:
            groups = inp // (d["in_channels"] // groups)
        kernel_size, padding = d["kernel_size"], d["padding"]
        kernel = d.get("_dyn_kernel")
        if kernel is not None and kernel.active != kernel.original:
            shrink = kernel.original - kernel.active
            kernel_size = (kernel.active,) * len(kernel_size)
            if not isinstance(padding, str):
                padding = tuple(p - dil * shrink // 2 for p, dil in zip(padding, d["dilation"]))
        return {
            "out_channels": out,
            "in_channels": inp,
            "groups": groups,
            "kernel_size": kernel_size,
            "padding": padding,
        }

    def dynamic_after_export(self, attrs: dict[str, Any]) -> None:
        padding = attrs["padding"]
        if not isinstance(padding, str):
            # the cache F.pad uses for non-zero padding modes must follow the new padding
            self._reversed_padding_repeated_twice = tuple(p for p in reversed(padding) for _ in range(2))

    def _dyn_tensor_factors(self, name: str, shape: Sequence[int]) -> list[int | DimBinding | Hparam]:
        factors = super()._dyn_tensor_factors(name, shape)
        kernel = self.__dict__.get("_dyn_kernel")
        if kernel is not None and name == "weight":
            for i in range(2, len(shape)):
                factors[i] = kernel
        return factors


class DynamicConv1d(_DynamicConvNd, nn.Conv1d):  # type: ignore[misc]  # a property over a torch attribute, by design
    """Dynamic ``nn.Conv1d``."""


class DynamicConv2d(_DynamicConvNd, nn.Conv2d):  # type: ignore[misc]  # a property over a torch attribute, by design
    """Dynamic ``nn.Conv2d``."""


class DynamicConv3d(_DynamicConvNd, nn.Conv3d):  # type: ignore[misc]  # a property over a torch attribute, by design
    """Dynamic ``nn.Conv3d``."""


class DynamicConvTranspose1d(_DynamicConvNd, nn.ConvTranspose1d):  # type: ignore[misc]  # a property over a torch attribute, by design
    """Dynamic ``nn.ConvTranspose1d``."""


class DynamicConvTranspose2d(_DynamicConvNd, nn.ConvTranspose2d):  # type: ignore[misc]  # a property over a torch attribute, by design
    """Dynamic ``nn.ConvTranspose2d``."""


class DynamicConvTranspose3d(_DynamicConvNd, nn.ConvTranspose3d):  # type: ignore[misc]  # a property over a torch attribute, by design
    """Dynamic ``nn.ConvTranspose3d``."""
