"""The exact fallback of the projection: an active-set method on the atoms' shifts.

The dual Newton iteration (:mod:`skfair._exact`) can stall where rows are linearly dependent
(several attributes whose group means share samples, pairs at epsilon near 0): its Newton
systems are singular there, and the iteration ends short of the tolerance. This method is
exact where that one is not; its memory is linear in ``n`` (plus the rows times the atoms).

At the projection every output is ``y_i = clip(z_i - w_i s_a, lo, hi)`` with one shift ``s_a``
per atom ``a`` (``s = K^T lam``, ``K`` the rows on the atoms' weighted sums ``S_a = sum_a w_i
y_i``). Once it is known which outputs are clipped, and to which bound (the *pattern*), the
problem is a small strictly convex QP in the shifts of the atoms with a free output, ``f_a =
sum_free w_i^2``::

    min 1/2 sum_a f_a s_a^2   s.t.   K (C - f * s) <= h,

``C_a`` the atom's sum at ``s = 0`` (clipped outputs at their bound, free ones at ``z_i``). It
is solved exactly by the dual active-set method of Goldfarb and Idnani (1983), which adds the
most violated row at each step and drops rows whose multiplier would turn negative, and so
copes with dependent rows. Its multipliers maximise the dual's quadratic model on the pattern:
when they clip the outputs as the pattern says, the KKT conditions hold and they are the
answer; otherwise the dual is searched for its peak along the step to them (an ascent, so no
pattern repeats) and the next pattern is read there. A pattern whose QP has no solution (the
held outputs leave the rows none) gives a proximal step instead. Started from the Newton
iteration's multipliers, whose pattern is nearly right, it takes a few patterns.

Raw outputs far beyond the problem's scale (``1e20`` with bounds ``[0, 1]``) carry rounding
errors larger than the outputs: ``z_i - w_i s_a`` is known only to a few units in the last
place of ``z_i``, which is all the guarantee's certificate asks of it. Such an output counts as
free when it is within that rounding of the bounds, the QP's rows are met to the rounding of
their sums, and the outputs of a settled pattern are then corrected at their own scale
(:func:`_corrected`: the least change of the free outputs that makes the active rows hold)
and given the multipliers that best explain them (:func:`_multipliers`). Far out, the dual is
nearly piecewise linear and the steps from the Newton iteration's multipliers may not settle:
the method starts again from those of the linear program the projection tends to
(:func:`_far_start`).
The caller checks and certifies the result, as every exact result."""

import math

import numpy as np
from scipy import sparse
from scipy.linalg import qr_delete, qr_insert, solve_triangular
from scipy.optimize import linprog, nnls

from ._constraint_set import dense_coef
from ._exact import Point, evaluate, line_search
from ._kernels import Box, atom_shift

#: an output within this times the problem's scale of a bound may count as clipped or free
PATTERN_TOL = 1e-12
#: most pattern updates before giving up
MAX_PATTERNS = 20
#: most entries of the dense rows on the atoms: beyond it the method's dense algebra over the
#: rows would cost more than it could save, and its matrix alone gigabytes
DENSE_SIZE = 10_000_000
#: most unknowns of a pattern's QP (atoms with free outputs, and rows for the proximal step):
#: its dense algebra is quadratic in them per step
MAX_UNKNOWNS = 600
#: most outputs, and most rows, of the linear program of :func:`_far_start`
LP_SIZE = 6000
#: most steps of the QP method, per unknown (a step adds a row, or drops one)
GI_STEPS = 4
#: a row is added to the active set when violated by more than this times the problem's scale
#: (a hundredth of the guarantee's tolerance: the rest is left to rounding)
VIOLATION_TOL = 1e-11
#: raw outputs are known to this many units in their last place: beyond the problem's scale
#: their rounding decides which outputs are clipped (a quarter of what the guarantee's
#: certificate allows, :func:`skfair._guarantee.backward_error`)
Z_ULPS = 16
#: most rounds of :func:`_corrected`
CORRECTIONS = 8
#: most steps of NNLS (:func:`_multipliers`), per unknown
NNLS_STEPS = 4
#: the rows' accuracy that :func:`_corrected` aims for, relative to the outputs' scale (a tenth
#: of the guarantee's)
CORRECTED_TOL = 1e-10
#: a row's normal counts as dependent on the active ones when its part outside their span is
#: below this fraction of its norm
DEPENDENCE_TOL = 1e-10
#: most rounds of :func:`certifying_multipliers` (each a linear program on the residual)
CERTIFY_ROUNDS = 3
#: float64 machine epsilon
EPSILON = float(np.finfo(np.float64).eps)


def solve(z, cs, lo, hi, lam, scale):
    """The projection of ``z`` (host float64) onto ``cs`` within ``[lo, hi]`` (floats, infinite
    where missing) from the multipliers ``lam``: ``(y, lam, n_patterns)``, or None when the
    method does not settle (no ascent, more than :data:`MAX_PATTERNS` patterns, too many atoms,
    or rows that the free outputs cannot meet) or the rows on the atoms exceed
    :data:`DENSE_SIZE` entries.

    Raw outputs whose rounding exceeds the scale's tolerance (far beyond the bounds, say) leave
    the dual nearly piecewise linear, and the steps from ``lam`` may not settle: the method is
    then started again from the multipliers of the linear program that the projection tends
    to far out (:func:`_far_start`), and when that does not settle either, the program's own
    outputs are corrected (one pattern: theirs). When none of these meets the rows at the
    outputs' scale, the first settled outputs are returned as they are (the caller's check
    judges them)."""
    if cs.n_rows * cs.n_atoms > DENSE_SIZE:
        return None
    problem = cs.host_problem
    rows_on_atoms = dense_coef(problem.rows, cs.n_atoms)  # K: G y = K S, S the atom sums
    weight = problem.weight if problem.weight.size else np.ones_like(z)
    slack = _rounding(z, scale)
    first, met = _settle(z, weight, problem, rows_on_atoms, lo, hi, lam, scale, slack)
    if met or not slack.any():
        return first
    limit = _far_start(z, weight, problem, rows_on_atoms, lo, hi)
    if limit is None:
        return first
    start, y = limit
    found, met = _settle(z, weight, problem, rows_on_atoms, lo, hi, start, scale, slack)
    if met:
        return found
    # (the linear program's free outputs are at most one per atom and row: the atoms' pivots)
    corrected = _corrected(z, weight, problem, rows_on_atoms, y, (lo < y) & (y < hi),
                           start > 0, lo, hi)
    if corrected is None:
        return first
    y, free, tight, _ = corrected
    return y, _multipliers(z, weight, problem, rows_on_atoms, y, free, tight), 1


def _far_start(z, weight, problem, rows_on_atoms, lo, hi):
    """``(lam, y)``, the multipliers (in ``z``'s units) and solution of ``max z^T y`` s.t. ``G y
    <= h``, ``lo <= y <= hi`` (the limit of the projection of ``t z`` as ``t`` grows), or None
    when HiGHS finds none (no bounds to stop ``y``) or the program has more outputs or rows
    than :data:`LP_SIZE`."""
    n_rows, n_atoms = rows_on_atoms.shape
    if max(z.size, n_rows) > LP_SIZE:
        return None
    unit = float(np.abs(z).max())
    on_atoms = sparse.csr_matrix((weight, (problem.atom, np.arange(z.size))),
                                 shape=(n_atoms, z.size))
    found = linprog(-z / unit, A_ub=sparse.csr_matrix(rows_on_atoms) @ on_atoms,
                    b_ub=problem.h, bounds=(None if lo == -math.inf else lo,
                                            None if hi == math.inf else hi),
                    method="highs-ds")
    if found.status != 0:
        return None
    return np.maximum(-found.ineqlin.marginals * unit, 0.0), np.clip(found.x, lo, hi)


def _settle(z, weight, problem, rows_on_atoms, lo, hi, lam, scale, slack):
    """:func:`solve` from the multipliers ``lam``, ``slack`` per output (:func:`_rounding`),
    and whether its outputs met the rows at their own scale (:func:`_corrected`; if not, they
    are those of the multipliers, as they are)."""
    box = Box(lo, hi)
    every_row = np.arange(rows_on_atoms.shape[0])
    lam = np.maximum(lam, 0.0)
    residual, free_mass = evaluate(z, problem, box, lam)
    closeness = 1.0
    for n_patterns in range(1, MAX_PATTERNS + 1):
        pattern = _pattern(z, weight, problem, lam, lo, hi, slack)
        target = _pattern_qp(z, weight, pattern, problem, rows_on_atoms, lo, hi, scale)
        if target is None:
            # The clipped outputs held at their bounds leave the rows no solution (the model
            # grows without end on this pattern): the proximal step, the model's peak less
            # half the squared distance from ``lam``, always exists and ascends.
            target = _pattern_qp(z, weight, pattern, problem, rows_on_atoms, lo, hi, scale,
                                 proximal=lam, closeness=closeness)
            if target is None:
                return None, False
            pattern = None  # not a pattern's solution: only a step
        if pattern is not None and _holds(z, weight, problem, target, pattern, lo, hi,
                                          PATTERN_TOL * scale + slack):
            # the multipliers solve the QP of their own pattern: the KKT conditions hold
            y = np.clip(_unclipped(z, weight, problem, target), lo, hi)
            corrected = _corrected(z, weight, problem, rows_on_atoms, y, pattern == 0,
                                   target > 0, lo, hi)
            if corrected is None:
                return (y, target, n_patterns), False
            y, free, tight, moved = corrected
            if moved:  # the multipliers are those of the moved outputs
                target = _multipliers(z, weight, problem, rows_on_atoms, y, free, tight)
            return (y, target, n_patterns), True
        # The QP's multipliers maximise the dual's quadratic model on this pattern: the step to
        # them ascends, and the search along it for the dual's peak makes every pattern's
        # step a gain (no cycle among patterns).
        step = target - lam
        slope = float(residual @ step)
        if not slope > 0 and pattern is not None:
            # another peak of a model with dependent rows, no higher than ``lam``: the
            # proximal step's peak is unique
            proximal = _pattern_qp(z, weight, pattern, problem, rows_on_atoms, lo, hi, scale,
                                   proximal=lam, closeness=closeness)
            if proximal is None:
                return None, False
            step, pattern = proximal - lam, None
            slope = float(residual @ step)
        if not slope > 0:
            return None, False
        length, (lam, residual, free_mass) = line_search(
            z, problem, box, Point(lam, residual, free_mass), every_row, step, slope)
        if length == 0.0:
            return None, False
        if pattern is None:
            # a proximal step: the next one ventures farther after a long one (a pattern whose
            # model has no peak is left along its rising ray), less far after a short one
            closeness *= 0.1 if length > 0.75 else 10.0 if length < 0.25 else 1.0
    return None, False


def _unclipped(z, weight, problem, lam):
    """``z - G^T lam``: the outputs of the multipliers ``lam`` before the bounds."""
    return z - weight * atom_shift(problem.rows, lam)[problem.atom]


def _rounding(z, scale):
    """Per output, how far rounding leaves its place unknown: :data:`Z_ULPS` units in the last
    place of ``z_i`` where that exceeds :data:`PATTERN_TOL` times the scale, else 0."""
    rounding = Z_ULPS * np.spacing(np.abs(z))
    return np.where(rounding > PATTERN_TOL * scale, rounding, 0.0)


def _pattern(z, weight, problem, lam, lo, hi, slack):
    """Which outputs the multipliers ``lam`` clip: 1 at ``hi``, -1 at ``lo``, 0 free (also
    those beyond a bound by at most their ``slack``)."""
    unclipped = _unclipped(z, weight, problem, lam)
    return np.where(unclipped >= hi + slack, 1, np.where(unclipped <= lo - slack, -1, 0))


def _holds(z, weight, problem, lam, pattern, lo, hi, tol):
    """Whether the multipliers ``lam`` clip as ``pattern`` says, up to ``tol`` (an output at a
    bound, tied with it, fits either way)."""
    unclipped = _unclipped(z, weight, problem, lam)
    return bool(np.all(np.where(pattern > 0, unclipped >= hi - tol,
                                np.where(pattern < 0, unclipped <= lo + tol,
                                         (lo - tol <= unclipped) & (unclipped <= hi + tol)))))


def _corrected(z, weight, problem, rows_on_atoms, y, free, held, lo, hi):
    """The outputs ``y`` (of some multipliers, within the bounds), with the rows met at the
    outputs' own scale and the rows ``held`` active: ``(y, free, tight, moved)``, the outputs
    left free (of those ``free``), the rows active at ``y`` and whether the outputs moved;
    None when that fails.

    Far beyond the problem's scale, ``z - G^T lam`` carries the rounding of ``z``: the free
    outputs are moved, each atom's in proportion to the weights (as a change of its shift
    would), by the least change (in the QP's metric) that meets every row and keeps those with
    a multiplier active (:func:`_goldfarb_idnani` at the outputs' scale). A free output that
    this takes beyond a bound is clipped there, and the rest corrected again. The change is a
    perturbation of ``z`` that the caller's certificate bounds."""
    n_atoms = rows_on_atoms.shape[1]
    free = free.copy()
    unit_h = float(np.abs(problem.h).max(initial=1.0))
    for n_rounds in range(CORRECTIONS + 1):
        residual = rows_on_atoms @ np.bincount(problem.atom, weights=weight * y,
                                               minlength=n_atoms) - problem.h
        unit = max(unit_h, float(np.abs(y).max(initial=1.0)))
        tol = CORRECTED_TOL * unit
        if np.all(residual <= tol) and np.all(residual[held] >= -tol):
            return y, free, residual >= -tol, n_rounds > 0
        if n_rounds == CORRECTIONS:
            return None
        root_mass = np.sqrt(np.bincount(problem.atom, weights=weight**2 * free,
                                        minlength=n_atoms))
        moving = np.flatnonzero(root_mass > 0)
        # x = sqrt(f) * (change of the shifts): row r changes by normals[r] @ x
        normals = -rows_on_atoms[:, moving] * root_mass[moving]
        change = _goldfarb_idnani(np.vstack([normals, -normals[held]]),
                                  np.concatenate([-residual, residual[held]]),
                                  VIOLATION_TOL * unit)
        if change is None:
            return None
        shift = np.zeros(n_atoms)
        shift[moving] = -(np.vstack([normals, -normals[held]]).T @ change) / root_mass[moving]
        y = np.where(free, y - weight * shift[problem.atom], y)
        beyond = free & ((y < lo) | (y > hi))
        y[beyond] = np.clip(y[beyond], lo, hi)
        free &= ~beyond
    return None


def _multipliers(z, weight, problem, rows_on_atoms, y, free, tight):
    """Multipliers ``lam >= 0`` on the ``tight`` rows whose shifts best give the ``free``
    outputs ``y`` (least squares in the QP's metric, by NNLS: a basis of independent rows,
    not a large combination of dependent ones that cancels)."""
    n_atoms = rows_on_atoms.shape[1]
    mass = np.bincount(problem.atom, weights=weight**2 * free, minlength=n_atoms)
    moving = np.flatnonzero(mass > 0)
    shift = np.bincount(problem.atom, weights=weight * (z - y) * free,
                        minlength=n_atoms)[moving] / mass[moving]
    root_mass = np.sqrt(mass[moving])
    lam = np.zeros(rows_on_atoms.shape[0])
    if moving.size == 0 or not np.any(tight):
        # no free output to explain, or no row to explain it with (scipy's nnls does not
        # take an empty matrix)
        return lam
    lam[tight] = nnls((rows_on_atoms[np.ix_(tight, moving)] * root_mass).T, shift * root_mass,
                      maxiter=NNLS_STEPS * (moving.size + 10))[0]
    return lam


def _pattern_qp(z, weight, pattern, problem, rows_on_atoms, lo, hi, scale, proximal=None,
                closeness=1.0):
    """The multipliers of the projection with the clipping ``pattern`` held (-1 at ``lo``, 1 at
    ``hi``, 0 free), from :func:`_goldfarb_idnani` on the shifts of the atoms with free
    outputs; None when the QP is too large or infeasible.

    With ``proximal`` (multipliers), those of the proximal problem instead: the dual's
    quadratic model on this pattern less ``closeness / 2`` times the squared distance from
    ``proximal`` (in the units of the model's mean curvature), which has a peak however the
    pattern holds the outputs. In the primal, each row ``r`` gets a slack ``e_r`` priced by
    ``e_r^2 / (2 rho) + proximal_r e_r``.
    """
    n_atoms = rows_on_atoms.shape[1]
    free = pattern == 0
    value = np.where(pattern > 0, hi, np.where(pattern < 0, lo, z))
    fixed_sums = np.bincount(problem.atom, weights=weight * value, minlength=n_atoms)
    free_mass = np.bincount(problem.atom, weights=weight**2 * free, minlength=n_atoms)
    moving = np.flatnonzero(free_mass > 0)
    n_rows = rows_on_atoms.shape[0]
    if moving.size + (0 if proximal is None else n_rows) > MAX_UNKNOWNS:
        return None
    # In x = sqrt(f) s the objective is ||x||^2 / 2 and row r reads a_r . x <= beta_r.
    normals = -rows_on_atoms[:, moving] * np.sqrt(free_mass[moving])
    beta = problem.h - rows_on_atoms @ fixed_sums
    if proximal is not None:
        curvature = np.einsum("ij,ij->i", normals, normals)
        rho = closeness * (curvature.mean() if curvature.any() else 1.0)
        # slack x_e = e / sqrt(rho) + sqrt(rho) proximal, and the objective ||(x, x_e)||^2 / 2
        normals = np.hstack([normals, -math.sqrt(rho) * np.eye(n_rows)])
        beta = beta - rho * proximal
    # (beta's rounding, from sums at the raw outputs' magnitude, is a row's tolerance too)
    tol = np.maximum(VIOLATION_TOL * scale,
                     Z_ULPS * EPSILON * (np.abs(rows_on_atoms) @ np.abs(fixed_sums)))
    return _goldfarb_idnani(normals, beta, tol)


def _goldfarb_idnani(normals, beta, tol):
    """The multipliers ``lam >= 0`` of ``min ||x||^2 / 2 s.t. normals @ x <= beta`` (rows
    violated by at most ``tol``, a number or one per row, count as met), by the dual active-set
    method of Goldfarb and Idnani; None when the rows contradict each other.

    From the unconstrained minimum ``x = 0``, the most violated row ``p`` is added: ``x`` moves
    along ``d``, the part of ``-a_p`` outside the span of the active rows, while the active
    rows' multipliers change by ``-t r`` (``r`` the coefficients of ``-a_p`` on them) and
    ``p``'s grows by ``t``; where an active multiplier would reach zero first, that row is
    dropped and the step goes on. A row in the span of the active ones (``d = 0``) moves the
    multipliers only. Every step raises the dual, so no active set repeats.
    """
    n_rows, dim = normals.shape
    x = np.zeros(dim)
    active, u = [], np.zeros(0)
    # N = -normals[active].T = Q R, kept up to date by column updates (O(dim^2) each)
    q, r_mat = np.eye(dim), np.zeros((dim, 0))
    for _ in range(GI_STEPS * (dim + 10)):
        violation = normals @ x - beta - tol
        violation[active] = -np.inf
        p = int(np.argmax(violation)) if n_rows else -1
        if p < 0 or not violation[p] > 0:
            lam = np.zeros(n_rows)
            lam[active] = u
            return lam
        n_p = -normals[p]
        u_p = 0.0
        while True:
            k = len(active)
            d = q.T @ n_p
            direction = q[:, k:] @ d[k:]
            r = solve_triangular(r_mat[:k], d[:k]) if k else np.zeros(0)
            ratios = np.where(r > 0, u / np.where(r > 0, r, 1.0), np.inf)
            drop = int(np.argmin(ratios)) if k else -1
            t1 = ratios[drop] if k else math.inf
            dependent = direction @ direction <= DEPENDENCE_TOL**2 * (n_p @ n_p)
            remaining = normals[p] @ x - beta[p]
            t2 = math.inf if dependent else remaining / (direction @ n_p)
            t = min(t1, t2)
            if not math.isfinite(t):
                return None
            if not dependent:
                x = x + t * direction
            u = u - t * r
            u_p += t
            if t == t2:
                active.append(p)
                u = np.append(u, u_p)
                q, r_mat = (qr_insert(q, r_mat, n_p, k, which="col") if k else
                            np.linalg.qr(n_p[:, None], mode="complete"))
                break
            del active[drop]
            u = np.delete(u, drop)
            q, r_mat = qr_delete(q, r_mat, drop, which="col")
    return None


def certifying_multipliers(z, cs, lo, hi, y, lam, active, allowed):
    """Multipliers ``lam >= 0`` on the ``active`` rows under which every output ``y_i`` (within
    the bounds ``[lo, hi]``) is the projection of a raw output within ``allowed_i`` of
    ``z_i``, or None when none is found (or the rows on the atoms exceed :data:`DENSE_SIZE`
    entries, or the program :data:`LP_SIZE` rows or unknowns); ``lam`` is where the search
    starts.

    Each output asks its atom's shift ``s_a = (G^T lam)_a / w_i`` for an interval: a free one
    ``|z_i - w_i s_a - y_i| <= allowed_i``, one at ``hi`` ``z_i - w_i s_a >= hi - allowed_i``,
    one at ``lo`` alike. Shifts within every interval make a linear feasibility problem in
    ``lam``; aiming at half the intervals' width, each round solves it (HiGHS, the least
    total multiplier) for the change of the multipliers, in units of the current shifts'
    largest miss, so that a shift of the raw outputs' magnitude is met to the rounding of
    that magnitude after one or two rounds."""
    n_rows, n_atoms = cs.n_rows, cs.n_atoms
    if n_rows * n_atoms > DENSE_SIZE:
        return None
    problem = cs.host_problem
    weight = problem.weight if problem.weight.size else np.ones_like(z)
    target = _shift_intervals(z, y, weight, problem.atom, n_atoms, lo, hi, allowed / 2)
    limit = _shift_intervals(z, y, weight, problem.atom, n_atoms, lo, hi, allowed)
    if np.any(target[0] > target[1]):
        return None
    asked = np.isfinite(limit[0]) | np.isfinite(limit[1])
    if max(int(active.sum()), 2 * int(asked.sum())) > LP_SIZE:
        return None
    # the shifts of the asking atoms per unit of each active row's multiplier
    on_shifts = sparse.csr_matrix(dense_coef(problem.rows, n_atoms)[np.ix_(active, asked)].T)
    (low, high), (least, most) = [(a[asked], b[asked]) for a, b in (target, limit)]
    found = np.maximum(lam[active], 0.0)
    for n_rounds in range(CERTIFY_ROUNDS + 1):
        shifts = on_shifts @ found
        if np.all((least <= shifts) & (shifts <= most)):
            out = np.zeros(n_rows)
            out[active] = found
            return out
        unit = float(np.maximum(low - shifts, shifts - high).max())
        # (no multiplier to change, or shifts that overflowed: nothing a round can mend)
        if n_rounds == CERTIFY_ROUNDS or not 0 < unit < math.inf or not found.size:
            return None
        # (HiGHS takes bounds beyond 1e20 for none at all: the change is capped far inside)
        change = linprog(np.ones(found.size), A_ub=sparse.vstack([on_shifts, -on_shifts]),
                         b_ub=np.r_[np.minimum((high - shifts) / unit, CHANGE_CAP),
                                    np.minimum((shifts - low) / unit, CHANGE_CAP)],
                         bounds=np.c_[np.maximum(-found / unit, -CHANGE_CAP),
                                      np.full(found.size, np.inf)],
                         method="highs-ds")
        if change.status != 0:
            return None
        found = np.maximum(found + change.x * unit, 0.0)
    return None


#: the largest change (in units of the shifts' miss) a round of :func:`certifying_multipliers`
#: may ask of a shift or a multiplier
CHANGE_CAP = 1e9


def _shift_intervals(z, y, weight, atom, n_atoms, lo, hi, allowed):
    """``(low, high)``: per atom, the shifts ``s_a`` under which each of its outputs ``y_i``
    is the projection of a raw output within ``allowed_i`` of ``z_i`` (infinite where no
    output asks; samples of weight 0 do not move and ask nothing)."""
    moving = weight > 0
    w = weight[moving]
    z, y, allowed = z[moving], y[moving], allowed[moving]
    at_low, at_high = y <= lo, y >= hi
    below = np.where(at_low, z - lo - allowed, np.where(at_high, -np.inf, z - y - allowed))
    above = np.where(at_high, z - hi + allowed, np.where(at_low, np.inf, z - y + allowed))
    low, high = np.full(n_atoms, -np.inf), np.full(n_atoms, np.inf)
    np.maximum.at(low, atom[moving], below / w)
    np.minimum.at(high, atom[moving], above / w)
    return low, high
