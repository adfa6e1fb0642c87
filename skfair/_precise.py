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

Larger batches whose float64 answer is right but whose float64 multipliers cancel only to
their rounding (far raw outputs, :mod:`skfair._reduction`) take the other entry point,
:func:`refined_multipliers`: those multipliers corrected in the same arithmetic on their own
rows, at a cost set by the rows that carry them. Both are judged by :func:`backward_error`,
which works through the atoms and never forms ``G``.
"""

import decimal
import math
from decimal import Decimal

import numpy as np
from ._constraint_set import sparse_stats
from ._guarantee import GUARANTEE_TOL, active_rows, allowed_error

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
#: a float64 certificate short by at most this many units in the last place of the largest raw
#: output is short by the rounding of sums of such terms: worth a correction in decimal
ROUNDING_SHORTFALL = 1e3
#: most rows whose correction :func:`refined_multipliers` solves in decimal (the normal
#: equations of ``k`` rows cost ``O(k^3)`` decimal operations); more rows take float64 least
#: squares of the decimal residual, iterative refinement, which gains digits each round only
#: where the weighted problem is far from float64's conditioning limit (weights of one scale)
DECIMAL_SUPPORT = 200
#: correction rounds of :func:`refined_multipliers`, each from the last one's residual: solved
#: in decimal, and solved in float64
REFINE_ROUNDS = 3
FLOAT_REFINE_ROUNDS = 8
#: most rows :func:`refined_multipliers` drops from the support for a negative multiplier
MAX_DROPS = 8


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
    """:func:`skfair._guarantee.backward_error` of the float64 outputs ``y`` with multipliers
    ``lam`` (decimals of :func:`solve` or :func:`refined_multipliers`, or floats), computed in
    decimal arithmetic; also at most 0 only when the multipliers are non-negative and the outputs
    ``z - G^T lam`` (clipped) that they define meet the rows to ``active_tol``. At most 0 when
    ``y`` is certified. Its cost is linear in the samples, the rows and the statistics'
    coefficients (the shifts and the rows are computed through the atoms, never as ``G``)."""
    with decimal.localcontext() as context:
        context.prec = _digits(z)
        lam = np.array([Decimal(v) if isinstance(v, float) else v for v in lam], dtype=object)
        if any(v < 0 for v in lam):
            return math.inf
        terms = _Terms(cs)
        low, high = bounds.box
        z_dec, y_dec = _decimals(z), _decimals(y)
        exact = _clipped(z_dec - terms.shifts(lam), low, high)
        infeasible = float(max(terms.values(exact), default=Decimal(0)) - Decimal(active_tol))
        active = terms.values(y_dec) >= -Decimal(active_tol)
        free = z_dec - terms.shifts(np.where(active, lam, Decimal(0)))
        error = np.where(y >= high, np.maximum(Decimal(high) - free, 0),
                         np.where(y <= low, np.maximum(free - Decimal(low), 0),
                                  np.abs(y_dec - free)))
        allowed = _decimals(np.full_like(z, tol)) + 64 * _decimals(np.spacing(np.abs(z)))
        excess = float(max(error - allowed, default=Decimal(-math.inf)))
        return max(excess, infeasible)


def refined_multipliers(z, y, lam, cs, lo, hi, active_tol, tol):
    """Decimal multipliers with which :func:`backward_error` may certify the float64 outputs
    ``y`` where the float64 multipliers ``lam`` fall short by their rounding alone, or None.

    Multipliers of the raw outputs' magnitude (``1e20``) must cancel, on the atoms whose
    outputs end strictly inside the bounds, to the outputs' scale: float64 holds them to
    ``1e4``. Kept on the rows where ``lam`` is positive and that are active at ``y``, they are
    corrected in decimal so that every such atom's shift ``(G^T lam)_a`` meets its outputs'
    ``(z_i - y_i) / w_i`` in the least-squares sense, each output weighted by ``w_i`` over its
    allowance (:func:`skfair._guarantee.allowed_error`, the only error the certificate
    measures). The correction is solved :data:`REFINE_ROUNDS` times, each from the residual
    of the last, by the normal equations in decimal; for more than :data:`DECIMAL_SUPPORT`
    rows :data:`FLOAT_REFINE_ROUNDS` times in float64. A row whose multiplier turns negative
    leaves the support, the most negative first (at most :data:`MAX_DROPS` of them). The
    certificate decides whether the result holds."""
    support = np.flatnonzero((lam > 0) & active_rows(y, cs, active_tol))
    with decimal.localcontext() as context:
        context.prec = _digits(z)
        terms = _Terms(cs)
        wanted, worth = terms.wanted_shifts(z, y, lo, hi, tol)
        inside = np.flatnonzero(worth > 0)
        scale = _decimals(worth[inside])
        lam = _decimals(lam)
        for _ in range(MAX_DROPS + 1):
            if not support.size:
                return None
            lam[np.setdiff1d(np.arange(lam.size), support)] = Decimal(0)
            effect = terms.row_shifts(support)[inside] * worth[inside, None]
            in_decimal = support.size <= DECIMAL_SUPPORT
            for _ in range(REFINE_ROUNDS if in_decimal else FLOAT_REFINE_ROUNDS):
                residual = (wanted - terms.atom_shifts(lam))[inside] * scale
                lam[support] += (_least_squares(effect, residual) if in_decimal else _decimals(
                    np.linalg.lstsq(effect, residual.astype(np.float64), rcond=None)[0]))
            if not (lam[support] < 0).any():
                return lam
            support = np.delete(support, np.argmin(lam[support]))
        return None


class _Terms:
    """The rows of a constraint set read through its atoms, in decimal arithmetic: the shifts
    ``G^T lam`` and the rows' values ``G y - h``, at a cost linear in the samples, the rows and
    the statistics' coefficients."""

    def __init__(self, cs):
        problem = cs.host_problem
        self._rows, self._atom, self._n_atoms = problem.rows, problem.atom, cs.n_atoms
        self._weight = problem.weight if problem.weight.size else np.ones(problem.atom.size)
        self._w, self._h = _decimals(self._weight), _decimals(problem.h)
        self._n_stats = self._rows.stat_ptr.size - 1
        self._entry_stat = np.repeat(np.arange(self._n_stats), np.diff(self._rows.stat_ptr))
        self._coef = _decimals(self._rows.stat_coef)

    def atom_shifts(self, lam):
        """``(G^T lam)`` per atom, for a unit weight."""
        rows = self._rows
        net = np.full(self._n_stats + 1, Decimal(0), dtype=object)  # last: no statistic
        for r in np.flatnonzero(lam != 0):
            net[rows.plus[r]] += lam[r]
            net[rows.minus[r]] -= lam[r]
        shift = np.full(self._n_atoms, Decimal(0), dtype=object)
        np.add.at(shift, rows.stat_atom, self._coef * net[self._entry_stat])
        return shift

    def shifts(self, lam):
        """``G^T lam`` per sample."""
        return self._w * self.atom_shifts(lam)[self._atom]

    def values(self, y):
        """``G y - h`` per row."""
        sums = np.full(self._n_atoms, Decimal(0), dtype=object)
        np.add.at(sums, self._atom, self._w * y)
        stat = np.full(self._n_stats + 1, Decimal(0), dtype=object)  # last: no statistic
        np.add.at(stat, self._entry_stat, self._coef * sums[self._rows.stat_atom])
        return stat[self._rows.plus] - stat[self._rows.minus] - self._h

    def row_shifts(self, rows):
        """The float64 matrix ``(n_atoms, len(rows))`` of each row's shift per atom, per unit
        multiplier."""
        stats = sparse_stats(self._rows, self._n_atoms)
        return (stats[self._rows.plus[rows]] - stats[self._rows.minus[rows]]).T.toarray()

    def wanted_shifts(self, z, y, lo, hi, tol):
        """``(wanted, worth)`` per atom: the unit-weight shift that best moves its outputs
        strictly inside ``(lo, hi)`` from ``z`` to ``y`` (decimal; least squares over them), and
        how much its fit counts (float64: the root sum of ``(w_i / allowance_i)^2`` over them;
        0 for an atom with none)."""
        inside = (y > lo) & (y < hi) & (self._weight > 0)
        z_dec, y_dec = _decimals(z), _decimals(y)
        moved = np.full(self._n_atoms, Decimal(0), dtype=object)
        squares = np.full(self._n_atoms, Decimal(0), dtype=object)
        np.add.at(moved, self._atom[inside], self._w[inside] * (z_dec - y_dec)[inside])
        np.add.at(squares, self._atom[inside], self._w[inside] ** 2)
        wanted = np.array([m / s if s else Decimal(0) for m, s in zip(moved, squares)],
                          dtype=object)
        share = np.where(inside, (self._weight / allowed_error(z, tol)) ** 2, 0.0)
        return wanted, np.sqrt(np.bincount(self._atom, weights=share,
                                           minlength=self._n_atoms))


def _least_squares(matrix, target):
    """The decimal ``x`` that minimises ``||matrix x - target||`` (``matrix`` float64,
    ``target`` decimal), from the normal equations solved by Gauss-Jordan elimination in
    decimal; an unknown whose column depends on the others' (to :data:`DEPENDENT`) stays 0."""
    a = _decimals(matrix).reshape(matrix.shape)
    normal, right = a.T.dot(a), a.T.dot(target)
    size = right.size
    tiny = max((abs(normal[i, i]) for i in range(size)), default=Decimal(0)) * DEPENDENT ** 2
    pivots, open_rows = [], list(range(size))
    for column in range(size):
        row = max(open_rows, key=lambda i: abs(normal[i, column]))
        if not abs(normal[row, column]) > tiny:
            continue
        open_rows.remove(row)
        pivots.append((row, column))
        factors = normal[:, column] / normal[row, column]
        factors[row] = Decimal(0)
        normal = normal - np.outer(factors, normal[row])
        right = right - factors * right[row]
    x = np.full(size, Decimal(0), dtype=object)
    for row, column in pivots:
        x[column] = right[row] / normal[row, column]
    return x


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
