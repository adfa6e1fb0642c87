"""The guarantee check: the outputs a projection returns are re-checked, never trusted.

Every backend's outputs are checked from the values themselves (one compiled pass over them,
:func:`check`), not from the solver's residuals: the rows must hold to :data:`GUARANTEE_TOL`
times the outputs' scale and the bounds exactly. An exact solve that needed a second solve (or
a recentred one) is accepted only when its outputs are certified, from the KKT conditions, to
be the projection of raw outputs near the given ones (:func:`certified`): by the solver's
multipliers, or when those do not, by multipliers searched for the outputs themselves. The
last resort of small batches, solved in extended precision, is certified the same way in that
precision (:func:`skfair._precise.backward_error`).
"""

import math

import numpy as np

from ._kernels import atom_shift, clip_shift, row_values, violation_and_range

#: the largest violation ``max(G y - h)`` the returned outputs may have, relative to their own
#: scale ``max(1, |y|, |h|)`` (never the raw outputs'): see :func:`tolerance`
GUARANTEE_TOL = 1e-9
#: how far (root mean square per sample, relative to the outputs' scale) a second solve from the
#: first one's outputs may certifiably be from the projection of the raw outputs
POLISH_TOL = 1e-6


def check(y, cs):
    """``(max(G y - h), min(y), max(y))`` from one compiled pass over ``y`` (float64, host)."""
    problem = cs.host_problem
    return violation_and_range(y, problem.atom, problem.weight, problem.rows, problem.h)


def checked(result, cs):
    """The check of an exact result's outputs: the solver's own (a pass over its output after
    the iterations), or :func:`check` of them when it carries none."""
    return result.check or check(result.host_y, cs)


def violations(check, bounds):
    """``(max(G y - h), how far y leaves the bounds, whether every output lies strictly inside
    them)`` from ``check = (max(G y - h), min(y), max(y))`` and the :class:`~skfair._bounds.
    Bounds`; the first two NaN when ``y`` is not finite."""
    violation, low, high = check
    if not (math.isfinite(low) and math.isfinite(high)):
        return float("nan"), float("nan"), False
    low_gap = math.inf if bounds.lo is None else low - bounds.lo
    high_gap = math.inf if bounds.hi is None else bounds.hi - high
    return violation, max(0.0, -low_gap, -high_gap), low_gap > 0 and high_gap > 0


def output_scale(check, cs):
    """The scale ``max(1, |y|, |h|)`` of outputs whose ``check`` is ``(violation, min y, max
    y)``: what the guarantee's tolerance is relative to (the raw outputs never enter it)."""
    h = cs.host_h
    return max(1.0, abs(check[1]), abs(check[2]), float(np.abs(h).max()) if h.size else 0.0)


def tolerance(check, cs):
    """The violation outputs with this ``check`` may have: ``GUARANTEE_TOL`` times their
    scale (NaN, so nothing passes, for outputs that are not finite)."""
    return GUARANTEE_TOL * output_scale(check, cs)


def meets_guarantee(check, cs, bounds):
    """Whether ``check`` (of some outputs) shows them within the bounds and the tolerance."""
    violation, out_of_bounds, _ = violations(check, bounds)
    return out_of_bounds <= 0 and violation <= tolerance(check, cs)


def accepted(violation, out_of_bounds, tol, backend, failures):
    """Whether a backend's outputs meet the guarantee (the rows to ``tol``, the bounds
    exactly); records why not in ``failures``.

    The violation is recomputed from the outputs, not taken from the solver's residuals: the
    guarantee does not rest on the solver being right.
    """
    if violation <= tol and out_of_bounds <= 0:
        return True
    failures.append(f"{backend}: max violation {violation:.3g}, bounds off by "
                    f"{out_of_bounds:.3g} (tolerance {tol:.3g})")
    return False


def exact_violation(result, cs, bounds, failures):
    """The violation of an exact solver's result when it meets the guarantee, else None (with
    the reason in ``failures``); from the check of its output (:func:`check` when the result
    carries none)."""
    found = checked(result, cs)
    violation, out_of_bounds, _ = violations(found, bounds)
    if not accepted(violation, out_of_bounds, tolerance(found, cs), "exact", failures):
        return None
    return violation


def certified(z, y, lam, found, cs, bounds, what, failures):
    """The multipliers that certify outputs ``y`` (with their check ``found``) to be the exact
    projection of raw outputs within ``POLISH_TOL`` times their scale plus 64 ulp of ``z``
    (:func:`backward_error`): ``lam`` when it does, else those that
    :func:`skfair._active_set.certifying_multipliers` finds for ``y``, judged by the same
    certificate; None when neither does, the reason in ``failures`` (``what`` names the
    solve).

    Far beyond the outputs' scale a solver's multipliers may be a large combination that
    cancels to within rounding, and no certificate accepts them although ``y`` is the
    projection: the search asks only whether some multipliers certify ``y``."""
    from ._active_set import certifying_multipliers

    active_tol, tol = tolerance(found, cs), POLISH_TOL * output_scale(found, cs)
    excess = backward_error(z, y, lam, cs, bounds, active_tol, tol)
    if excess <= 0:
        return lam
    searched = certifying_multipliers(z, cs, *bounds.box, y, lam, active_rows(y, cs, active_tol),
                                      allowed_error(z, tol))
    if searched is not None and backward_error(z, y, searched, cs, bounds, active_tol, tol) <= 0:
        return searched
    failures.append(f"exact: the {what} is not certified to be the projection of z "
                    f"(backward error beyond its tolerance by {excess:.3g})")
    return None


def backward_error(z, y, lam, cs, bounds, active_tol, tol):
    """How far ``y`` is from being the exact projection of raw outputs near ``z``: the largest
    excess, over the samples, of ``|z''_i - z_i|`` beyond :func:`allowed_error`, where ``y``
    is the projection of ``z''`` with the multipliers ``lam`` of the rows active at ``y``
    (:func:`active_rows`; the others' set to zero). At most 0 when ``y`` is certified;
    infinite when a kept multiplier is negative or not finite (no KKT point then)."""
    kept = np.where(active_rows(y, cs, active_tol), lam, 0.0)
    if not (np.isfinite(kept).all() and (kept >= 0).all()):
        return math.inf
    free = unclipped(z, kept, cs)
    low, high = bounds.box
    error = np.where(y >= high, np.maximum(high - free, 0.0),
                     np.where(y <= low, np.maximum(free - low, 0.0), np.abs(y - free)))
    return float((error - allowed_error(z, tol)).max(initial=-math.inf))


def active_rows(y, cs, active_tol):
    """Whether each row holds as an equality at ``y`` to within ``active_tol``: the rows whose
    multipliers a certificate keeps."""
    return row_values(cs.host_rows, _atom_sums(y, cs), cs.host_h) >= -active_tol


def allowed_error(z, tol):
    """Per sample, how far from ``z_i`` the raw output of which ``y`` is the projection may
    lie: ``tol`` plus 64 units in the last place of ``z_i``, the rounding with which ``z_i``
    enters any shift computed at its magnitude."""
    with np.errstate(over="ignore"):  # (the largest float's spacing: infinite)
        return tol + 64 * np.spacing(np.abs(z))


def unclipped(z, lam, cs):
    """``z - G^T lam``: the outputs of the multipliers ``lam`` before the bounds clip them."""
    out = np.empty_like(z)
    clip_shift(z, cs.host_atom, atom_shift(cs.host_rows, lam), cs.host_weight, -math.inf,
               math.inf, out)
    return out


def _atom_sums(y, cs):
    """Weighted sums of the host vector ``y`` over every atom of ``cs``."""
    weight = cs.host_weight
    return np.bincount(cs.host_atom, weights=y * weight if weight.size else y,
                       minlength=cs.n_atoms)
