"""The qpth backend: the projection as a dense quadratic program for qpth's interior point.

The reference implementation (``O(n^2)`` memory, ``O(n^3)`` time): its outputs are checked like
every backend's (:mod:`skfair._guarantee`), and :func:`skfair.layer.project` falls back to the
exact solver when they fail the check.
"""

import torch

from . import _exact
from ._guarantee import accepted, check, tolerance, violations
from ._host import host_vector


def qpth_backend(z, cs, bounds, failures):
    """``(y, violation)`` from qpth within the :class:`~skfair._bounds.Bounds`, or None (with
    the reason in ``failures``)."""
    # qpth needs the checks first (its errors are fallbacks, these are the caller's).
    _exact.problem_scale(z, cs, *bounds)
    try:
        y = bounds.clip(qpth_project(z, cs, *bounds))
    except Exception as exc:  # noqa: BLE001 - a failing qpth is a fallback, not a crash
        failures.append(f"qpth: {type(exc).__name__}: {exc}")
        return None
    found = check(host_vector(y), cs)
    violation, out_of_bounds, _ = violations(found, bounds)
    if not accepted(violation, out_of_bounds, tolerance(found, cs), "qpth", failures):
        return None
    return y, violation


def qpth_project(z, cs, lo, hi):
    """The same projection as a dense QP for qpth: ``Q = 2I, p = -2z``, box rows appended."""
    try:
        from qpth.qp import QPFunction
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the qpth backend needs qpth: pip install --no-deps qpth==0.0.18 cvxpy "
            f"(see the README) ({exc})"
        ) from None
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.float64, device=z.device)
    rows, rhs = [cs.dense()], [cs.h.to(torch.float64)]
    if hi is not None:
        rows.append(eye)
        rhs.append(torch.full((n,), float(hi), dtype=torch.float64, device=z.device))
    if lo is not None:
        rows.append(-eye)
        rhs.append(torch.full((n,), -float(lo), dtype=torch.float64, device=z.device))
    G, h = torch.cat(rows), torch.cat(rhs)
    if G.shape[0] == 0:
        return z.clone()
    empty = torch.empty(0, dtype=torch.float64, device=z.device)
    # Deliberate limits: qpth's default notImprovedLim=3 stops early on an inaccurate point; the
    # feasibility check in `project` decides whether its answer is good enough.
    solve = QPFunction(verbose=-1, eps=1e-14, maxIter=60, notImprovedLim=10)
    y = solve(2 * eye, -2 * z, G, h, empty, empty)
    if y is None:  # qpth gives up on some degenerate instances
        raise RuntimeError("qpth returned no solution")
    return y[0]
