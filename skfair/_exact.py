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
:class:`~skfair.constraints.ConstraintSet`: a few passes over the ``n`` outputs (written into
preallocated buffers) and small dense algebra on the ``m`` rows.
"""

import math

import torch

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


def scale_of(z, h, lo, hi):
    """Magnitude of the problem's values; tolerances are relative to it."""
    scale = 1.0
    for values in (z, h.detach()):
        if values.numel():
            scale = max(scale, *(abs(float(v)) for v in torch.aminmax(values)))
    for bound in (lo, hi):
        if bound is not None:
            scale = max(scale, abs(bound))
    return scale


def solve(z, cs, lo, hi, lam0=None, tol=SOLVE_TOL, max_iter=MAX_ITER, scale=None):
    """Project ``z`` (float64, shape (n,)) onto the constraint set ``cs`` within ``[lo, hi]``.

    ``lo``/``hi`` are floats or ``None`` (unbounded). ``lam0`` warm-starts the multipliers;
    ``scale`` is :func:`scale_of` of the problem when the caller has it. Returns a
    :class:`SolveResult`; ``converged`` is False when the iteration limit was hit (the caller
    checks feasibility and decides).
    """
    h = cs.h.detach()
    m = cs.n_rows
    if m == 0:
        return SolveResult(clip(z, lo, hi), h.new_zeros(0), 0, True)
    if scale is None:
        scale = scale_of(z, h, lo, hi)
    # Group sums of n float64 values carry rounding errors of order n * 1e-16: the attainable
    # accuracy degrades with n (1e-10 relative at a million samples).
    atol = (tol + ROUNDING * z.shape[0]) * scale
    lam = h.new_zeros(m) if lam0 is None else lam0.to(h).clamp(min=0)
    bounded = lo is not None or hi is not None

    # Evaluations write into preallocated buffers (untouched ones cost nothing): at a million
    # samples, fresh 8 MB tensors cost more (page faults) than the arithmetic.
    scratch, buffers = torch.empty_like(z), [torch.empty_like(z) for _ in range(3)]

    def vacant(*used):
        return next(b for b in buffers if all(b is not u for u in used))

    def evaluate(lam, y):
        torch.sub(z, cs.rmatvec(lam, out=scratch), out=y)
        if bounded:
            y.clamp_(lo, hi)
        residual = cs.matvec(y) - h  # gradient of the dual
        torch.sub(y, z, out=scratch)
        return y, residual, 0.5 * float(torch.dot(scratch, scratch))

    families = cs.pair_families
    if not bool(lam.any()) and _within(z, lo, hi):
        y, residual, distance = z, cs.matvec(z) - h, 0.0  # y(0) = z: only the rows to evaluate
    else:
        y, residual, distance = evaluate(lam, vacant())
    full_hessian = cs.gram()  # G G^T; cached on cs, O(m^2 n_atoms)
    full_diagonal = full_hessian.diagonal().tolist()
    ridge = MIN_RIDGE  # relative Levenberg-Marquardt damping, adapted below
    best, stalled = float("inf"), 0
    # The multipliers and residuals are short (m entries): the bookkeeping of every iteration is
    # done on Python lists, which costs less than a dozen tiny tensor operations.
    lam_list, residual_list = lam.tolist(), residual.tolist()
    for n_iter in range(max_iter + 1):
        if families:
            lam_list = _tree_flows(lam_list, families)
            lam = lam.new_tensor(lam_list)
        value = distance + math.fsum(a * b for a, b in zip(lam_list, residual_list))
        worst = max(abs(r) if a > 0 else r for a, r in zip(lam_list, residual_list))
        if worst <= atol or n_iter == max_iter:
            return SolveResult(z.clone() if y is z else y, lam, n_iter, worst <= atol)
        # At the rounding floor the residual stops decreasing: give up rather than spin, and let
        # the caller's feasibility check judge the point.
        stalled = stalled + 1 if worst > 0.9 * best and worst < 1e-9 * scale else 0
        best = min(best, worst)
        if stalled >= 5:
            return SolveResult(y, lam, n_iter, False)
        # Newton on the multipliers that may move: not those at zero whose row is satisfied, and
        # for group pairs only a forest of them (the others would make the system singular).
        # A satisfied row whose multiplier is a rounding leftover (tiny but positive) goes to zero
        # now rather than into the Newton system: there the projection onto lam >= 0 would undo
        # the step along it, and the step could stop being an ascent direction.
        threshold = 1e-9 * max(lam_list)
        rows, pinned = _newton_rows(lam_list, residual_list, families, threshold)
        if pinned:
            lam_list = [0.0 if r in pinned else a for r, a in enumerate(lam_list)]
            lam = lam.new_tensor(lam_list)
            value = distance + math.fsum(a * b for a, b in zip(lam_list, residual_list))
        if not rows:  # every row satisfied at zero but for rounding leftovers: re-evaluate
            y, residual, distance = evaluate(lam, vacant(y))
            residual_list = residual.tolist()
            continue
        free_rows = None if len(rows) == m else torch.tensor(rows, device=lam.device)
        hessian = cs.gram(_free(y, lo, hi), buffer=scratch) if bounded else full_hessian
        full = full_hessian
        if free_rows is not None:
            hessian = hessian[free_rows[:, None], free_rows]
            full = full[free_rows[:, None], free_rows]
        diagonal = hessian.diagonal().tolist()
        flat = [d <= 1e-9 * full_diagonal[r] for d, r in zip(diagonal, rows)]
        if True in flat:
            # A row with (almost) every coordinate clipped: the dual is linear along it, and the
            # Newton step would be unbounded. Curvature as if its coordinates were free gives a
            # step that stops short of the next breakpoint; the step along such rows is then
            # doubled while the dual keeps growing, to reach that breakpoint in a few evaluations.
            hessian = full
        rhs = residual if free_rows is None else residual[free_rows]
        # Rows can still be dependent (two attributes whose groups coincide in the batch, or a
        # custom constraint): a Levenberg-Marquardt ridge keeps the Newton step bounded. It grows
        # when backtracking alone does not find an ascent step and shrinks after full steps.
        diag = max(full_diagonal[r] for r in rows)
        alpha, direction = 1.0, None
        while True:
            if direction is None:
                system = hessian.clone()
                system.diagonal().add_(ridge * diag)
                direction = torch.linalg.solve(system, rhs)
            if free_rows is None:
                trial = lam + alpha * direction
            else:
                trial = lam.index_add(0, free_rows, alpha * direction)
            trial.clamp_(min=0)
            y_t, residual_t, distance_t = evaluate(trial, vacant(y))
            trial_list, residual_t_list = trial.tolist(), residual_t.tolist()
            value_t = distance_t + math.fsum(a * r for a, r in zip(trial_list, residual_t_list))
            # Armijo on the concave dual, with an allowance for rounding in value at the optimum.
            gain = math.fsum(r * (b - a) for r, a, b in zip(residual_list, lam_list, trial_list))
            slack = 1e-14 * (abs(value) + 1.0)
            if value_t >= value + 1e-4 * gain - slack or alpha < 1e-12:
                break
            if alpha > 0.03 or ridge >= 1.0:
                alpha *= 0.5
            else:
                ridge, alpha, direction = min(1.0, ridge * 1e2), 1.0, None
        flat_rows = [r for r, f in zip(rows, flat) if f]

        def still_rising(point, gradient):  # the dual grows along the flat rows' step here
            return math.fsum(gradient[r] * (point[r] - lam_list[r]) for r in flat_rows) > 0

        stretch = 1.0
        while (flat_rows and alpha == 1.0 and stretch < 2.0**40
               and still_rising(trial_list, residual_t_list)):
            stretch *= 2
            step = direction * direction.new_tensor([stretch if f else 1.0 for f in flat])
            longer = (lam + step if free_rows is None else lam.index_add(0, free_rows, step))
            longer.clamp_(min=0)
            y_l, residual_l, distance_l = evaluate(longer, vacant(y, y_t))
            longer_list, residual_l_list = longer.tolist(), residual_l.tolist()
            value_l = distance_l + math.fsum(a * r for a, r in zip(longer_list, residual_l_list))
            if not value_l > value_t:
                break
            trial, y_t, residual_t = longer, y_l, residual_l
            distance_t, value_t = distance_l, value_l
            trial_list, residual_t_list = longer_list, residual_l_list
        ridge = max(ridge / 1e3, MIN_RIDGE) if alpha == 1.0 else ridge
        lam, y, residual, distance = trial, y_t, residual_t, distance_t
        lam_list, residual_list = trial_list, residual_t_list


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
    row is satisfied; they are set to zero and held there for this step. Pair rows: the positive ones (a forest, see
    :func:`_tree_flows`), then the violated ones by decreasing violation as long as they join two
    trees, so that the rows stay independent. Other rows: all that are not pinned.
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


def _within(z, lo, hi):
    """Whether every entry of ``z`` lies within the bounds."""
    if lo is None and hi is None:
        return True
    low, high = (float(v) for v in torch.aminmax(z))
    return (lo is None or low >= lo) and (hi is None or high <= hi)


def _free(y, lo, hi):
    """Coordinates strictly inside the bounds."""
    if lo is None:
        return y < hi
    if hi is None:
        return y > lo
    return (y > lo) & (y < hi)


def vjp(grad_y, y, lam, cs, lo, hi):
    """Vector-Jacobian products of the projection at its solution.

    Implicit differentiation of the KKT system on the free coordinates ``F`` and the active rows
    ``S``: ``dy_F = P dz_F + G_SF^T M^+ dh_S`` with ``M = G_SF G_SF^T`` and
    ``P = I - G_SF^T M^+ G_SF``; clipped coordinates do not move. Returns ``(grad_z, grad_h)``,
    in ``O(n m + m^3)`` without any n x n matrix.
    """
    free = None if lo is None and hi is None else _free(y, lo, hi)
    grad_free = grad_y if free is None else grad_y * free
    active = torch.nonzero(lam > 0).squeeze(1)
    if active.numel() == 0:
        return grad_free, torch.zeros_like(lam)
    gram = cs.gram(free)[active[:, None], active]
    u = torch.linalg.pinv(gram, hermitian=True) @ cs.matvec(grad_free)[active]
    grad_h = torch.zeros_like(lam).index_copy_(0, active, u)
    grad_z = grad_y - cs.rmatvec(grad_h)
    return grad_z if free is None else grad_z.mul_(free), grad_h
