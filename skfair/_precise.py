"""The last resort of the exact projection: the projection solved in extended precision.

Raw outputs far beyond the outputs' scale (``1e20`` with bounds ``[0, 1]``) in a group of
their own, or tied with ordinary ones whose outputs end strictly inside the bounds, can need
multipliers of their size that cancel on the other samples to within less than float64's
rounding of the multipliers themselves: no float64 computation certifies such a projection.
For small batches this module solves the projection

    min 1/2 ||y - z||^2   s.t.   G y <= h,   lo <= y <= hi

with every number a decimal of :data:`PRECISION` significant digits, from the float64 ``z``,
rows, weights and bounds converted exactly (``h`` raised by :data:`SLACK`), by the dual
active-set method of Goldfarb and Idnani (1983) with the identity Hessian: from ``y = z`` it
adds the most violated constraint (a row or a bound, by its distance) and moves ``y`` along
the part of its normal outside the span of the active normals (through the inverse of their
Gram matrix, updated as a constraint joins or leaves), dropping the active constraint whose
multiplier reaches zero first; the active normals stay independent, so dependent rows cost
nothing. The solution is certified in the same precision, as strictly as a float one
(:func:`skfair._guarantee.backward_error`):
the multipliers are non-negative, the exact outputs meet the rows to the guarantee's tolerance,
and the outputs rounded to float64 are the projection of raw outputs within the guarantee's
allowance of ``z``, with the multipliers of the rows active at the rounded outputs. The
caller's float checks then judge fairness and bounds on the rounded outputs.

The method is dense in the samples: a step costs ``O((k + m) n)`` decimal operations for
``k <= n`` active constraints and ``m`` rows; :data:`MAX_SAMPLES` and :data:`MAX_ROWS` keep a
solve (at most :data:`STEPS_PER_CONSTRAINT` steps per constraint) within a few seconds.
"""

import decimal
import math
from decimal import Decimal

import numpy as np

from ._guarantee import GUARANTEE_TOL

#: significant decimal digits of the arithmetic for raw outputs of at most 1 in magnitude, one
#: more per power of ten of the largest (:func:`_digits`): multipliers of the raw outputs' size
#: that cancel to the guarantee's tolerance need about 20 digits beyond float64's 16 and the
#: outputs' magnitude, and the inverse Gram matrix of the active normals, updated at every step,
#: loses as many digits as its condition number has (sample weights spanning 1e12 make it up
#: to 1e48)
PRECISION = 100
#: most samples of a batch the method takes: the active set holds up to ``n`` constraints, and
#: a solve takes a step or two per sample, each ``O(n^2)`` decimal operations and more
MAX_SAMPLES = 128
#: most rows the method takes: every step scans them (``O(m n)`` decimal operations)
MAX_ROWS = 400
#: a constraint counts as met when its violation is below this times its magnitude
#: (``|h_j|`` plus the magnitude of its terms): the arithmetic's rounding, far below the
#: guarantee's tolerance
MET = 1e-40
#: a normal counts as in the span of the active ones when its part outside is below this
#: fraction of its norm (rows built from float64 coefficients are either dependent, to the
#: arithmetic's rounding, or far from it)
DEPENDENT = Decimal("1e-30")
#: how far beyond ``h`` the solved rows may hold, relative to the scale of ``h``: the float64
#: right-hand sides of rows that close a cycle (the pairs of three groups at epsilon 0) need not
#: cancel exactly, and the exact problem would have no solution; a hundredth of the guarantee's
#: tolerance, within which the certificate counts a row as active
SLACK = GUARANTEE_TOL / 100
#: most steps, per constraint, before giving up (each adds a constraint or drops one)
STEPS_PER_CONSTRAINT = 4


def fits(cs):
    """Whether the batch of ``cs`` is small enough for :func:`solve`."""
    return cs.n_samples <= MAX_SAMPLES and cs.n_rows <= MAX_ROWS


def solve(z, cs, lo, hi):
    """``(y, lam, n_steps)``: the projection of ``z`` (host float64) onto ``cs`` within ``[lo,
    hi]`` (floats, infinite where missing), as float64 outputs ``y`` (rounded from their
    decimal values) and the rows' multipliers ``lam`` (decimals: rounded to float64, those of
    raw outputs far out no longer cancel to within the certificate's allowance); None when
    the constraints have no common point or the method does not settle within its steps.
    Call it for batches that :func:`fits`; the result is not certified
    (:func:`backward_error`)."""
    with decimal.localcontext() as context:
        context.prec = _digits(z)
        rows, h = _rows(cs)
        h = h + Decimal(SLACK * max(1.0, float(np.abs(cs.host_h).max(initial=0.0))))
        found = _goldfarb_idnani(_decimals(z), *_constraints(rows, h, lo, hi))
        if found is None:
            return None
        lam, n_steps = found
        y = _clipped(_decimals(z) - rows.T.dot(lam), lo, hi)
        return np.array([float(v) for v in y]), lam, n_steps


def backward_error(z, y, lam, cs, bounds, active_tol, tol):
    """:func:`skfair._guarantee.backward_error` of the float64 outputs ``y`` with the
    decimal multipliers ``lam`` of :func:`solve`, computed in decimal arithmetic; also at
    most 0 only when the multipliers are non-negative and the outputs ``z - G^T lam`` (clipped)
    that they define meet the rows to ``active_tol``. At most 0 when ``y`` is certified."""
    with decimal.localcontext() as context:
        context.prec = _digits(z)
        rows, h = _rows(cs)
        if any(v < 0 for v in lam):
            return math.inf
        low, high = bounds.box
        z_dec, y_dec = _decimals(z), _decimals(y)
        exact = _clipped(z_dec - rows.T.dot(lam), low, high)
        infeasible = float(max(rows.dot(exact) - h, default=Decimal(0)) - Decimal(active_tol))
        active = rows.dot(y_dec) - h >= -Decimal(active_tol)
        free = z_dec - rows.T.dot(np.where(active, lam, Decimal(0)))
        error = np.where(y >= high, np.maximum(Decimal(high) - free, 0),
                         np.where(y <= low, np.maximum(free - Decimal(low), 0),
                                  np.abs(y_dec - free)))
        allowed = _decimals(np.full_like(z, tol)) + 64 * _decimals(np.spacing(np.abs(z)))
        excess = float(max(error - allowed, default=Decimal(-math.inf)))
        return max(excess, infeasible)


def _digits(z):
    """The significant digits of the arithmetic for raw outputs ``z``: :data:`PRECISION` plus
    the decimal exponent of the largest beyond 1 (multipliers of their size must cancel)."""
    largest = float(np.abs(z).max(initial=0.0))
    return PRECISION + max(0, math.ceil(math.log10(largest))) if largest > 1 else PRECISION


def _rows(cs):
    """``(G, h)`` as decimal object arrays ``(m, n)`` and ``(m,)``: row ``r`` on the atoms is
    the difference of its two statistics' coefficients (:func:`skfair._constraint_set.
    dense_coef`), ``G``'s column ``i`` is ``weight[i]`` times its atom's coefficients, all of
    it exact (float64 values of similar magnitudes, and products of two: far fewer significant
    digits than the arithmetic's)."""
    problem = cs.host_problem
    rows = problem.rows
    n_stats = rows.stat_ptr.size - 1
    stat = np.full((n_stats + 1, cs.n_atoms), Decimal(0), dtype=object)  # last: no statistic
    stat[np.repeat(np.arange(n_stats), np.diff(rows.stat_ptr)), rows.stat_atom] = _decimals(
        rows.stat_coef)
    columns = (stat[rows.plus] - stat[rows.minus])[:, problem.atom]
    if problem.weight.size:
        columns = columns * _decimals(problem.weight)
    return columns, _decimals(problem.h)


def _constraints(rows, h, lo, hi):
    """``(C, b, n_rows)``: the rows and the existing bounds as ``C y <= b`` (the rows first)."""
    n_rows, n = rows.shape
    normals, limits = [rows], [h]
    identity = np.array([[Decimal(int(i == j)) for j in range(n)] for i in range(n)],
                        dtype=object).reshape(n, n)
    if hi < math.inf:
        normals.append(identity)
        limits.append(np.full(n, Decimal(hi), dtype=object))
    if lo > -math.inf:
        normals.append(-identity)
        limits.append(np.full(n, -Decimal(lo), dtype=object))
    return np.concatenate(normals), np.concatenate(limits), n_rows


def _goldfarb_idnani(z, normals, limits, n_rows):
    """``(lam, n_steps)``: the multipliers of the first ``n_rows`` constraints ``normals @ y <=
    limits`` at the minimiser of ``1/2 ||y - z||^2`` under all of them (the rest: bounds), or
    None when they have no common point or the steps run out."""
    squares = np.array([normal.dot(normal) for normal in normals], dtype=object)
    norms = np.array([square.sqrt() for square in squares], dtype=object)
    # (the constraints' magnitudes need no precision: float64 values)
    absolute, magnitude = np.abs(normals.astype(np.float64)), np.abs(limits.astype(np.float64))
    # a bound's normal is a signed unit vector: its value is the signed output
    sample = np.argmax(absolute[n_rows:], axis=1)
    sign = normals[n_rows:][np.arange(sample.size), sample]
    y = z.copy()
    active, u = [], []  # the active constraints and their multipliers
    inverse = np.empty((0, 0), dtype=object)  # the inverse Gram matrix of the active normals
    n_steps, max_steps = 0, STEPS_PER_CONSTRAINT * len(normals)
    while True:
        slack = np.concatenate([normals[:n_rows].dot(y), sign * y[sample]]) - limits
        allowed = MET * (magnitude + absolute.dot(np.abs(y.astype(np.float64))))
        distance = [s / norm if s > allowed[j] and j not in active and norm > 0 else 0
                    for j, (s, norm) in enumerate(zip(slack, norms))]
        p = max(range(len(distance)), key=distance.__getitem__, default=-1)
        if p < 0 or not distance[p] > 0:
            multipliers = np.full(len(normals), Decimal(0), dtype=object)
            multipliers[active] = u
            return multipliers[:n_rows], n_steps
        added, violation, u_p = normals[p], slack[p], Decimal(0)
        while True:
            if n_steps == max_steps:
                return None
            n_steps += 1
            chosen = normals[active]
            products = chosen.dot(added)
            along = inverse.dot(products)
            direction = added - along.dot(chosen) if active else added
            squared = direction.dot(direction)
            # (None: the added normal is in the span of the active ones, y cannot move)
            full = violation / squared if squared > DEPENDENT ** 2 * squares[p] else None
            blocking = [(u[i] / along[i], i) for i in range(len(active)) if along[i] > 0]
            partial = min(blocking) if blocking else None
            if full is None and partial is None:
                return None  # the constraints have no common point
            if partial is None or (full is not None and full <= partial[0]):
                u = [u_i - full * a for u_i, a in zip(u, along)] + [u_p + full]
                y = y - full * direction
                # (the inverse of the Gram matrix bordered by the added normal: its Schur
                # complement is the squared part of the normal outside the active span)
                border = -along / squared
                inverse = np.block([[inverse - np.outer(border, along), border[:, None]],
                                    [border[None, :], np.array([[1 / squared]])]])
                active.append(p)
                break
            step, drop = partial
            u = [u_i - step * a for u_i, a in zip(u, along)]
            u_p += step
            if full is not None:
                y = y - step * direction
                violation -= step * squared
            del active[drop], u[drop]
            column = np.delete(inverse[:, drop], drop)
            inverse = (np.delete(np.delete(inverse, drop, axis=0), drop, axis=1)
                       - np.outer(column, column) / inverse[drop, drop])


def _clipped(values, lo, hi):
    """``values`` (decimal) clipped to ``[lo, hi]`` (floats, infinite where missing)."""
    if hi < math.inf:
        values = np.minimum(values, Decimal(hi))
    if lo > -math.inf:
        values = np.maximum(values, Decimal(lo))
    return values


def _decimals(values):
    """The float64 ``values`` as an object array of exact decimals."""
    return np.array([Decimal(float(v)) for v in np.ravel(values)], dtype=object)
