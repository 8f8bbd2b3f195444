"""Hook specifications the AutoNAS plugin adds to the core's plugin manager (extension points)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from modeopt_core import hookspec

from .layers import LayerSpec


@hookspec(historic=True)
def modeopt_autonas_register_layers(
    register: Callable[[type[nn.Module], Callable[[nn.Module], LayerSpec], type[nn.Module]], None],
) -> None:
    """Make a custom layer type searchable: ``register(layer_cls, spec_fn, dynamic_cls)``.

    ``spec_fn(module) -> LayerSpec`` tells the tied-channel analysis how channels flow through an
    instance; ``dynamic_cls`` is a ``modeopt_autonas.dynamic.DynamicModule`` subclass that computes the
    layer's forward on the active channels and exports it (see ``docs/autonas.md``). Called once when
    the AutoNAS plugin loads and again whenever a plugin registers later.
    """


@hookspec
def modeopt_autonas_next_modes() -> list[str]:
    """Names of modes that may directly follow a NAS mode (``autonas``, ``fastnas``).

    By default only ``export_nas`` and a few well-known modes (``kd_loss``, ``quantize``,
    ``sparse_magnitude``, ``sparse_gpt``) may follow; a third-party plugin whose mode works on a
    search-space model (distillation, quantization, ...) returns its mode names here.
    """
