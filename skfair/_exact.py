"""Exact projection onto ``{y : G y <= h, lo <= y <= hi}`` through its m-dimensional dual.

For ``lam >= 0`` the Lagrangian ``1/2 ||y - z||^2 + lam^T (G y - h)`` is minimised over the box
by ``y(lam) = clip(z - G^T lam, lo, hi)``; the dual function ``d(lam)`` is concave and piecewise
quadratic with gradient ``G y(lam) - h`` and generalised Hessian ``-G_F G_F^T`` (``F``:
coordinates not clipped). We maximise it with a projected Newton method (Bertsekas, 1982): a
Newton step on the multipliers that are not pinned at zero, an Armijo search along the
projection arc. Once the clipped set and the active rows are identified the step is exact, so
the method stops after a handful of iterations with the KKT conditions met to rounding error.

Parity constraints compare every ordered pair of groups, so their rows are linearly dependent
(``u-v``, ``v-w`` and ``u-w``) and the Newton systems would be singular. Within such a family
only each group's net multiplier moves the outputs, and the dual loses ``epsilon`` per unit of
total multiplier, so before every step the multipliers are re-routed on a forest of pairs
(:func:`_tree_flows`: same outputs, never a lower dual value) and the step moves a forest of
rows only (:func:`_newton_rows`): the systems stay regular and no damping slows the method.

Each iteration costs ``O(n + m^2 n_atoms + m^3)`` with the factored ``G`` of
:class:`~skfair.constraints.ConstraintSet`: one pass over the ``n`` outputs
(:meth:`~skfair.constraints.ConstraintSet.clip_shift`, compiled on the CPU, written into reused
buffers) and small dense algebra on the ``m`` rows, done in numpy on the host.
"""

import math
import threading

import numpy as np
import torch
from scipy.linalg import lapack

from .constraints import _device_tensor, _host_array

#: relative accuracy the dual iterations aim for (the guarantee checked afterwards is looser)
SOLVE_TOL = 1e-11
MAX_ITER = 100
#: smallest relative Levenberg-Marquardt ridge of the Newton systems
MIN_RIDGE = 1e-10
#: rounding error of a float64 group sum, per summand
ROUNDING = 2e-16


class SolveResult:
    """Primal solution, multipliers and diagnostics of one projection."""

    __slots__ = ("y", "lam", "n_iter", "converged")

    def __init__(self, y, lam, n_iter, converged):
        self.y, self.lam, self.n_iter, self.converged = y, lam, n_iter, converged


def clip(x, lo, hi):
    """``x`` clipped to ``[lo, hi]``; either bound may be None."""
    return x if lo is None and hi is None else x.clamp(lo, hi)


def value_range(values):
    """``(min, max)`` of a tensor as floats, in one pass; NaN propagates; ``(0, 0)`` if empty."""
    if not values.numel():
        return 0.0, 0.0
    low, high = torch.aminmax(values)
    return float(low), float(high)


def scale_of(z_range, cs, lo, hi):
    """Magnitude of the problem's values; tolerances are relative to it."""
    h = cs.host_h
    return max(1.0, *map(abs, z_range), float(np.abs(h).max()) if h.size else 0.0,
               *(abs(b) for b in (lo, hi) if b is not None))


def solve(z, cs, lo, hi, lam0=None, tol=SOLVE_TOL, max_iter=MAX_ITER, z_range=None,
          keep_start=False):
    """Project ``z`` (float64, shape (n,)) onto the constraint set ``cs`` within ``[lo, hi]``.

    ``lo``/``hi`` are floats or ``None`` (unbounded). ``lam0`` (m non-negative numbers: a tensor,
    array or list) warm-starts the multipliers, unless zero has the higher dual value (then the
    solver starts from zero; ``keep_start=True`` starts from ``lam0`` regardless, which the tests
    use to drive the solver from given points). ``z_range`` is :func:`value_range` of ``z`` when
    the caller has it. Returns a :class:`SolveResult`; ``converged`` is False when the iteration
    limit was hit (the caller checks feasibility and decides).
    """
    m = cs.n_rows
    if m == 0:
        return SolveResult(clip(z, lo, hi), cs.h.detach().new_zeros(0), 0, True)
    if z_range is None:
        z_range = value_range(z)
    scale = scale_of(z_range, cs, lo, hi)
    # Group sums of n float64 values carry rounding errors of order n * 1e-16: the attainable
    # accuracy degrades with n (1e-10 relative at a million samples).
    atol = (tol + ROUNDING * z.shape[0]) * scale
    bounded = lo is not None or hi is not None
    # Two sides: the passes over the n outputs are ConstraintSet methods (compiled loops on the
    # CPU, tensor operations on other devices); everything of size m (multipliers, residuals,
    # Newton systems) is numpy on the host, where an operation on a few dozen numbers costs a
    # microsecond instead of several.
    h = cs.host_h
    lam = np.zeros(m) if lam0 is None else np.maximum(_host(lam0), 0.0)

    buffers = _workspace(z)

    def vacant(*used):
        """A buffer of shape (n,) that holds none of ``used``."""
        free = [b for b in buffers if all(b is not u for u in used)]
        if not free:
            buffers.append(torch.empty_like(z))
            return buffers[-1]
        return free[0]

    def evaluate(lam, y):
        """``y(lam)`` written into ``y``, the dual gradient ``G y - h``, ``1/2 ||y - z||^2`` and
        the per-atom mass of the free coordinates (for the Newton system at ``y``)."""
        sums, free_mass, distance = cs.clip_shift(z, lam, lo, hi, out=y)
        return y, cs.host_coef @ sums - h, distance, free_mass

    def finish(y, lam, n_iter, converged):
        buffers[:] = [b for b in buffers if b is not y]  # the caller owns it now
        return SolveResult(y, _device_tensor(lam, y.device), n_iter, converged)

    def value_of(lam, residual, distance):  # the dual function
        return distance + math.fsum((lam * residual).tolist())

    families = cs.pair_families
    y, residual, distance, free_mass = evaluate(lam, vacant())
    if lam.any() and not keep_start:
        # A warm start is a guess: when the given multipliers fit this batch worse than none at
        # all (a lower dual value; the value at zero is the distance), start from zero. Small
        # training batches, whose small groups' means jump from batch to batch, often do.
        cold = evaluate(np.zeros(m), vacant(y))
        if cold[2] > value_of(lam, residual, distance):
            lam = np.zeros(m)
            y, residual, distance, free_mass = cold
    full_hessian = cs.gram()  # G G^T; cached on cs
    full_diagonal = full_hessian.diagonal()
    ridge = MIN_RIDGE  # relative Levenberg-Marquardt damping, adapted below
    best, stalled = float("inf"), 0
    for n_iter in range(max_iter + 1):
        # The stopping test and the choice of rows are on Python lists of the m numbers: for a few
        # dozen entries that costs less than numpy's per-call overhead.
        lam_list, residual_list = lam.tolist(), residual.tolist()
        if families:
            lam_list = _tree_flows(lam_list, families)
            lam = np.array(lam_list)
        value = value_of(lam, residual, distance)
        worst = max(abs(r) if a > 0 else r for a, r in zip(lam_list, residual_list))
        if worst <= atol or n_iter == max_iter:
            return finish(y, lam, n_iter, worst <= atol)
        # At the rounding floor the residual stops decreasing: give up rather than spin, and let
        # the caller's feasibility check judge the point.
        stalled = stalled + 1 if worst > 0.9 * best and worst < 1e-9 * scale else 0
        best = min(best, worst)
        if stalled >= 5:
            return finish(y, lam, n_iter, False)
        # Newton on the multipliers that may move: not those at zero whose row is satisfied, and
        # for group pairs only a forest of them (the others would make the system singular).
        # A satisfied row whose multiplier is a rounding leftover (tiny but positive) goes to zero
        # now rather than into the Newton system: there the projection onto lam >= 0 would undo
        # the step along it, and the step could stop being an ascent direction.
        rows, pinned = _newton_rows(lam_list, residual_list, families,
                                    threshold=1e-9 * max(lam_list))
        if pinned:
            lam[list(pinned)] = 0.0
            value = value_of(lam, residual, distance)
        if not rows:  # every row satisfied at zero but for rounding leftovers: re-evaluate
            y, residual, distance, free_mass = evaluate(lam, vacant(y))
            continue
        rows = np.asarray(rows)
        block = (rows[:, None], rows)
        full = full_hessian[block]
        hessian = cs.gram(free_mass)[block] if bounded else full
        flat = hessian.diagonal() <= 1e-9 * full.diagonal()
        if flat.any():
            # A row with (almost) every coordinate clipped: the dual is linear along it, and the
            # Newton step would be unbounded. Curvature as if its coordinates were free gives a
            # step that stops short of the next breakpoint; the step along such rows is then
            # doubled while the dual keeps growing, to reach that breakpoint in a few evaluations.
            hessian = full
        rhs = residual[rows]
        # Rows can still be dependent (two attributes whose groups coincide in the batch, or a
        # custom constraint): a Levenberg-Marquardt ridge keeps the Newton step bounded. It grows
        # when backtracking alone does not find an ascent step and shrinks after full steps.
        diag = full_diagonal[rows].max()
        alpha, direction = 1.0, None
        while True:
            if direction is None:
                direction = _solve(hessian + ridge * diag * np.eye(len(rows)), rhs)
            trial = lam.copy()
            trial[rows] = np.maximum(lam[rows] + alpha * direction, 0.0)
            y_t, residual_t, distance_t, free_mass_t = evaluate(trial, vacant(y))
            value_t = value_of(trial, residual_t, distance_t)
            # Armijo on the concave dual, with an allowance for rounding in value at the optimum.
            gain = math.fsum((residual * (trial - lam)).tolist())
            slack = 1e-14 * (abs(value) + 1.0)
            if value_t >= value + 1e-4 * gain - slack or alpha < 1e-12:
                break
            if alpha > 0.03 or ridge >= 1.0:
                alpha *= _backtrack(value, gain, value_t)
            else:
                ridge, alpha, direction = min(1.0, ridge * 1e2), 1.0, None
        flat_rows = rows[flat]

        def still_rising(point, gradient):  # the dual grows along the flat rows' step here
            return float(gradient[flat_rows] @ (point[flat_rows] - lam[flat_rows])) > 0

        stretch = 1.0
        while (flat_rows.size and alpha == 1.0 and stretch < 2.0**40
               and still_rising(trial, residual_t)):
            stretch *= 2
            longer = lam.copy()
            longer[rows] = np.maximum(lam[rows] + np.where(flat, stretch, 1.0) * direction, 0.0)
            y_l, residual_l, distance_l, free_mass_l = evaluate(longer, vacant(y, y_t))
            value_l = value_of(longer, residual_l, distance_l)
            if not value_l > value_t:
                break
            trial, y_t, residual_t, distance_t, free_mass_t, value_t = (
                longer, y_l, residual_l, distance_l, free_mass_l, value_l)
        ridge = max(ridge / 1e3, MIN_RIDGE) if alpha == 1.0 else ridge
        lam, y, residual, distance, free_mass = trial, y_t, residual_t, distance_t, free_mass_t


def _host(values):
    """A float64 numpy array of ``values`` (tensor on any device, array or list)."""
    if isinstance(values, torch.Tensor):
        return _host_array(values)
    return np.asarray(values, dtype=np.float64)


def _solve(matrix, rhs):
    """``matrix^-1 rhs`` through LAPACK's LU solver: numpy's checks and error-state handling
    around it cost several times the solve of these few dozen unknowns."""
    _, _, solution, info = lapack.dgesv(matrix, rhs)
    if info:
        raise np.linalg.LinAlgError("singular Newton system")
    return solution


def _backtrack(value, gain, value_t):
    """Factor by which to shorten a step that failed the Armijo test, in [0.1, 0.5].

    The dual along the step is concave: the quadratic through its value at the start, its
    first-order gain and its value at the rejected step peaks at ``gain / (2 * drop)`` of the
    step, ``drop`` being how far the value fell short of the linear gain.
    """
    drop = value + gain - value_t
    if not (gain > 0 and drop > 0):
        return 0.5
    return min(0.5, max(0.1, gain / (2 * drop)))


#: largest batch whose scratch vectors are kept between calls (32 MB each in float64)
WORKSPACE_MAX = 1 << 22
_workspaces = threading.local()


def _workspace(z):
    """Scratch vectors shaped like ``z``, kept between the solves of this thread.

    Fresh vectors of millions of entries cost more than the arithmetic on them: the allocator
    returns them to the system when they are freed, and each new one is page-faulted in again.
    A solve takes what it needs from this list (the vector it returns is removed from it).
    """
    key = (z.shape[0], z.dtype, z.device)
    if z.shape[0] > WORKSPACE_MAX:
        return []
    if getattr(_workspaces, "key", None) != key:
        _workspaces.key, _workspaces.buffers = key, []
    return _workspaces.buffers


def _tree_flows(lam, families):
    """The same net multiplier of every group, carried by a forest of group pairs.

    In a family of pair rows ``stat_u - stat_v <= c`` the outputs depend on the multipliers only
    through each group's net flow ``sum_v lam_uv - sum_u lam_ug``, and the dual objective loses
    ``c`` per unit of total flow. Routing the net flows from the groups that give to the groups
    that take (north-west corner rule) leaves the outputs unchanged, never increases the total
    flow, and uses at most ``k - 1`` pairs that form a forest: independent rows. (A family of two
    opposite rows with different ``c``: routing cancels their common flow, which loses
    ``c_uv + c_vu >= 0`` per unit; see :class:`~skfair.constraints.ConstraintSet`.)
    """
    lam = list(lam)
    for family in families:
        net = {}
        for r, u, v in family:
            if lam[r] > 0:
                net[u] = net.get(u, 0.0) + lam[r]
                net[v] = net.get(v, 0.0) - lam[r]
                lam[r] = 0.0
        # Net flows that are rounding noise of the others are dropped, not routed as tiny flows.
        noise = 1e-13 * max(map(abs, net.values()), default=0.0)
        give = [[g, x] for g, x in net.items() if x > noise]
        take = [[g, -x] for g, x in net.items() if x < -noise]
        if not give or not take:
            continue
        row = {(u, v): r for r, u, v in family}
        i = j = 0
        while i < len(give) and j < len(take):
            flow = min(give[i][1], take[j][1])
            lam[row[give[i][0], take[j][0]]] += flow
            give[i][1] -= flow
            take[j][1] -= flow
            if give[i][1] <= noise:
                i += 1
            if take[j][1] <= noise:
                j += 1
    return lam


def _newton_rows(lam, residual, families, threshold):
    """Rows whose multipliers the Newton step moves, in increasing order, and the pinned rows.

    Pinned: rows whose multiplier is at most ``threshold`` (>= 0, so zeros included) while the
    row is satisfied; they are set to zero and held there for this step. Pair rows: the
    positive ones (a forest, see :func:`_tree_flows`), then the violated ones by decreasing
    violation as long as they join two trees, so that the rows stay independent. Other rows:
    all that are not pinned.
    """
    pinned = {r for r, (a, g) in enumerate(zip(lam, residual)) if a <= threshold and g < 0}
    rows, in_family = [], set()
    for family in families:
        root = {}

        def find(g):
            while root.get(g, g) != g:
                g = root[g]
            return g

        for r, u, v in sorted(family, key=lambda t: (lam[t[0]] <= 0, -residual[t[0]])):
            in_family.add(r)
            if r in pinned:
                continue
            a, b = find(u), find(v)
            if a != b:
                root[a] = b
                rows.append(r)
    rows.extend(r for r in range(len(lam)) if r not in in_family and r not in pinned)
    return sorted(rows), pinned


def vjp(grad_y, y, lam, cs, lo, hi):
    """Vector-Jacobian products of the projection at its solution.

    Implicit differentiation of the KKT system on the free coordinates ``F`` and the active rows
    ``S``: ``dy_F = P dz_F + G_SF^T M^+ dh_S`` with ``M = G_SF G_SF^T`` and
    ``P = I - G_SF^T M^+ G_SF``; clipped coordinates do not move. Returns ``(grad_z, grad_h)``,
    in ``O(n m + m^3)`` without any n x n matrix (the m x m algebra on the host, as in
    :func:`solve`).
    """
    active = np.flatnonzero(_host(lam) > 0)
    u = np.zeros(lam.shape[0])
    if active.size:
        rhs, free_mass = cs.free_sums(grad_y, y, lo, hi)
        # Minimum-norm solution of the (possibly singular: rows whose outputs are all clipped)
        # system M u = G_SF grad_F through its eigendecomposition, as a pseudo-inverse would.
        eigenvalues, vectors = np.linalg.eigh(cs.gram(free_mass)[active[:, None], active])
        keep = eigenvalues > eigenvalues[-1] * active.size * np.finfo(np.float64).eps
        vectors = vectors[:, keep]
        u[active] = vectors @ ((vectors.T @ rhs[active]) / eigenvalues[keep])
    return cs.free_shift(grad_y, y, u, lo, hi), _device_tensor(u, grad_y.device)
