"""The box ``lo <= y <= hi`` on the outputs, in the two forms the package uses."""

import math
from collections import namedtuple

from ._kernels import Box


def open_box(lo, hi):
    """Bounds as the compiled passes take them (:class:`skfair._kernels.Box`): floats, infinite
    where a bound is missing (None)."""
    return Box(-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))


class Bounds(namedtuple("Bounds", "lo hi")):
    """The bounds ``(lo, hi)`` of the outputs, either one None when missing.

    ``Bounds.of(bounds)`` reads the ``bounds`` of the layer and the estimators (a pair, or None
    for unbounded outputs); as a tuple it unpacks to ``lo, hi``.
    """

    __slots__ = ()

    @classmethod
    def of(cls, bounds):
        """``bounds`` (a pair ``(lo, hi)``, a :class:`Bounds` or None) as :class:`Bounds`."""
        if isinstance(bounds, cls):
            return bounds
        return cls(None, None) if bounds is None else cls(*bounds)

    @property
    def box(self):
        """:func:`open_box` of these bounds."""
        return open_box(self.lo, self.hi)

    def clip(self, x):
        """The tensor ``x`` clipped to the bounds (``x`` itself when there are none)."""
        return x if self.lo is None and self.hi is None else x.clamp(self.lo, self.hi)
