"""``Hparam``: one searchable integer dimension (a channel group's width, a kernel size, a depth)."""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable

import torch

from .errors import HparamValueError

__all__ = ["Hparam", "make_divisible"]

#: Bumped whenever any hparam's active value changes. Dynamic modules compare it with the epoch
#: their slice plan was built at, so a forward pass costs one integer comparison when nothing
#: changed, and plans are rebuilt lazily (once) after a ``select``.
_EPOCH = [0]


def make_divisible(value: float, divisor: int, upper: int) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``divisor``, at most ``upper``.

    The result is at least 1 (a layer never shrinks to zero channels).
    """
    divisor = max(1, int(divisor))
    # the epsilon absorbs float noise such as 0.35 * 10 == 3.4999999999999996
    rounded = math.floor(value / divisor + 0.5 + 1e-9) * divisor
    return max(1, min(int(upper), max(divisor, rounded)))


def _check_int(value: object, what: str) -> int:
    """``value`` as a plain int (numpy/torch integers accepted); bools and non-integers are rejected."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise HparamValueError(f"{what} must be an int, got {value!r} ({type(value).__name__})") from None


class Hparam:
    """A discrete, integer-valued hyperparameter shared by every module dimension it drives.

    Args:
        choices: allowed values (sorted and de-duplicated; ``original`` is always added).
        original: the value of the unmodified model (default: ``max(choices)``).
        name: the name the search space gives it (for messages).
        sortable: whether its channels may be reordered by importance.
    """

    __slots__ = ("_active", "_choices", "_original", "importance", "name", "sortable")

    def __init__(
        self, choices: Iterable[int], original: int | None = None, *, name: str = "", sortable: bool = True
    ) -> None:
        self.name = name
        values = {_check_int(c, f"choice of hparam {name!r}") for c in choices}
        if original is None:
            if not values:
                raise HparamValueError(f"hparam {name!r} needs at least one choice or an original value")
            original = max(values)
        original = _check_int(original, f"original value of hparam {name!r}")
        values.add(original)
        if min(values) < 0:
            raise HparamValueError(f"hparam {name!r} has negative choices {sorted(values)}")
        self._choices: tuple[int, ...] = tuple(sorted(values))
        self._original: int = original
        self._active: int = original
        self.sortable = sortable
        #: per-channel importance (descending) recorded by the last importance sort, if any
        self.importance: torch.Tensor | None = None

    @property
    def choices(self) -> tuple[int, ...]:
        """Allowed values, ascending."""
        return self._choices

    @property
    def original(self) -> int:
        """The value of the unmodified model."""
        return self._original

    @property
    def min(self) -> int:
        return self._choices[0]

    @property
    def max(self) -> int:
        return self._choices[-1]

    @property
    def is_configurable(self) -> bool:
        """True when there is more than one choice."""
        return len(self._choices) > 1

    @property
    def active(self) -> int:
        """The current value; assigning validates it against ``choices``."""
        return self._active

    @active.setter
    def active(self, value: int) -> None:
        value = self.validate(value)
        if value != self._active:
            self._active = value
            _EPOCH[0] += 1

    def validate(self, value: object) -> int:
        """Return ``value`` as an int if it is one of the choices, else raise ``HparamValueError``."""
        number = _check_int(value, f"value of hparam {self.name!r}")
        if number not in self._choices:
            raise HparamValueError(
                f"{number} is not a choice of hparam {self.name!r}; choose one of {list(self._choices)}"
            )
        return number

    def restrict(self, allowed: Iterable[int]) -> None:
        """Shrink ``choices`` to those in ``allowed`` (the original and active values always stay)."""
        keep = set(allowed) | {self._original, self._active}
        self._choices = tuple(c for c in self._choices if c in keep)

    def __repr__(self) -> str:
        return (
            f"Hparam(name={self.name!r}, choices={list(self._choices)}, active={self._active}, "
            f"original={self._original}, sortable={self.sortable})"
        )
