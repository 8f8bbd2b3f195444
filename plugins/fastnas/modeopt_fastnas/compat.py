"""The FastNAS names a NVIDIA ModelOpt user types, as thin public wrappers (see ``docs/coming-from-modelopt.md``).

ModelOpt's ``modelopt.torch.prune.fastnas`` exposes ``FastNASModeDescriptor``, ``BinarySearcher``,
``FastNASPatchManager``, ``convert_fastnas_searchspace`` and ``restore_fastnas_searchspace``. Their
counterparts here keep the names and the calling conventions, on top of modeopt's own API:

- ``FastNASModeDescriptor`` is :class:`~modeopt_fastnas.FastNASMode`;
- ``convert_fastnas_searchspace`` / ``restore_fastnas_searchspace`` are the mode's convert and restore
  (prefer ``modeopt_core.apply_mode(model, ["fastnas"])`` and ``modeopt_core.restore``, which also
  record the mode on the model and handle checkpoints);
- ``FastNASPatchManager`` re-estimates batch-norm statistics when a model is evaluated after its
  subnet changed, which is what ModelOpt's patched ``model.eval()`` does, but from data given up front
  and with an error (not a warning and a skip) when that data is too little.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from modeopt_autonas.space import SearchSpace, get_search_space
from modeopt_core import ConfigError, Metadata, make_forward_loop, recalibrate_batchnorm, validate_config
from modeopt_core.sdk import DEFAULT_MIN_CALIBRATION_BATCHES, ForwardLoop

from .config import FastNASConfig
from .mode import FastNASMode

__all__ = ["FastNASModeDescriptor", "FastNASPatchManager", "convert_fastnas_searchspace", "restore_fastnas_searchspace"]

FastNASModeDescriptor = FastNASMode
"""ModelOpt's name of the ``fastnas`` mode descriptor."""


def convert_fastnas_searchspace(model: nn.Module, config: Any = None) -> tuple[nn.Module, Metadata]:
    """Convert ``model`` into a FastNAS search space in place; return ``(model, metadata)``.

    ``config`` is a :class:`~modeopt_fastnas.FastNASConfig`, a dict of its fields or None (defaults).
    Like ModelOpt's function of this name it does not record the mode on the model: use
    ``modeopt_core.apply_mode(model, [("fastnas", config)])`` for that (and for save/restore).
    """
    return FastNASMode().convert(model, validate_config(FastNASConfig, config))


def restore_fastnas_searchspace(model: nn.Module, config: Any, metadata: Metadata) -> nn.Module:
    """Rebuild the search space recorded in ``metadata`` on a fresh ``model`` (no re-analysis)."""
    return FastNASMode().restore(model, validate_config(FastNASConfig, config), metadata)


class FastNASPatchManager:
    """Re-estimates batch-norm statistics at the first eval-mode forward after the subnet changed.

    Args:
        model: a model converted with the ``fastnas`` mode.
        data_loader: calibration batches (the first ``max_batches`` are drawn once, at :meth:`patch`),
            or give ``forward_loop(model)`` instead.
        collect_func: maps a batch to the model input (default: the first item of a tuple batch).
        min_batches: calibration from fewer batches raises :class:`~modeopt_core.CalibrationError`.

    ``patch()`` attaches it to the model's search space as its subnet driver; ``unpatch()`` detaches
    it. Searchers pause it (they re-estimate statistics themselves, see ``bn_calibration``).
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable[Any] | None = None,
        *,
        forward_loop: ForwardLoop | None = None,
        collect_func: Callable[[Any], Any] | None = None,
        max_batches: int = 50,
        min_batches: int = DEFAULT_MIN_CALIBRATION_BATCHES,
    ) -> None:
        if (data_loader is None) == (forward_loop is None):
            raise ConfigError("FastNASPatchManager needs exactly one of data_loader or forward_loop")
        self.space: SearchSpace = get_search_space(model)
        self.model = self.space.model
        self._loader, self._forward_loop, self._collect = data_loader, forward_loop, collect_func
        self.max_batches, self.min_batches = max_batches, min_batches
        self.calibrated_for: dict[str, int] | None = None
        self._paused = 0
        self._handle: Any = None

    @property
    def is_patched(self) -> bool:
        """Whether the manager is attached to the model."""
        return self._handle is not None

    def patch(self) -> FastNASPatchManager:
        """Attach to the model (draws the calibration batches now); returns itself."""
        if self._loader is not None:
            batches = list(itertools.islice(self._loader, self.max_batches))
            self._forward_loop = make_forward_loop(batches, collect_func=self._collect)
        self.space.attach_driver(self)
        self._handle = self.model.register_forward_pre_hook(self._before_forward)
        return self

    def unpatch(self) -> None:
        """Detach from the model."""
        if self.space.driver is self:
            self.space.detach_driver()
        else:
            self.detach()

    def prep_for_eval(self) -> int:
        """Re-estimate the statistics for the active subnet now; return the batches seen."""
        assert self._forward_loop is not None
        with self.paused():
            seen = recalibrate_batchnorm(self.model, self._forward_loop, min_batches=self.min_batches, strict=True)
        self.calibrated_for = self.space.config()
        return seen

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        if self._paused or module.training or self.calibrated_for == self.space.config():
            return
        self.prep_for_eval()

    # ---- the SubnetDriver protocol ----------------------------------------------------------------
    def settle(self) -> dict[str, int]:
        """FastNAS never changes the subnet by itself: the selection is the active subnet."""
        return self.space.config()

    def note_selection(self) -> None:
        """A new selection: its statistics are re-estimated at the next eval-mode forward."""

    def note_calibrated(self) -> None:
        """The statistics were re-estimated for the active subnet elsewhere."""
        self.calibrated_for = self.space.config()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Inside the block, forwards never trigger a re-estimation."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def detach(self) -> None:
        """Remove the hook from the model."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
