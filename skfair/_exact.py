"""Exact projection onto ``{y : G y <= h, lo <= y <= hi}`` through its m-dimensional dual.

For ``lam >= 0`` the Lagrangian ``1/2 ||y - z||^2 + lam^T (G y - h)`` is minimised over the box
by ``y(lam) = clip(z - G^T lam, lo, hi)``; the dual function ``d(lam)`` is concave and piecewise
quadratic with gradient ``G y(lam) - h`` and generalised Hessian ``-G_F G_F^T`` (``F``:
coordinates not clipped). We maximise it with a projected Newton method (Bertsekas, 1982): a
Newton step on the multipliers that are not pinned at zero, and a search for the dual's peak
along the step. Once the clipped set and the active rows are identified the step is exact, so
the method stops after a handful of iterations with the KKT conditions met to rounding error.

Parity constraints compare every ordered pair of groups (a *family* of rows, see
:class:`skfair._kernels.Rows`): only each group's net multiplier moves the outputs, and the dual
loses ``epsilon`` per unit of flow given. Their step is taken in the groups' net flows
(:func:`_family_step`): which groups give and which take comes from a model of the step solved
exactly per family, and the Newton system has one unknown per group that gives or takes plus
one centre per family, whatever the number of pairs. The target flows are routed on a forest of
pairs, so the line search runs along the pair multipliers, which stay non-negative. Where that
step does not ascend (rounding), a step in the pairs' coordinates on a forest of rows
(:func:`_tree_flows`, :func:`_newton_rows`) is taken instead; rows outside families (custom
constraints) take only that one.

Each iteration costs one pass over the ``n`` outputs (:func:`skfair._kernels.shifted_sums`)
per evaluation, products with the rows' statistics (two per row, never a ``m x n_atoms``
matrix), ``O(m)`` for the rows' residuals and small dense algebra on the moving groups and
rows. The whole iteration, like the backward pass, is one compiled function (numba) on the host:
at the batch sizes of training the method is a few dozen small operations per iteration, and as
separate Python-level calls their overhead was most of the projection's time. Tensors on other
devices are copied to the host and the results back (``O(n)`` each way).
"""

import math
from collections import namedtuple

import numpy as np
import torch

from ._bounds import open_box
from ._constraint_set import sparse_stats, with_opposites
from ._host import as_host, device_tensor, host_vector
from ._kernels import (atom_shift, clip_shift, first_unattainable, free_shift, free_sums, inline,
                       jit, objective, pair_gram, row_gram, row_values, shifted_sums,
                       stat_squares, value_range, violation_and_range)
from .constraints import InfeasibleConstraintError

#: relative accuracy the dual iterations aim for (the guarantee checked afterwards is looser)
SOLVE_TOL = 1e-11
MAX_ITER = 100
#: rounding error of a float64 group sum, per summand
ROUNDING = 2e-16
#: float64 machine epsilon (the compiled functions read module constants when they are compiled)
EPSILON = float(np.finfo(np.float64).eps)

#: when the iteration stops: the relative accuracy ``tol`` and at most ``max_iter`` iterations
Limits = namedtuple("Limits", "tol max_iter")
#: a point of the dual: the multipliers ``lam``, the dual gradient ``residual = G y(lam) - h``
#: and the per-atom squared weight ``free_mass`` of the outputs free at ``y(lam)``
Point = namedtuple("Point", "lam residual free_mass")
#: the members of the pair families (:func:`_family_step`), one entry per member unless said:
#: ``first`` (per family: its members are ``first[f]:first[f + 1]``), the net ``flow``, the
#: ``level`` (statistic less offset), ``cost`` (per family: the dual's loss per unit of flow),
#: the member's statistic ``stat`` and its ``side`` (+1 gives, -1 takes, 0 neither)
Families = namedtuple("Families", "first flow level cost stat side")
#: the unknowns of :func:`_flow_newton`: the members that give or take (``active``), the rows
#: outside the families that move (``others``) and the members whose flow goes to zero
#: (``leaving``)
Moving = namedtuple("Moving", "active others leaving")


class SolveResult:
    """Primal solution ``y`` (tensor) and multipliers ``lam`` and diagnostics of one projection;
    ``scale`` is the magnitude of the problem's values (:func:`problem_scale`). ``host_y`` and
    ``host_lam`` are the values as numpy arrays on the host (those of the compiled passes;
    ``host_y`` made from ``y`` when not given); :attr:`lam` is ``host_lam`` as a tensor beside
    ``y``. ``check`` is ``(max(G y - h), min(y), max(y))``, computed from ``y`` after the
    iterations (a separate pass, not the solver's residuals), or None when not known.
    ``objective`` is ``(value, grad_z)`` when :func:`solve` was given one, else None."""

    __slots__ = ("y", "n_iter", "converged", "scale", "host_y", "host_lam", "check", "objective")

    def __init__(self, y, lam, n_iter, converged, scale, host_y=None, check=None,
                 objective=None):
        self.y, self.n_iter, self.converged, self.scale = y, n_iter, converged, scale
        self.host_y = host_vector(y) if host_y is None else host_y
        self.host_lam, self.check, self.objective = as_host(lam), check, objective

    @property
    def lam(self):
        """The multipliers as a tensor on the device of ``y`` (made on access: the projection
        itself reads only the host array)."""
        return device_tensor(self.host_lam, self.y.device)


def problem_scale(z, cs, lo, hi):
    """The magnitude of the problem's values (tolerances are relative to it), after checking that
    the problem has a solution.

    Raises :class:`~skfair.constraints.InfeasibleConstraintError` when a row cannot hold for any
    output within the bounds, :class:`ValueError` when ``z`` is not finite.
    """
    row, smallest, scale = _checks(host_vector(z), cs.host_problem, open_box(lo, hi))
    _raise_if_unsolvable(cs, row, smallest, scale, lo, hi)
    return scale


def solve(z, cs, lo, hi, lam0=None, tol=SOLVE_TOL, max_iter=MAX_ITER, objective=None):
    """Project ``z`` (float64, shape (n,); read, not differentiated) onto the constraint set ``cs``
    within ``[lo, hi]``.

    ``lo``/``hi`` are floats or ``None`` (unbounded). The multipliers start from ``lam0`` (m
    non-negative numbers: a tensor, array or list), zero by default: the projection is unique,
    and the tests drive the solver from other points to check that it gets there. Returns a
    :class:`SolveResult`; ``converged`` is False when the iteration limit was hit (the caller
    checks feasibility and decides). Raises like :func:`problem_scale`, whose checks run first
    in the same compiled call.

    ``objective``, a :class:`skfair._kernels.Loss` (host arrays and numbers), asks for the
    training objective at the solution and its gradient in ``z`` through the projection
    (:func:`objective_vjp`), computed in the same compiled call: the result's ``objective`` is
    then ``(value, grad_z)``.
    """
    m, n = cs.n_rows, z.shape[0]
    # (a copy: updated in place)
    lam = np.zeros(m) if lam0 is None else np.maximum(as_host(lam0), 0.0)
    if lam.shape != (m,):
        raise ValueError(f"lam0 must hold one multiplier per row ({m}); got shape {lam.shape}.")
    y = np.empty(n)
    # Group sums of n float64 values carry rounding errors of order n * 1e-16: the attainable
    # accuracy degrades with n (1e-10 relative at a million samples).
    args = (host_vector(z), cs.host_problem, open_box(lo, hi), lam,
            Limits(tol + ROUNDING * n, max_iter), y)
    if objective is None:
        found = _checked_newton(*args)
    else:
        grad_z = np.empty(n)
        *found, value = _checked_objective(*args, objective, grad_z)
        objective = (value, grad_z)
    row, smallest, scale, n_iter, converged, lam, violation, low, high = found
    if row >= 0 or not math.isfinite(scale):
        _raise_if_unsolvable(cs, row, smallest, scale, lo, hi)
    return SolveResult(device_tensor(y, z.device), lam, n_iter, converged, scale, y,
                       (violation, low, high), objective)


def recentred_solve(z, cs, lo, hi):
    """The projection of raw outputs far from the fair set, where :func:`solve` loses digits.

    An output that is free at the solution is ``z_i - (G^T lam)_i``: a raw output far outside
    the bounds (or, without bounds, far from the others) needs multipliers of its own
    magnitude, and the iteration then works at the resolution of ``z``, not of the outputs.
    Two steps restore it:

    * a continuation in the distance: the raw outputs ``c + t (z - c)`` (``c = clip(z)``, ``c =
      0`` without bounds) for ``t`` growing by :data:`CONTINUATION_FACTOR` from about ten
      times the outputs' scale over the largest distance up to 1, each solve warm-started from
      the previous multipliers scaled like the distance (the far-out part of the solution
      grows linearly with it);
    * a recentring: the rows (at most :data:`RECENTRE_ROWS`) whose multiplier ``mu_r`` exceeds
      :data:`RECENTRE` times the outputs' scale are active at the solution (the caller
      verifies it), and on the outputs that meet them as equalities ``||y - z||^2 / 2 =
      ||y - z'||^2 / 2 - mu^T G y + const`` with ``z' = z - G^T mu`` and ``mu^T G y = mu^T
      h`` constant: the projection of ``z'`` onto the rows with those rows as equalities
      (their opposites added) is the projection of ``z``. In ``z'`` a free output's shift has
      cancelled its raw value (exactly, in floating point, where the two lie within a factor
      2), so it is solved at the outputs' resolution.

    Returns a :class:`SolveResult` of ``z`` with multipliers ``mu + nu_r - nu_r'`` (``nu`` those
    of the recentred problem); the caller checks the outputs, that the multipliers are
    non-negative, and certifies them (:func:`skfair._guarantee.backward_error`): the shifts of
    ``z'`` carry the rounding of ``z``'s magnitude.
    """
    host = host_vector(z)
    low, high = open_box(lo, hi)
    centre = np.clip(host, low, high) if low > -np.inf or high < np.inf else np.zeros_like(host)
    scale = problem_scale(z, cs, lo, hi)
    distance = float(np.abs(host - centre).max(initial=0.0))
    t = min(1.0, 10.0 * scale / distance) if distance > 0 else 1.0
    lam, n_iter = np.zeros(cs.n_rows), 0
    while True:
        stage = solve(torch.from_numpy(centre + t * (host - centre)), cs, lo, hi, lam0=lam)
        n_iter += stage.n_iter
        if t >= 1.0:
            break
        if (n_iter > CONTINUATION_ITERATIONS
                or n_iter * (cs.n_rows + host.size) > CONTINUATION_WORK):
            return stage  # refused by the caller: too costly to pursue
        grown = min(1.0, t * CONTINUATION_FACTOR)
        lam, t = stage.host_lam * (grown / t), grown
    lam = stage.host_lam
    large = np.flatnonzero(lam > RECENTRE * scale)
    if large.size == 0 or large.size > RECENTRE_ROWS:
        return stage  # nothing to recentre, or too many rows for the generic step
    mu = np.zeros_like(lam)
    mu[large] = lam[large]
    shifted = np.empty_like(host)
    clip_shift(host, cs.host_atom, atom_shift(cs.host_rows, mu), cs.host_weight, -np.inf,
               np.inf, shifted)
    start = np.r_[np.where(mu > 0, 0.0, lam), np.zeros(large.size)]
    found = solve(torch.from_numpy(shifted), with_opposites(cs, large), lo, hi, lam0=start)
    nu = found.host_lam
    lam = mu + nu[:cs.n_rows]
    lam[large] -= nu[cs.n_rows:]
    return SolveResult(device_tensor(found.host_y, z.device), lam, n_iter + found.n_iter,
                       found.converged, found.scale, found.host_y, found.check)


#: how much farther from the bounds each stage of :func:`recentred_solve` puts the raw outputs
CONTINUATION_FACTOR = 100.0
#: the iterations the continuation of :func:`recentred_solve` may take in all, and their work
#: (iterations times rows plus outputs: each iteration passes over both): the continuations
#: that end certified need far less, and past either a refusal should come in seconds
CONTINUATION_ITERATIONS = 1000
CONTINUATION_WORK = 10_000_000
#: multipliers larger than this times the outputs' scale are recentred (:func:`recentred_solve`)
RECENTRE = 1e3
#: most rows :func:`recentred_solve` recentres: their opposites are rows outside the pair
#: families, which the iteration moves by the slower step of single rows
RECENTRE_ROWS = 256


def _raise_if_unsolvable(cs, row, smallest, scale, lo, hi):
    """Raise for what :func:`_checks` found."""
    if row >= 0:
        raise InfeasibleConstraintError(
            f"The fairness constraint cannot be met within bounds {(lo, hi)}: row "
            f"{cs.keys[row]!r} needs a value <= {cs.host_h[row]:.6g} but its smallest "
            f"attainable value is {smallest:.6g}; widen the bounds or increase epsilon.",
            key=cs.keys[row],
        )
    if not math.isfinite(scale):
        raise ValueError("z must be finite; it contains NaN or inf.")


def conflicting_rows(cs, lo, hi):
    """The rows that no outputs within the bounds meet together, or ``[]`` when some do.

    Decided exactly on the atoms' totals (the rows read the outputs only through them, and
    every total between ``lo`` and ``hi`` times the atom's weight is attainable): a linear
    program (HiGHS, sparse: two statistics per row) that minimises the total slack ``s >= 0``
    of ``G t <= h + s``. When the minimum is positive, the rows with a nonzero multiplier at
    its optimum are the conflicting ones (they make the certificate of infeasibility). Called
    only when no solver met the guarantee, to tell an infeasible problem from a solver's
    failure; above :data:`CONFLICT_ROWS` rows (parity over hundreds of groups, which no bounds
    make infeasible) no conclusion is drawn.
    """
    import scipy.sparse as sp
    from scipy.optimize import linprog

    h, mass, rows = cs.host_h, cs.host_mass, cs.host_rows
    m, n_atoms = h.size, cs.n_atoms
    if m == 0 or m > CONFLICT_ROWS:
        return []
    low, high = open_box(lo, hi)
    box = [(low * w if w else 0.0, high * w if w else 0.0) for w in mass]
    box = [(None if math.isinf(a) else a, None if math.isinf(b) else b) for a, b in box]
    scale = max(1.0, float(np.abs(h).max()))
    stat = sparse_stats(rows, n_atoms)
    coef = stat[rows.plus] - stat[rows.minus]
    found = linprog(np.r_[np.zeros(n_atoms), np.ones(m)],
                    A_ub=sp.hstack([coef, -sp.identity(m)], format="csr"), b_ub=h,
                    bounds=box + [(0.0, None)] * m, method="highs")
    if found.status != 0:
        return []  # the linear program itself failed: no conclusion
    if not found.fun > 1e-7 * scale:
        return []
    weights = np.abs(found.ineqlin.marginals)
    return [cs.keys[r] for r in np.flatnonzero(weights > 1e-9 * weights.max())]


#: the most rows :func:`conflicting_rows` examines
CONFLICT_ROWS = 100_000


def vjp(grad_y, host_y, host_lam, cs, lo, hi, with_h=True):
    """Vector-Jacobian products of the projection at its solution: ``host_y`` and ``host_lam``
    of a :class:`SolveResult`.

    Implicit differentiation of the KKT system on the free coordinates ``F`` and the active rows
    ``S``: ``dy_F = P dz_F + G_SF^T M^+ dh_S`` with ``M = G_SF G_SF^T`` and
    ``P = I - G_SF^T M^+ G_SF``; clipped coordinates do not move. Returns ``(grad_z, grad_h)``
    (``grad_h`` None unless ``with_h``), in ``O(n m + m^3)`` without any n x n matrix
    (:func:`_vjp`, compiled, on the host).
    """
    grad_z = np.empty(host_y.shape[0])
    u = _vjp(host_vector(grad_y), host_y, cs.host_problem, open_box(lo, hi), host_lam, grad_z)
    device = grad_y.device
    return device_tensor(grad_z, device), device_tensor(u, device) if with_h else None


@jit
def _checks(z, problem, box):
    """``(row, smallest, scale)``: the first row that no output within the bounds ``box`` meets
    and its smallest attainable value (:func:`~skfair._kernels.first_unattainable`; -1 if
    none), and the magnitude ``max(1, |clip(z)|, |h|, |lo|, |hi|)`` of the problem's outputs
    (NaN if ``z`` is not finite). Raw outputs far outside the bounds do not enter it: the
    outputs lie within the bounds, and the accuracy the iteration aims for is theirs."""
    lo, hi = box
    h = problem.h
    row, smallest = -1, 0.0
    if h.shape[0] and (lo > -np.inf or hi < np.inf):
        row, smallest = first_unattainable(problem.rows, problem.mass, h, lo, hi)
    low, high = value_range(z)
    if not (np.isfinite(low) and np.isfinite(high)):
        return row, smallest, np.nan
    low, high = min(max(low, lo), hi), min(max(high, lo), hi)
    scale = max(1.0, abs(low), abs(high))
    for r in range(h.shape[0]):
        scale = max(scale, abs(h[r]))
    for bound in (lo, hi):
        if np.isfinite(bound):
            scale = max(scale, abs(bound))
    return row, smallest, scale


@jit
def _checked_newton(z, problem, box, lam, limits, y):
    """:func:`_checks`, then (if they pass) :func:`_dual_newton` to the absolute accuracy
    ``limits.tol * scale``, the solution written into ``y``, and the check of it: ``(row,
    smallest, scale, n_iter, converged, lam, max(G y - h), min(y), max(y))``. One compiled
    call: at training batch sizes each call from Python costs about as much as the work."""
    row, smallest, scale = _checks(z, problem, box)
    if row >= 0 or scale != scale:
        return row, smallest, scale, 0, False, lam, np.nan, np.nan, np.nan
    atom, weight, rows, h = problem.atom, problem.weight, problem.rows, problem.h
    n_iter, converged = 0, True
    if h.shape[0] == 0:  # nothing but the bounds
        for i in range(z.shape[0]):
            y[i] = min(max(z[i], box.lo), box.hi)
    else:
        n_iter, converged, lam = _dual_newton(z, problem, box, lam, limits.tol * scale, scale,
                                              limits.max_iter)
        clip_shift(z, atom, atom_shift(rows, lam), weight, box.lo, box.hi, y)
    # recomputed from y, not taken from the iterations: the guarantee checked by the caller
    # must not rest on the solver being right
    violation, low, high = violation_and_range(y, atom, weight, rows, h)
    return row, smallest, scale, n_iter, converged, lam, violation, low, high


@jit
def _checked_objective(z, problem, box, lam, limits, y, loss, grad_z):
    """:func:`_checked_newton`, then (if the checks passed) :func:`objective_vjp` of ``loss``
    at its solution: its results and the objective's value (NaN when the checks failed)."""
    found = _checked_newton(z, problem, box, lam, limits, y)
    row, scale, lam = found[0], found[2], found[5]
    value = np.nan
    if row < 0 and scale == scale:
        value = objective_vjp(y, z, problem, box, lam, loss, grad_z)
    return found + (value,)


@jit
def objective_vjp(y, z, problem, box, lam, loss, out):
    """The training objective :func:`skfair._kernels.objective` of ``loss`` at the projection
    ``y`` of ``z`` (multipliers ``lam``) and ``out =`` its gradient in ``z``: the objective's
    gradient in ``y`` through the projection (:func:`_vjp`) plus its direct one. Returns the
    value."""
    grad_y, direct = np.empty(y.shape[0]), np.empty(y.shape[0])
    value = objective(y, z, loss, grad_y, direct)
    _vjp(grad_y, y, problem, box, lam, out)
    for i in range(y.shape[0]):
        out[i] += direct[i]
    return value


@jit
def _dual_newton(z, problem, box, lam, atol, scale, max_iter):
    """The projected Newton method on the dual, from ``lam`` (updated in place); returns
    ``(n_iter, converged, lam)``. The iterations never write an output vector: each evaluation
    is one pass that sums (:func:`evaluate`), and the caller writes ``y(lam)`` once at the end.
    Written as plain loops: numba compiles them in a fraction of the time its numpy functions
    take (this function is compiled once per installation and cached).

    Every step is a minimum-norm Newton step (:func:`_newton_direction`) projected onto
    ``lam >= 0``, followed by a search for the dual's peak along it on the directional
    derivative (:func:`line_search`), never on dual values: a value is a sum over the ``n``
    samples whose rounding error exceeds the gain of the last steps at large ``n``.
    """
    rows = problem.rows
    residual, free_mass = evaluate(z, problem, box, lam)
    best, stalled = np.inf, 0
    kappa = KAPPA_START
    for n_iter in range(max_iter):
        _tree_flows(lam, rows.family_size, rows.family_start)
        worst = _worst(lam, residual)
        if worst <= atol:
            return n_iter, True, lam
        # At the rounding floor the residual stops decreasing: give up rather than spin, and let
        # the caller's feasibility check judge the point.
        stalled = stalled + 1 if worst > 0.9 * best and worst < 1e-9 * scale else 0
        best = min(best, worst)
        if stalled >= 5:
            return n_iter, False, lam
        # Newton on the multipliers that may move: not those at zero whose row is satisfied, and
        # for group pairs only a forest of them (the others would make the system singular).
        # A satisfied row whose multiplier is a rounding leftover (tiny but positive) goes to zero
        # now rather than into the Newton system: there the projection onto lam >= 0 would undo
        # the step along it, and the step could stop being an ascent direction.
        chosen, pinned = _newton_rows(lam, residual, 1e-9 * lam.max(), rows)
        moved = False
        for r in pinned:
            moved = moved or lam[r] > 0
            lam[r] = 0.0
        if moved or chosen.size == 0:
            # The step starts from the point the pinned multipliers leave, not from the gradient
            # before: "tiny" is relative to the largest multiplier, and a tiny one can still
            # carry a residual of the order of the tolerance (at epsilon = 0 a pair's two
            # opposite rows are both active: with a stale gradient the step put the removed
            # multiplier back on the opposite row, and the next iteration removed it again).
            residual, free_mass = evaluate(z, problem, box, lam)
            # a leftover on a satisfied row may have been all that kept the point from
            # converging: judged on the stale gradient, the step would find no ascent
            worst = _worst(lam, residual)
            if worst <= atol:
                return n_iter, True, lam
            if chosen.size == 0:  # every row satisfied at zero but for rounding leftovers
                continue
        at = Point(lam, residual, free_mass)
        rho = kappa * min(worst / scale, 1.0)
        if rows.family_size.size:
            length, found, kappa = _family_ascent(z, problem, box, at, rho, kappa)
            if length > 0:
                lam, residual, free_mass = found
                continue
            # no ascent from the flows' step (rounding, or a model far off): the pairs' step
        hessian, full, rhs, offset = _rows_system(problem, at, chosen, rho)
        direction, along = _newton_direction(hessian, full, rhs, offset, RETRY_RIDGE)
        if along.size:
            # Rows that cancel (attributes whose groups coincide in the batch): along ``along``
            # the outputs do not move and the dual grows linearly, up to where a multiplier
            # reaches zero. Step there exactly, then re-evaluate (a step along such a direction
            # at the pace of the others crept along it for dozens of iterations).
            limit = _segment_end(lam, chosen, along)
            if 0 < limit < np.inf:
                for i in range(chosen.size):
                    r = chosen[i]
                    ends = along[i] < 0 and lam[r] / -along[i] == limit
                    lam[r] = 0.0 if ends else max(lam[r] + limit * along[i], 0.0)
                residual, free_mass = evaluate(z, problem, box, lam)
                continue
        # The step to the Newton point projected onto lam >= 0, taken as a segment: the dual is
        # concave along it, so its derivative brackets the peak.
        step = _projected_step(lam, chosen, direction)
        slope = _slope(residual, chosen, step)
        newton = slope > 1e-2 * _slope(residual, chosen, direction)
        if not newton:
            # The projection turned the step away from ascent, or nearly so (rows coupled
            # through shared samples): the gradient scaled by the rows' diagonal, projected,
            # ascends.
            scaled = np.zeros(chosen.size)
            for i in range(chosen.size):
                scaled[i] = rhs[i] / full[i, i] if full[i, i] > 0 else 0.0
            step = _projected_step(lam, chosen, scaled)
            slope = _slope(residual, chosen, step)
            if not slope > 0:  # no ascent left within rounding: the caller's check judges
                return n_iter, False, lam
            kappa = min(kappa * KAPPA_FACTOR, KAPPA_MAX)
        length, found = line_search(z, problem, box, at, chosen, step, slope)
        if length == 0.0:  # the derivative never confirmed an ascent: rounding noise
            return n_iter, False, lam
        if newton:
            kappa = _adapted(kappa, length, _segment_end(lam, chosen, step))
        lam, residual, free_mass = found
    _tree_flows(lam, rows.family_size, rows.family_start)
    return max_iter, _worst(lam, residual) <= atol, lam


#: the regularisation of the Newton systems: weight of the proximal term relative to the
#: residual (start, bounds, change factor) and the step lengths that change it
KAPPA_START, KAPPA_MIN, KAPPA_MAX, KAPPA_FACTOR = 1e-2, 1e-4, 1e6, 10.0
KAPPA_SHORT, KAPPA_LONG = 0.25, 0.75
#: the proximal term (relative to the rows' unit diagonal) of a second Cholesky attempt on a
#: nearly singular Newton system
RETRY_RIDGE = 1e-7
#: most evaluations of one line search
LINE_SEARCH_EVALS = 40
#: a line search stops where the directional derivative is below this fraction of its start
LINE_SEARCH_SLOPE = 1e-2


@inline
def _worst(lam, residual):
    """The largest violation of the KKT conditions: ``|residual|`` of the rows with a positive
    multiplier, ``residual`` of the others (``-inf`` without rows)."""
    worst = -np.inf
    for r in range(lam.size):
        worst = max(worst, abs(residual[r]) if lam[r] > 0 else residual[r])
    return worst


@inline
def _family_ascent(z, problem, box, at, rho, kappa):
    """The flows' step of the pair families (:func:`_family_step`) from the point ``at`` and
    the search for the dual's peak along it: ``(length, point, kappa)``, the step's length (0
    when it does not ascend, and then ``at`` itself), the point reached and the proximal
    weight after it."""
    moves, step = _family_step(at, problem, rho)
    slope = _slope(at.residual, moves, step) if moves.size else 0.0
    if slope > 0:
        length, found = line_search(z, problem, box, at, moves, step, slope)
        if length > 0:
            return length, found, _adapted(kappa, length, _segment_end(at.lam, moves, step))
    return 0.0, at, kappa


@inline
def _rows_system(problem, at, chosen, rho):
    """The Newton system of the pairs' step on the rows ``chosen``: ``(hessian, full, rhs,
    offset)``, the generalised Hessian ``G_F G_F^T`` plus ``rho`` times the diagonal of
    ``full = G G^T`` (as if every output were free), the residuals, and ``-h``."""
    k = chosen.size
    rhs, offset = np.empty(k), np.empty(k)
    for i in range(k):
        rhs[i] = at.residual[chosen[i]]
        offset[i] = -problem.h[chosen[i]]
    full = row_gram(problem.rows, problem.square_mass, chosen)
    hessian = row_gram(problem.rows, at.free_mass, chosen)
    for i in range(k):
        hessian[i, i] += rho * full[i, i]
    return hessian, full, rhs, offset


@inline
def _projected_step(lam, chosen, direction):
    """The step from ``lam`` to ``lam + direction`` on the rows ``chosen``, projected onto
    ``lam >= 0``."""
    step = np.empty(chosen.size)
    for i in range(chosen.size):
        step[i] = max(lam[chosen[i]] + direction[i], 0.0) - lam[chosen[i]]
    return step


@jit
def _adapted(kappa, length, limit):
    """The proximal weight after a Newton step of ``length`` (``limit``: where the segment
    ends): larger after a short step that no multiplier's zero cut, smaller after a long one."""
    if length < KAPPA_SHORT and length < limit:
        return min(kappa * KAPPA_FACTOR, KAPPA_MAX)
    if length >= KAPPA_LONG:
        return max(kappa / KAPPA_FACTOR, KAPPA_MIN)
    return kappa


@jit
def _segment_end(lam, chosen, step):
    """The largest ``t`` with ``lam + t * step >= 0`` (``step`` on the rows ``chosen``; inf if
    none decreases)."""
    end = np.inf
    for i in range(chosen.size):
        if step[i] < 0:
            end = min(end, lam[chosen[i]] / -step[i])
    return end


@jit
def line_search(z, problem, box, at, chosen, step, slope):
    """The peak of the dual along ``lam + t * step`` from the point ``at`` (``step`` on the
    rows ``chosen``, ascending: the directional derivative ``slope`` at ``t = 0`` is positive),
    ``t`` from 1 and at most where a multiplier reaches zero.
    Returns ``(t, point)``, the :class:`Point` at ``lam + t * step``; ``t = 0`` (and the
    multipliers of ``at``) when no point with a positive derivative was found.

    Along the segment the dual is concave and piecewise quadratic: its derivative
    ``residual(t) . step`` decreases, piecewise linearly, and is a sum of row residuals, far
    more accurate than a difference of dual values at large ``n``. Past the last point where
    it is positive and before the first where it is negative, the next trial is the Newton
    point of the derivative (exact on one quadratic piece) or the secant of the bracket
    (Illinois, :func:`_bracket_guess`); where the dual is linear (every output the step moves
    is clipped) the next trial is the exact breakpoint where one comes free
    (:func:`_step_breakpoint`), instead of a creep toward it. The search stops where the
    derivative is within :data:`LINE_SEARCH_SLOPE` of zero relative to its start, or positive
    at the end of the segment; by concavity such a point gains at least its length times its
    derivative.
    """
    lam = at.lam
    limit = _segment_end(lam, chosen, step)
    direction = np.zeros(lam.size)
    for i in range(chosen.size):
        direction[chosen[i]] = step[i]
    rate = atom_shift(problem.rows, direction)  # shift of every atom per unit t
    low, low_slope = 0.0, slope  # the last point known before the peak
    high, high_slope = np.inf, 0.0  # the first point known past it
    kept_low = kept_high = 0  # how many times in a row either end stayed (Illinois)
    best = Point(lam.copy(), at.residual, at.free_mass)
    t = min(1.0, limit)
    for _ in range(LINE_SEARCH_EVALS):
        trial = _segment_point(lam, chosen, step, t, limit)
        residual_t, free_mass_t = evaluate(z, problem, box, trial)
        s = _slope(residual_t, chosen, step)
        if abs(s) <= LINE_SEARCH_SLOPE * slope or (s > 0 and t >= limit):
            return t, Point(trial, residual_t, free_mass_t)
        if s > 0:
            low, low_slope = t, s
            best = Point(trial, residual_t, free_mass_t)
            kept_high, kept_low = kept_high + 1, 0
            curvature = 0.0
            for a in range(rate.size):
                curvature += rate[a] * rate[a] * free_mass_t[a]
            if not curvature > 0:
                curvature, gap = _step_breakpoint(z, problem, box, atom_shift(problem.rows, trial),
                                                  rate)
            guess = t + s / curvature if curvature > 0 else t + gap
            if not guess < np.inf:  # linear for ever: no peak (cannot happen when feasible)
                guess = 2.0 * t
        else:
            high, high_slope = t, s
            kept_low, kept_high = kept_low + 1, 0
            guess = np.nan
        if high < np.inf:
            if not (low < guess < high):
                guess = _bracket_guess(low, low_slope, high, high_slope, kept_low, kept_high)
            if not (low < guess < high) or high - low <= 1e-15 * high:
                break
        t = min(guess, limit)
    if low == 0.0:
        return 0.0, at
    return low, best


@inline
def _segment_point(lam, chosen, step, t, limit):
    """``max(lam + t * step, 0)`` (``step`` on the rows ``chosen``), exactly zero for the
    multiplier that ends the segment at ``t = limit``."""
    trial = lam.copy()
    for i in range(chosen.size):
        r = chosen[i]
        ends = t == limit and step[i] < 0 and lam[r] / -step[i] == limit
        trial[r] = 0.0 if ends else max(lam[r] + t * step[i], 0.0)
    return trial


@inline
def _bracket_guess(low, low_slope, high, high_slope, kept_low, kept_high):
    """The next trial within the bracket ``(low, high)`` of the peak: the secant of the
    derivative, exact when it is linear between the ends; an end that stayed twice in a row
    counts half (Illinois), so that it moves too. The middle when the secant leaves the
    bracket."""
    weight_low = 0.5 ** max(kept_low - 1, 0)
    weight_high = 0.5 ** max(kept_high - 1, 0)
    a_s, b_s = low_slope * weight_low, high_slope * weight_high
    guess = low + a_s * (high - low) / (a_s - b_s)
    if not (low < guess < high):
        guess = 0.5 * (low + high)
    return guess


@jit
def _step_breakpoint(z, problem, box, shift, rate):
    """Along ``clip(z - weight * (shift + t * rate)[atom], lo, hi)`` from ``t = 0``:
    ``(curvature, gap)``, the dual's curvature ``sum (weight * rate[atom])**2`` over the
    samples free just after 0 (those at a bound moving inward included), and the smallest
    ``t > 0`` at which a clipped sample comes free (inf if none). One pass, for a step along
    which every moving output is clipped: the dual is linear up to ``gap``."""
    atom, weight = problem.atom, problem.weight
    lo, hi = box
    weighted = weight.shape[0] > 0
    curvature, gap = 0.0, np.inf
    for i in range(z.shape[0]):
        a = atom[i]
        w = weight[i] if weighted else 1.0
        speed = -w * rate[a]
        if speed == 0.0:
            continue
        value = z[i] - w * shift[a]
        if value >= hi and speed < 0:
            if value == hi:
                curvature += speed * speed
            else:
                gap = min(gap, (hi - value) / speed)
        elif value <= lo and speed > 0:
            if value == lo:
                curvature += speed * speed
            else:
                gap = min(gap, (lo - value) / speed)
        elif lo < value < hi:
            curvature += speed * speed
    return curvature, gap


@jit
def _newton_direction(hessian, full, rhs, offset, retry):
    """The minimum-norm Newton step ``hessian^+ rhs`` on the rows, with the curvature of
    ``full`` (as if every output were free) along the null space of ``hessian``.

    The generalised Hessian ``G_F G_F^T`` is singular along rows whose outputs are all clipped
    (the dual is linear there) and along rows that coincide in the batch. Scaled to a unit
    diagonal of ``full`` (rows of groups of any size alike), its eigenvalues below ``1e-9`` make
    the null space; along it the step takes the curvature of ``full`` restricted to it (its
    scale: the line search then finds the breakpoint), and where ``full`` is singular too (rows
    that coincide) the minimum-norm solution. Regular systems take a Cholesky solve.
    """
    k = rhs.size
    unit = np.empty(k)
    for i in range(k):
        unit[i] = 1.0 / math.sqrt(full[i, i]) if full[i, i] > 0 else 0.0
    scaled, scaled_full, b = np.empty((k, k)), np.empty((k, k)), np.empty(k)
    for i in range(k):
        b[i] = rhs[i] * unit[i]
        for j in range(k):
            scaled[i, j] = hessian[i, j] * unit[i] * unit[j]
            scaled_full[i, j] = full[i, j] * unit[i] * unit[j]
    x, regular = _cholesky_solve(scaled, b)
    if not regular and retry > 0:
        # nearly singular: a proximal term at the pivot threshold keeps the step a Newton step
        # on the rows' scale (the eigendecomposition below is for systems singular outright)
        for i in range(k):
            scaled[i, i] += retry
        x, regular = _cholesky_solve(scaled, b)
        for i in range(k):
            scaled[i, i] -= retry
    if regular:
        for i in range(k):
            x[i] *= unit[i]
        return x, np.empty(0)
    drift = _null_drift(scaled_full, b, unit, offset)
    if drift.size:
        return x, drift
    x = _curved_or_flat(scaled, scaled_full, b)
    for i in range(k):
        x[i] *= unit[i]
    return x, np.empty(0)


@inline
def _null_drift(scaled_full, b, unit, offset):
    """The component of the scaled step ``b`` along the null space of ``full`` (directions
    that move no output), in the rows' units, when the dual truly ascends along it; else an
    empty array."""
    k = b.size
    free_values, free_vectors = np.linalg.eigh(scaled_full)
    drift = np.zeros(k)
    gain = norm = 0.0
    for j in range(k):
        projection = 0.0
        for i in range(k):
            projection += free_vectors[i, j] * b[i]
        norm += projection * projection
        if not free_values[j] > 1e-9:
            gain += projection * projection
            for i in range(k):
                drift[i] += projection * free_vectors[i, j] * unit[i]
    # Along ``drift`` the outputs do not move: the dual's slope there is ``offset . drift``
    # exactly (``offset = -h`` on the rows), zero at epsilon = 0; the residuals' component
    # along it is then rounding (sums over the samples, nearly null eigenvectors), and a
    # step along it moved the multipliers without changing the outputs.
    exact = offset_norm = drift_norm = 0.0
    for i in range(k):
        exact += offset[i] * drift[i]
        offset_norm += offset[i] * offset[i]
        drift_norm += drift[i] * drift[i]
    if gain > 1e-16 * norm and exact > 1e-9 * math.sqrt(offset_norm * drift_norm):
        return drift
    return np.empty(0)


@inline
def _curved_or_flat(scaled, scaled_full, b):
    """The minimum-norm step of the singular scaled system ``scaled x = b``: its Newton step on
    the range of ``scaled``, or the step along its null space with the curvature of
    ``scaled_full`` there, whichever its quadratic model says gains more (the flat one unless
    it gains next to nothing)."""
    k = b.size
    eigenvalues, vectors = np.linalg.eigh(scaled)
    newton, flat = np.zeros(k), np.zeros(k)
    newton_gain = flat_gain = 0.0  # the increase each step's quadratic model predicts (x2)
    null = 0
    for j in range(k):
        if eigenvalues[j] > 1e-9:
            projection = 0.0
            for i in range(k):
                projection += vectors[i, j] * b[i]
            newton_gain += projection * projection / eigenvalues[j]
            for i in range(k):
                newton[i] += projection / eigenvalues[j] * vectors[i, j]
        else:
            null += 1
    basis = np.empty((k, null))
    c = 0
    for j in range(k):
        if not eigenvalues[j] > 1e-9:
            basis[:, c] = vectors[:, j]
            c += 1
    restricted = np.zeros((null, null))
    for p in range(null):
        for q in range(null):
            total = 0.0
            for i in range(k):
                for j in range(k):
                    total += basis[i, p] * scaled_full[i, j] * basis[j, q]
            restricted[p, q] = total
    values, inner = np.linalg.eigh(restricted)
    for j in range(null):
        if values[j] > 1e-9 * max(values[-1], 1e-300):
            vector = basis @ inner[:, j]
            projection = 0.0
            for i in range(k):
                projection += vector[i] * b[i]
            flat_gain += projection * projection / values[j]
            for i in range(k):
                flat[i] += projection / values[j] * vector[i]
    # One of the two, not their sum: along the flat part the dual is linear up to a
    # breakpoint that the line search finds, and a step mixing both stops at the peak of the
    # curved part, so that the next step undoes it (the iterates zigzag while creeping along
    # the flat part).
    return flat if flat_gain > 1e-6 * newton_gain else newton


@jit
def evaluate(z, problem, box, lam):
    """At ``y(lam)`` (not written): the dual gradient ``G y - h`` and the per-atom squared
    weight of the free coordinates."""
    rows = problem.rows
    n_atoms = rows.atom_ptr.size - 1
    sums, free_mass = np.empty(n_atoms), np.empty(n_atoms)
    shifted_sums(z, problem.atom, atom_shift(rows, lam), problem.weight, box.lo, box.hi, sums,
                 free_mass)
    return row_values(rows, sums, problem.h), free_mass


@jit
def _slope(residual, chosen, step):
    """``residual . step`` over the rows ``chosen`` (the dual's directional derivative), summed
    with :func:`_add_compensated`."""
    total, compensation = 0.0, 0.0
    for i in range(chosen.size):
        total, compensation = _add_compensated(total, compensation, residual[chosen[i]] * step[i])
    return total + compensation


@jit
def _add_compensated(total, compensation, term):
    """One step of Neumaier's compensated sum: near the optimum the line search's derivative
    is a sum of terms of either sign that nearly cancel."""
    updated = total + term
    if abs(total) >= abs(term):
        compensation += (total - updated) + term
    else:
        compensation += (term - updated) + total
    return updated, compensation


@jit
def _cholesky_solve(matrix, rhs):
    """``(matrix^-1 rhs, True)`` for a symmetric positive definite ``matrix`` by Cholesky
    factorisation, or ``(_, False)`` when a pivot falls below ``1e-8`` times the largest
    diagonal entry (singular or nearly so: the caller then takes the pseudo-inverse). A few
    hundred operations where LAPACK's eigendecomposition costs microseconds to set up."""
    k = rhs.size
    lower = np.zeros((k, k))
    threshold = 0.0
    for i in range(k):
        threshold = max(threshold, matrix[i, i])
    threshold *= 1e-8
    for j in range(k):
        pivot = matrix[j, j]
        for p in range(j):
            pivot -= lower[j, p] ** 2
        if not pivot > threshold:
            return rhs, False
        lower[j, j] = math.sqrt(pivot)
        for i in range(j + 1, k):
            total = matrix[i, j]
            for p in range(j):
                total -= lower[i, p] * lower[j, p]
            lower[i, j] = total / lower[j, j]
    x = rhs.copy()
    for i in range(k):  # L w = rhs
        for p in range(i):
            x[i] -= lower[i, p] * x[p]
        x[i] /= lower[i, i]
    for i in range(k - 1, -1, -1):  # L^T x = w
        for p in range(i + 1, k):
            x[i] -= lower[p, i] * x[p]
        x[i] /= lower[i, i]
    return x, True


@jit
def _family_step(at, problem, rho):
    """A Newton step for the pair families in the space of the groups' net flows, and for the
    other rows with them: ``(chosen, step)``, the rows it changes and by how much (empty when
    there is nothing to change).

    In a family, the dual depends on the pair multipliers through each member's net flow
    ``nu_u`` (they sum to zero) and loses ``c`` per unit of flow given: ``c * sum(nu_u+)``. Its
    optimum is a centre ``mu`` with the givers' statistics at ``mu + c``, the takers' at ``mu``
    and the others in between. Who gives and who takes comes from the step's model with the
    members uncoupled (their own curvature), solved exactly for the centre (bisection on the
    flows' total, :func:`_predicted_flows`); the step then solves the coupled model on those
    members: a Newton system with one centre per family (:func:`_flow_newton`). Its target
    flows are routed on a forest (:func:`_route`): a segment from the current multipliers to
    them stays non-negative and moves the flows linearly, so the line search of the pair rows
    applies unchanged, and a step in this space needs no projection (unlike a step in the
    pairs' coordinates, whose projection onto ``lam >= 0`` cut most of the steps short when
    many groups changed sides).
    """
    lam, residual = at.lam, at.residual
    rows, m = problem.rows, at.lam.size
    first, flow, level, cost, stat = _family_levels(lam, residual, rows, problem.h)
    # each member's own curvature (free outputs) and its scale (all outputs)
    curvature = stat_squares(rows, at.free_mass)[stat]
    full = stat_squares(rows, problem.square_mass)[stat]
    side = _predicted_flows(flow, level, cost, first, curvature, full)
    end = rows.family_start[cost.size]
    generic = np.zeros(m - end, np.bool_)
    for r in range(end, m):
        generic[r - end] = lam[r] > 0 or residual[r] > 0
    target, generic_step = _flow_newton(Families(first, flow, level, cost, stat, side), generic,
                                        at, problem, rho)
    if target.size == 0:
        return np.empty(0, np.int64), np.empty(0)
    trial = lam.copy()
    _route(trial, target, first, rows.family_size, rows.family_start)
    for r in range(end, m):
        trial[r] = max(lam[r] + generic_step[r - end], 0.0)
    return _changes(lam, trial)


@inline
def _family_levels(lam, residual, rows, h):
    """``(first, flow, level, cost, stat)`` of the pair families' members at the multipliers
    ``lam`` (see :class:`Families`)."""
    size, start = rows.family_size, rows.family_start
    n_families = size.size
    first = _family_members(size)
    n_members = first[n_families]
    flow = _net_flows(lam, size, start, first)
    level, stat = np.zeros(n_members), np.empty(n_members, np.int64)
    cost = np.empty(n_families)
    for f in range(n_families):
        k = size[f]
        cost[f] = 0.5 * (h[_pair_row(start, f, k, 0, 1)] + h[_pair_row(start, f, k, 1, 0)])
        for i in range(k):
            stat[first[f] + i] = rows.plus[_pair_row(start, f, k, i, 1 if i == 0 else 0)]
            if i:  # the statistic minus its offset, up to a constant per family
                level[first[f] + i] = 0.5 * (residual[_pair_row(start, f, k, i, 0)]
                                             - residual[_pair_row(start, f, k, 0, i)])
    return first, flow, level, cost, stat


@inline
def _changes(lam, trial):
    """``(chosen, step)``: the rows where ``trial`` differs from ``lam``, and by how much."""
    changed = 0
    for r in range(lam.size):
        changed += trial[r] != lam[r]
    chosen, step = np.empty(changed, np.int64), np.empty(changed)
    changed = 0
    for r in range(lam.size):
        if trial[r] != lam[r]:
            chosen[changed], step[changed] = r, trial[r] - lam[r]
            changed += 1
    return chosen, step


@jit
def _predicted_flows(flow, level, cost, first, curvature, full):
    """The side of every member (+1 gives, -1 takes, 0 neither) in the step's model with the
    members uncoupled: member ``u`` alone maximises ``(level_u - mu) x - cost x+ - H_u (x -
    flow_u)^2 / 2``, and the centre ``mu`` of each family makes the flows sum to zero (the sum
    decreases with ``mu``: bisection). A member whose outputs are all clipped has no curvature
    of its own; it gets a tiny one (it moves freely)."""
    side = np.zeros(flow.size, np.int64)
    for f in range(cost.size):
        largest = 0.0
        for u in range(first[f], first[f + 1]):
            largest = max(largest, full[u])
        tiny = 1e-12 * largest if largest > 0 else 1.0
        low, high = np.inf, -np.inf
        for u in range(first[f], first[f + 1]):
            own = max(curvature[u], tiny)
            low = min(low, level[u] + own * flow[u])
            high = max(high, level[u] + own * flow[u])
        low -= cost[f] + 1.0
        high += 1.0
        for _ in range(200):
            mu = 0.5 * (low + high)
            if not low < mu < high:
                break
            if _flow_total(flow, level, cost[f], first[f], first[f + 1], curvature, tiny,
                           mu) > 0:
                low = mu
            else:
                high = mu
        mu = 0.5 * (low + high)
        for u in range(first[f], first[f + 1]):
            own = max(curvature[u], tiny)
            free = flow[u] + (level[u] - mu) / own
            side[u] = 1 if free > cost[f] / own else (-1 if free < 0 else 0)
    return side


@jit
def _flow_total(flow, level, cost, begin, stop, curvature, tiny, mu):
    """The total of the uncoupled model's flows at the centre ``mu`` (see
    :func:`_predicted_flows`)."""
    total = 0.0
    for u in range(begin, stop):
        own = max(curvature[u], tiny)
        free = flow[u] + (level[u] - mu) / own
        if free > cost / own:
            total += free - cost / own
        elif free < 0:
            total += free
    return total


@jit
def _flow_newton(families, generic, at, problem, rho):
    """The Newton step on the members that give or take (``families.side``) and the rows
    outside the families flagged ``generic``, with one centre per family: ``(target flows, step
    of the other rows)``; the members of neither side go to zero flow. Empty arrays when no
    member gives or takes and no other row moves."""
    side, flow = families.side, families.flow
    end = problem.rows.family_start[families.cost.size]
    moving = Moving(_indices(side != 0), _indices(generic) + end,
                    _indices((side == 0) & (flow != 0.0)))
    if moving.active.size + moving.others.size + moving.leaving.size == 0:
        return np.empty(0), np.empty(0)
    family = np.empty(flow.size, np.int64)
    for f in range(families.cost.size):
        family[families.first[f]:families.first[f + 1]] = f
    system, rhs, centre = _flow_system(families, moving, family, at, problem, rho)
    solution = np.linalg.solve(system, rhs)
    n_a, n_g = moving.active.size, moving.others.size
    target = np.zeros(flow.size)
    for i in range(n_a):
        target[moving.active[i]] = flow[moving.active[i]] + solution[i]
    for f in range(families.cost.size):  # a family whose members all leave: every flow to zero
        if centre[f] < 0:
            for u in range(families.first[f], families.first[f + 1]):
                target[u] = 0.0
    step = np.zeros(at.lam.size - end)
    for i in range(n_g):
        step[moving.others[i] - end] = solution[n_a + i]
    for u in range(flow.size):
        if not np.isfinite(target[u]):
            return np.empty(0), np.empty(0)
    return target, step


@inline
def _flow_system(families, moving, family, at, problem, rho):
    """The linear system of :func:`_flow_newton` and the index of each family's centre among
    its unknowns (-1 for a family without one): ``(system, rhs, centre)``. Unknowns: the
    flows' changes of the ``active`` members, the steps of the ``others`` rows, then the
    centres."""
    rows, stat, flow = problem.rows, families.stat, families.flow
    active, others, leaving = moving
    n_a, n_g = active.size, others.size
    items = n_a + n_g + leaving.size
    plus, minus = np.full(items, -1, np.int64), np.full(items, -1, np.int64)
    for i in range(n_a):
        plus[i] = stat[active[i]]
    for i in range(n_g):
        plus[n_a + i], minus[n_a + i] = rows.plus[others[i]], rows.minus[others[i]]
    for i in range(leaving.size):
        plus[n_a + n_g + i] = stat[leaving[i]]
    gram = pair_gram(rows, at.free_mass, plus, minus)
    full = pair_gram(rows, problem.square_mass, plus, minus)
    centre = np.full(families.cost.size, -1, np.int64)
    n_centres = 0
    for i in range(n_a):
        f = family[active[i]]
        if centre[f] < 0:
            centre[f] = n_a + n_g + n_centres
            n_centres += 1
    size = n_a + n_g + n_centres
    system, rhs = np.zeros((size, size)), np.zeros(size)
    ridge = max(rho, 1e-10)
    for i in range(n_a + n_g):
        for j in range(n_a + n_g):
            system[i, j] = gram[i, j]
        system[i, i] += ridge * full[i, i]
        if i < n_a:
            u = active[i]
            rhs[i] = families.level[u] - (families.cost[family[u]] if families.side[u] > 0
                                          else 0.0)
            system[i, centre[family[u]]] = system[centre[family[u]], i] = 1.0
        else:
            rhs[i] = at.residual[others[i - n_a]]
        for z in range(leaving.size):  # their flows go to zero: -H (0 - flow)
            rhs[i] += gram[i, n_a + n_g + z] * flow[leaving[z]]
    for z in range(leaving.size):
        c = centre[family[leaving[z]]]
        if c >= 0:
            rhs[c] += flow[leaving[z]]
    return system, rhs, centre


@jit
def _route(lam, flow, first, size, start):
    """The pair multipliers of every family set to the net ``flow`` of its members (summing
    to zero), routed from givers to takers on a forest (north-west corner rule: the first giver
    to the first taker until one of them is done, and so on). Net flows that are rounding noise
    of the others are dropped, not routed as tiny flows."""
    for f in range(size.size):
        k = size[f]
        net = flow[first[f]:first[f + 1]].copy()
        for i in range(k):
            for j in range(k):
                if i != j:
                    lam[_pair_row(start, f, k, i, j)] = 0.0
        noise = 0.0
        for g in range(k):
            noise = max(noise, 1e-13 * abs(net[g]))
        give = take = 0
        while True:
            while give < k and not net[give] > noise:
                give += 1
            while take < k and not net[take] < -noise:
                take += 1
            if give == k or take == k:
                break
            amount = min(net[give], -net[take])
            lam[_pair_row(start, f, k, give, take)] += amount
            net[give] -= amount
            net[take] += amount


@jit
def _pair_row(family_start, f, k, i, j):
    """The row of the pair ``(i, j)`` (``i != j``) of family ``f`` with ``k`` members."""
    return family_start[f] + i * (k - 1) + j - (j > i)


@jit
def _tree_flows(lam, family_size, family_start):
    """The same net multiplier of every group, carried by a forest of group pairs (in place).

    In a family of pair rows ``stat_u - stat_v <= c + o_u - o_v`` the outputs depend on the
    multipliers only through each group's net flow ``sum_v lam_uv - sum_u lam_ug``, and the
    dual objective loses ``c`` per unit of total flow (the offsets ``o`` cost the same for any
    routing of the same net flows). Routing the net flows from the groups that give to the
    groups that take (:func:`_route`) leaves the outputs unchanged, never increases the total
    flow, and uses at most ``k - 1`` pairs that form a forest: independent rows. The families
    are those of :class:`skfair._kernels.Rows`.
    """
    first = _family_members(family_size)
    _route(lam, _net_flows(lam, family_size, family_start, first), first, family_size,
           family_start)


@jit
def _family_members(family_size):
    """``first``: the members of family ``f`` are ``first[f]:first[f + 1]``."""
    first = np.zeros(family_size.size + 1, np.int64)
    for f in range(family_size.size):
        first[f + 1] = first[f] + family_size[f]
    return first


@jit
def _net_flows(lam, family_size, family_start, first):
    """Every member's net flow ``sum_v lam_uv - sum_v lam_vu`` in its family."""
    flow = np.zeros(first[family_size.size])
    for f in range(family_size.size):
        k = family_size[f]
        for i in range(k):
            for j in range(k):
                if i != j:
                    r = _pair_row(family_start, f, k, i, j)
                    flow[first[f] + i] += lam[r]
                    flow[first[f] + j] -= lam[r]
    return flow


@jit
def _newton_rows(lam, residual, threshold, rows):
    """Rows whose multipliers the Newton step moves, and the pinned rows (increasing order).

    Pinned: rows whose multiplier is at most ``threshold`` (>= 0, so zeros included) while the
    row is satisfied; they are set to zero and held there for this step. Pair rows: the
    positive ones (a forest, see :func:`_tree_flows`), then by decreasing residual the rows
    that join two trees among those from the family's top member (largest statistic) and to
    its bottom one. Every other unpinned pair ``(u, v)`` has its ends joined through them (the
    rows ``(top, v)``, ``(u, bottom)`` and ``(top, bottom)`` have residuals at least as
    large), so the step moves the same net flows as with every pair, from ``2 k`` candidates
    instead of ``k (k - 1)``; the rows stay independent. Other rows: all that are not pinned.
    """
    m = lam.size
    pinned = np.zeros(m, np.bool_)
    chosen = np.zeros(m, np.bool_)
    end = rows.family_start[-1]
    for r in range(m):
        pinned[r] = lam[r] <= threshold and residual[r] < 0
        chosen[r] = not pinned[r] and r >= end
    for f in range(rows.family_size.size):
        k = rows.family_size[f]
        root = np.arange(k)
        for i in range(k):
            for j in range(k):
                if i != j:
                    r = _pair_row(rows.family_start, f, k, i, j)
                    if lam[r] > 0 and not pinned[r] and _join(root, i, j):
                        chosen[r] = True
        # the members ordered by their statistic: residual(i, 0) - residual(0, i) is twice
        # (stat_i - o_i) - (stat_0 - o_0)
        top = bottom = 0
        high = low = 0.0
        for i in range(1, k):
            level = (residual[_pair_row(rows.family_start, f, k, i, 0)]
                     - residual[_pair_row(rows.family_start, f, k, 0, i)])
            if level > high:
                top, high = i, level
            if level < low:
                bottom, low = i, level
        candidates = np.empty(2 * k, np.int64)
        n_candidates = 0
        for g in range(k):
            for pair in range(2):
                i, j = (top, g) if pair == 0 else (g, bottom)
                if i != j:
                    r = _pair_row(rows.family_start, f, k, i, j)
                    if not pinned[r] and not lam[r] > 0:
                        candidates[n_candidates] = r
                        n_candidates += 1
        candidates = candidates[:n_candidates]
        order = np.argsort(-residual[candidates], kind="mergesort")
        for c in order:
            r = candidates[c]
            i, rest = divmod(r - rows.family_start[f], k - 1)
            if _join(root, i, rest + (rest >= i)):
                chosen[r] = True
    return _indices(chosen), _indices(pinned)


@jit
def _join(root, i, j):
    """Join the trees of ``i`` and ``j`` (``root``: a parent per member); whether they were
    two."""
    while root[i] != i:
        i = root[i]
    while root[j] != j:
        j = root[j]
    if i == j:
        return False
    root[i] = j
    return True


@jit
def _indices(mask):
    """Positions of the true entries of ``mask``, increasing."""
    count = 0
    for flag in mask:
        count += flag
    out = np.empty(count, np.int64)
    count = 0
    for i in range(mask.size):
        if mask[i]:
            out[count] = i
            count += 1
    return out


@jit
def _vjp(grad, y, problem, box, lam, out):
    """``out = grad_z`` and returns ``u = grad_h`` (see :func:`vjp`)."""
    atom, weight, rows = problem.atom, problem.weight, problem.rows
    lo, hi = box
    m, n_atoms = lam.size, rows.atom_ptr.size - 1
    active = _indices(lam > 0)
    k = active.size
    u = np.zeros(m)
    if k:
        sums, free_mass = np.empty(n_atoms), np.empty(n_atoms)
        free_sums(grad, y, atom, weight, lo, hi, sums, free_mass)
        rhs = row_values(rows, sums, np.zeros(m))[active]
        gram = row_gram(rows, free_mass, active)
        solution, regular = _cholesky_solve(gram, rhs)
        if regular:
            for i in range(k):
                u[active[i]] = solution[i]
        else:
            # Minimum-norm solution of the singular system M u = G_SF grad_F (rows whose
            # outputs are all clipped, or rows that coincide in the batch) through its
            # eigendecomposition, as a pseudo-inverse would.
            eigenvalues, vectors = np.linalg.eigh(gram)
            cutoff = eigenvalues[-1] * k * EPSILON
            for j in range(k):
                if eigenvalues[j] > cutoff:
                    along = 0.0
                    for i in range(k):
                        along += vectors[i, j] * rhs[i]
                    for i in range(k):
                        u[active[i]] += along / eigenvalues[j] * vectors[i, j]
    free_shift(grad, y, atom, atom_shift(rows, u), weight, lo, hi, out)
    return u
