"""Search spaces a method declares for tuning, without TensorFlow or a tuning library.

A space is a dict {argument: dimension}: `Float(low, high, log=True)`, `Int(low,
high)` or `Choice(values)`. `Method.search_space` holds a class's own; `method_space`
adds the term's weight around its published default when the class names none, and
`student_loss_weight_space` the student's CE weight around the methods' default, so
every method is tunable without the tuner naming it (`kdkeras.tune.spaces` turns a
space into a library's suggestions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Union

#: how far around a published weight the default weight space reaches (x / 4 .. x * 4)
WEIGHT_SPAN = 4.0


@dataclass(frozen=True)
class Float:
    """A real number in [low, high]; `log=True` searches its logarithm (scales)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValueError(f"Float needs finite low <= high, got low={self.low!r}, high={self.high!r}.")
        if self.log and self.low <= 0:
            raise ValueError(f"Float(log=True) needs low > 0, got low={self.low!r}.")

    def __contains__(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class Int:
    """An integer in [low, high]."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self):
        if int(self.low) != self.low or int(self.high) != self.high or self.low > self.high:
            raise ValueError(f"Int needs integers low <= high, got low={self.low!r}, high={self.high!r}.")

    def __contains__(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    """One of a few values (numbers, strings, booleans)."""

    values: tuple

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise ValueError("Choice needs at least one value.")

    def __contains__(self, value: Any) -> bool:
        return value in self.values


Dimension = Union[Float, Int, Choice]


def around(default: float, span: float = WEIGHT_SPAN) -> Float:
    """A log-scale Float from `default / span` to `default * span`."""
    if default <= 0:
        raise ValueError(f"around() needs a default > 0, got {default!r}.")
    return Float(default / span, default * span, log=True)


def method_space(cls: type) -> dict[str, Dimension]:
    """The space a method class is tuned in: its own `search_space`, with its weight
    around `default_weight` unless the class declares a space for `weight` itself
    (`"weight": None` leaves it at its default)."""
    own = dict(getattr(cls, "search_space", {}) or {})
    if "weight" not in own and getattr(cls, "default_weight", 0) > 0:
        own = {"weight": around(float(cls.default_weight)), **own}
    own = {name: dim for name, dim in own.items() if dim is not None}  # None: not tuned
    for name, dim in own.items():
        if not isinstance(dim, (Float, Int, Choice)):
            raise TypeError(f"{cls.__name__}.search_space[{name!r}] is {dim!r}; expected Float, Int or Choice.")
    return own


def student_loss_weight_space(default: float) -> Dimension:
    """The student's CE weight around a methods' default: 0.025..1 for KD's 0.1,
    0.25..2 for 1; 0..0.5 where the method replaces the CE (LSR's 0)."""
    if default <= 0:
        return Float(0.0, 0.5)
    return Float(default / WEIGHT_SPAN, max(1.0, 2.0 * default), log=True)


def describe_dimension(dim: Dimension) -> str:
    """`0.225..3.6 (log)`, `1..10`, `{a, b}`: a dimension as docs write it."""
    if isinstance(dim, Choice):
        return "{" + ", ".join(str(v) for v in dim.values) + "}"
    return f"{dim.low:g}..{dim.high:g}" + (" (log)" if dim.log else "")


def describe(space: Mapping[str, Dimension]) -> str:
    """A space as docs write it: `weight 0.225..3.6 (log), temperature 1..10 (log)`."""
    return ", ".join(f"{k} {describe_dimension(v)}" for k, v in space.items())
