"""Exact projection onto ``{y : G y <= h, lo <= y <= hi}`` through its m-dimensional dual.

For ``lam >= 0`` the Lagrangian ``1/2 ||y - z||^2 + lam^T (G y - h)`` is minimised over the box by
``y(lam) = clip(z - G^T lam, lo, hi)``; the dual function ``d(lam)`` is concave and piecewise
quadratic with gradient ``G y(lam) - h`` and generalised Hessian ``-G_F G_F^T`` (``F``: coordinates
not clipped). We maximise it with a projected Newton method (Bertsekas, 1982): a Newton step on the
multipliers that are not pinned at zero, an Armijo search along the projection arc. Once the clipped
set and the active rows are identified the step is exact, so the method stops after a handful of
iterations with the KKT conditions met to rounding error. Each iteration costs ``O(n + m^3)`` with the
factored ``G`` of :class:`~skfair.constraints.ConstraintSet`.
"""

import torch

#: relative accuracy the dual iterations aim for (the guarantee checked afterwards is looser)
SOLVE_TOL = 1e-11
MAX_ITER = 100
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
    if z.numel():
        scale = max(scale, float(z.abs().max()))
    if h.numel():
        scale = max(scale, float(h.detach().abs().max()))
    for bound in (lo, hi):
        if bound is not None:
            scale = max(scale, abs(bound))
    return scale


def solve(z, cs, lo, hi, lam0=None, tol=SOLVE_TOL, max_iter=MAX_ITER):
    """Project ``z`` (float64, shape (n,)) onto the constraint set ``cs`` within ``[lo, hi]``.

    ``lo``/``hi`` are floats or ``None`` (unbounded). ``lam0`` warm-starts the multipliers.
    Returns a :class:`SolveResult`; ``converged`` is False when the iteration limit was hit
    (the caller checks feasibility and decides).
    """
    h = cs.h.detach()
    m = cs.n_rows
    if m == 0:
        return SolveResult(clip(z, lo, hi), h.new_zeros(0), 0, True)
    scale = scale_of(z, h, lo, hi)
    # Group sums of n float64 values carry rounding errors of order n * 1e-16: the attainable
    # accuracy degrades with n (1e-10 relative at a million samples).
    atol = (tol + ROUNDING * z.shape[0]) * scale
    lam = h.new_zeros(m) if lam0 is None else lam0.to(h).clamp(min=0)

    def evaluate(lam):
        y = clip(z - cs.rmatvec(lam), lo, hi)
        residual = cs.matvec(y) - h  # gradient of the dual
        value = 0.5 * torch.dot(y - z, y - z) + torch.dot(lam, residual)
        return y, residual, value

    y, residual, value = evaluate(lam)
    full_hessian = None  # G G^T, computed once if a degenerate step needs it
    ridge = 1e-6  # relative Levenberg-Marquardt damping, adapted below
    best, stalled = float("inf"), 0
    for n_iter in range(max_iter):
        positive = lam > 0
        worst = float(torch.where(positive, residual.abs(), residual).max())
        if worst <= atol:
            return SolveResult(y, lam, n_iter, True)
        # At the rounding floor the residual stops decreasing: give up rather than spin, and let
        # the caller's feasibility check judge the point.
        stalled = stalled + 1 if worst > 0.9 * best and worst < 1e-9 * scale else 0
        best = min(best, worst)
        if stalled >= 5:
            return SolveResult(y, lam, n_iter, False)
        # Multipliers at zero whose row is satisfied stay at zero; Newton on the others.
        pinned = (lam <= 0) & (residual < 0)
        free_rows = torch.nonzero(~pinned).squeeze(1)
        free_coords = (y > lo if lo is not None else torch.ones_like(y, dtype=torch.bool))
        if hi is not None:
            free_coords &= y < hi
        hessian = cs.gram(free_coords)[free_rows][:, free_rows]
        if full_hessian is None:
            full_hessian = cs.gram(torch.ones_like(free_coords))
        full = full_hessian[free_rows][:, free_rows]
        if bool((hessian.diagonal() <= 1e-9 * full.diagonal()).any()):
            # A row with (almost) every coordinate clipped: the dual is flat along it, and the
            # Newton step would be unbounded. Curvature as if its coordinates were free gives a
            # step that stops short of the next breakpoint instead; the next iteration refines.
            hessian = full
        # Rows of one attribute are often linearly dependent (u-v, v-w and u-w violated at
        # once, or several groups tied at each end at the solution): the Newton system is then
        # singular. A Levenberg-Marquardt ridge keeps the step bounded; it shrinks after every
        # full step (so the fast local convergence is kept) and grows when a step overshoots.
        eye = torch.eye(len(free_rows), dtype=hessian.dtype, device=hessian.device)
        diag = float(full.diagonal().max())
        alpha = 1.0
        while True:
            step = h.new_zeros(m)
            step[free_rows] = torch.linalg.solve(hessian + ridge * diag * eye,
                                                 residual[free_rows])
            trial = (lam + alpha * step).clamp(min=0)
            trial[pinned] = 0
            y_t, residual_t, value_t = evaluate(trial)
            # Armijo on the concave dual, with an allowance for rounding in value at the optimum.
            gain = float(torch.dot(residual, trial - lam))
            slack = 1e-14 * (abs(float(value)) + 1.0)
            if float(value_t) >= float(value) + 1e-4 * gain - slack or alpha < 1e-12:
                break
            if ridge < 1.0:
                ridge = min(1.0, ridge * 100)
            else:
                alpha *= 0.5
        ridge = max(ridge / 10, 1e-12) if alpha == 1.0 else ridge
        lam, y, residual, value = trial, y_t, residual_t, value_t
    positive = lam > 0
    worst = float(torch.where(positive, residual.abs(), residual).max())
    return SolveResult(y, lam, max_iter, worst <= atol)


def vjp(grad_y, y, lam, cs, lo, hi):
    """Vector-Jacobian products of the projection at its solution.

    Implicit differentiation of the KKT system on the free coordinates ``F`` and the active rows
    ``S``: ``dy_F = P dz_F + G_SF^T M^+ dh_S`` with ``M = G_SF G_SF^T`` and
    ``P = I - G_SF^T M^+ G_SF``; clipped coordinates do not move. Returns ``(grad_z, grad_h)``,
    in ``O(n m + m^3)`` without any n x n matrix.
    """
    free = torch.ones_like(y, dtype=torch.bool)
    if lo is not None:
        free &= y > lo
    if hi is not None:
        free &= y < hi
    grad_free = torch.where(free, grad_y, torch.zeros_like(grad_y))
    grad_h = torch.zeros_like(lam)
    active = torch.nonzero(lam > 0).squeeze(1)
    if active.numel() == 0:
        return grad_free, grad_h
    gram = cs.gram(free)[active][:, active]
    u = torch.linalg.pinv(gram, hermitian=True) @ cs.matvec(grad_free)[active]
    full_u = torch.zeros_like(lam)
    full_u[active] = u
    grad_z = torch.where(free, grad_y - cs.rmatvec(full_u), torch.zeros_like(grad_y))
    grad_h[active] = u
    return grad_z, grad_h
