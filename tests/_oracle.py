"""An independent oracle of the fairness projection's guarantee.

Shared by ``tests/test_guarantee_properties.py`` and ``benchmarks/guarantee_fuzz.py``. Nothing
here uses skfair's constraint rows or solver: group means are recomputed with numpy from the
group codes, the reference projection is a generic conic solver (Clarabel through cvxpy), and
the feasibility of mean-residual problems with bounds is decided in closed form (one attribute,
or the intersection of several: the groups partition the samples) or by a linear program
(several marginal attributes).

The tolerances (see :func:`tolerance`):

* distance: ``||y - z||`` at most ``1e-7 * max(1, ||y_ref - z||)`` above the reference's
  (plus the rounding of outputs of the scale below, in float32 or float64), and ``max |y - y_ref| <= 1e-5 * max(scale, ||y_ref - z||)`` (the
  reference's own accuracy in ``y`` degrades with the distance it moves);
* bounds: none; every output lies within the bounds exactly, compared in the returned dtype;
* float64 outputs: a fairness gap may exceed epsilon by at most ``1e-9 * scale``;
* float32 outputs: by at most ``2 * eps32 * scale`` (``eps32 = 2**-23``: casting an exact
  solution to float32 moves every output by half an ulp, every group mean by at most that and a
  gap by at most twice that);

where ``scale = max(1, epsilon, max |mean target of a group|, hi - lo)`` with bounds, and
``max(1, epsilon, max |mean target of a group|, max |y|)`` without: the size of the outputs and
of the right-hand sides, never of ``z``.
"""

import dataclasses
import math
import time
from collections import Counter

import numpy as np
import torch

BUILTINS = ("demographic_parity", "equalized_odds", "equal_opportunity", "mean_residual")
LABEL_CELLS = {"demographic_parity": (None,), "equalized_odds": (0, 1),
               "equal_opportunity": (1,), "mean_residual": (None,)}
EPSILONS = (0.0, 1e-9, 1e-3, 0.05, 1.0, 1e6)
BOUNDS = ((0.0, 1.0), None, (-5.0, 3.0))
EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
#: largest n for which the reference projection is solved
REFERENCE_MAX_N = 300


@dataclasses.dataclass
class Instance:
    z: np.ndarray                 # float32 or float64: the dtype given to the layer
    groups: np.ndarray            # int64 (n, n_attributes)
    constraint: str
    epsilon: float
    bounds: tuple = (0.0, 1.0)
    y_true: np.ndarray = None     # float64 (n,) or None
    sample_weight: np.ndarray = None
    intersectional: bool = False

    @property
    def n(self):
        return len(self.z)

    def family(self):
        b = "none" if self.bounds is None else f"({self.bounds[0]:g},{self.bounds[1]:g})"
        return (self.constraint, b, str(self.z.dtype))

    def snippet(self):
        """Copy-pasteable code reproducing the call."""
        def arr(a, dtype):
            return f"torch.tensor({np.asarray(a).tolist()!r}, dtype=torch.{dtype})"
        lines = ["import torch", "from skfair import FairnessLayer",
                 f"layer = FairnessLayer({self.constraint!r}, epsilon={self.epsilon!r}, "
                 f"bounds={self.bounds!r}, solver='exact', "
                 f"intersectional={self.intersectional!r})",
                 f"z = {arr(self.z, self.z.dtype)}",
                 f"groups = torch.tensor({self.groups.tolist()!r})"]
        call = "y = layer(z, groups"
        if self.y_true is not None:
            lines.append(f"y_true = {arr(self.y_true, 'float64')}")
            call += ", y_true=y_true"
        if self.sample_weight is not None:
            lines.append(f"w = {arr(self.sample_weight, 'float64')}")
            call += ", sample_weight=w"
        lines.append(call + ")")
        return "\n".join(lines)


def run_layer(inst):
    """The layer's output as a numpy array in the returned dtype (exceptions propagate)."""
    from skfair import FairnessLayer

    layer = FairnessLayer(inst.constraint, epsilon=inst.epsilon, bounds=inst.bounds,
                          solver="exact", intersectional=inst.intersectional)
    kwargs = {}
    if inst.y_true is not None:
        kwargs["y_true"] = torch.as_tensor(inst.y_true, dtype=torch.float64)
    if inst.sample_weight is not None:
        kwargs["sample_weight"] = torch.as_tensor(inst.sample_weight, dtype=torch.float64)
    y = layer(torch.as_tensor(inst.z), torch.as_tensor(inst.groups), **kwargs)
    return y.detach().numpy()


def constraint_set(inst):
    """The layer's constraint set of the instance (white-box tests of its solvers)."""
    from skfair import FairnessLayer
    from skfair.constraints import intersect_groups
    from skfair.layer import as_group_matrix

    layer = FairnessLayer(inst.constraint, epsilon=inst.epsilon, bounds=inst.bounds)
    groups = as_group_matrix(torch.as_tensor(inst.groups))
    if inst.intersectional:
        groups = intersect_groups(groups)
    as_tensor = (lambda a: None if a is None else torch.as_tensor(a, dtype=torch.float64))
    return layer.constraint.build(groups, epsilon=inst.epsilon, y_true=as_tensor(inst.y_true),
                                  sample_weight=as_tensor(inst.sample_weight))


# --- group means ---------------------------------------------------------------------------

def partitions(inst):
    """The groups whose means are compared: a list of ``(cell, members)`` per attribute (or
    per combination when intersectional) and label cell; ``members`` a list of index arrays of
    the groups with positive total weight in that cell."""
    w = _weights(inst)
    columns = ([inst.groups] if inst.intersectional
               else [inst.groups[:, [a]] for a in range(inst.groups.shape[1])])
    out = []
    for a, codes in enumerate(columns):
        for label in LABEL_CELLS[inst.constraint]:
            inside = np.ones(inst.n, bool) if label is None else inst.y_true == label
            index = {}
            for i in np.flatnonzero(inside):
                index.setdefault(tuple(codes[i]), []).append(i)
            members = [np.array(m) for m in index.values() if w[m].sum() > 0]
            out.append(((a, label), members))
    return out


#: raw outputs farther than this from 0, or positive sample weights spanning a larger ratio,
#: put an instance beyond the range where the layer is exact today (see :func:`far_out`)
FAR_OUT = 1e6
#: raw outputs farther outside the bounds than this times their width are "far out" too
FAR_OUTSIDE = 100.0
#: the most pair rows an instance may have to be run (see :func:`pair_rows`)
MAX_PAIR_ROWS = 1_000_000


def far_out(inst):
    """Whether the instance lies beyond the range where the layer is exact today: a raw output
    more than ``FAR_OUTSIDE`` times the bounds' width (at least 1) outside them, or farther
    than ``FAR_OUT`` from 0 without bounds, or positive sample weights spanning a ratio above
    ``FAR_OUT``. The layer may refuse such an instance with RuntimeError ("The fairness
    projection failed") when it cannot certify its answer: never silently unfair, but not yet
    always exact (an open part of the guarantee work, reported by the fuzzing script)."""
    w = _weights(inst)
    positive = w[w > 0]
    spread = positive.max() / positive.min() if positive.size else 1.0
    z = inst.z.astype(np.float64)
    if inst.bounds is None:
        far = np.max(np.abs(z), initial=0.0) > FAR_OUT
    else:
        lo, hi = inst.bounds
        outside = np.maximum(np.maximum(lo - z, z - hi), 0.0)
        far = np.max(outside, initial=0.0) > FAR_OUTSIDE * max(1.0, hi - lo)
    return bool(far or spread > FAR_OUT)


def pair_rows(inst):
    """The number of rows the layer builds: ``k (k - 1)`` ordered pairs per compared cell of
    ``k`` groups (2 rows per group for mean_residual). Instances above ``MAX_PAIR_ROWS`` (about
    a thousand groups present together) are not run: a number per row adds up, and the
    conic reference on thousands of groups is slow."""
    counts = [len(members) for _, members in partitions(inst)]
    if inst.constraint == "mean_residual":
        return sum(2 * k for k in counts)
    return sum(k * (k - 1) for k in counts)


def _weights(inst):
    if inst.sample_weight is None:
        return np.ones(inst.n)
    return np.asarray(inst.sample_weight, dtype=np.float64)


def _mean(values, w, m):
    return math.fsum(values[m] * w[m]) / math.fsum(w[m])


def target_means(inst):
    if inst.constraint != "mean_residual":
        return []
    w, t = _weights(inst), np.asarray(inst.y_true, np.float64)
    return [_mean(t, w, m) for _, members in partitions(inst) for m in members]


def gap(inst, y):
    """The largest epsilon that ``y`` needs (0 without any comparison): max group-mean
    difference per cell, or max |mean residual| for mean_residual."""
    y = np.asarray(y, dtype=np.float64)
    w = _weights(inst)
    worst = 0.0
    for _, members in partitions(inst):
        means = [_mean(y, w, m) for m in members]
        if inst.constraint == "mean_residual":
            t = np.asarray(inst.y_true, np.float64)
            worst = max([worst] + [abs(mu - _mean(t, w, m)) for mu, m in zip(means, members)])
        elif len(means) > 1:
            worst = max(worst, max(means) - min(means))
    return worst


def scale(inst, y=None):
    s = max([1.0, inst.epsilon] + [abs(t) for t in target_means(inst)])
    if inst.bounds is not None:
        return max(s, inst.bounds[1] - inst.bounds[0])
    if y is not None and len(y):
        s = max(s, float(np.max(np.abs(np.asarray(y, np.float64)))))
    return s


def tolerance(inst, y, dtype):
    """Allowed excess of the gap over epsilon (see the module docstring)."""
    s = scale(inst, y)
    return (2 * EPS32 if np.dtype(dtype) == np.float32 else 1e-9) * s


# --- feasibility of mean_residual with bounds ------------------------------------------------

def infeasibility(inst):
    """How far the problem is from feasible: the smallest ``s >= 0`` such that some ``y``
    within the bounds has every |mean residual| <= epsilon + s (0 for parity constraints, which
    constant outputs always meet, and for unbounded problems)."""
    if inst.constraint != "mean_residual" or inst.bounds is None:
        return 0.0
    lo, hi = inst.bounds
    parts = partitions(inst)
    if len(parts) == 1:  # the groups partition the samples: each group's mean is free in [lo, hi]
        return max([0.0] + [max(t - inst.epsilon - hi, lo - t - inst.epsilon)
                            for t in target_means(inst)])
    return _infeasibility_lp(inst, parts, lo, hi)


def _infeasibility_lp(inst, parts, lo, hi):
    """Several marginal attributes: a linear program over the atoms (samples sharing every group
    code may share their output, so one variable per atom)."""
    from scipy.optimize import linprog

    w, t = _weights(inst), np.asarray(inst.y_true, np.float64)
    keys, atom = np.unique(inst.groups, axis=0, return_inverse=True)
    atom = atom.reshape(-1)
    k = len(keys)
    rows, rhs = [], []
    for _, members in parts:
        for m in members:
            row = np.bincount(atom[m], weights=w[m], minlength=k) / w[m].sum()
            tm = _mean(t, w, m)
            # row @ x - tm <= eps + s and tm - row @ x <= eps + s
            rows += [np.append(row, -1.0), np.append(-row, -1.0)]
            rhs += [inst.epsilon + tm, inst.epsilon - tm]
    # in units of the largest number of the problem (HiGHS rejects huge coefficients)
    unit = max([1.0, abs(lo), abs(hi)] + [abs(v) for v in rhs])
    c = np.zeros(k + 1)
    c[-1] = 1.0
    res = linprog(c, A_ub=np.array(rows), b_ub=np.array(rhs) / unit,
                  bounds=[(lo / unit, hi / unit)] * k + [(0, None)], method="highs")
    assert res.status == 0, res.message
    return float(res.x[-1]) * unit


# --- reference projection --------------------------------------------------------------------

def reference(inst):
    """``(y, status)`` of the projection by Clarabel, from rows built here with numpy."""
    import cvxpy as cp

    z = np.asarray(inst.z, dtype=np.float64)
    y = cp.Variable(inst.n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(y - z)), reference_constraints(inst, y))
    try:
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                      tol_feas=1e-12, max_iter=400)
    except cp.error.SolverError as exc:
        return None, f"solver error: {exc}"
    if problem.status != cp.OPTIMAL or y.value is None:
        return None, problem.status
    return np.asarray(y.value, dtype=np.float64), problem.status


def _compared_means(inst):
    """Per compared cell, ``(A, t)``: the matrix of its groups' weighted means (a row per group
    with positive weight) and, for mean residual, the groups' mean targets (else None); cells
    of one group are left out for parity (nothing to compare)."""
    w = _weights(inst)
    for _, members in partitions(inst):
        if inst.constraint != "mean_residual" and len(members) < 2:
            continue
        A = np.zeros((len(members), inst.n))
        for g, m in enumerate(members):
            A[g, m] = w[m] / w[m].sum()
        t = None
        if inst.constraint == "mean_residual":
            t = np.array([_mean(np.asarray(inst.y_true, np.float64), w, m) for m in members])
        yield A, t


def reference_constraints(inst, y):
    """The instance's fairness constraints and bounds on the cvxpy variable ``y``, built here
    from the group codes with numpy."""
    import cvxpy as cp

    cons = []
    for A, t in _compared_means(inst):
        if t is not None:
            cons.append(cp.abs(A @ y - t) <= inst.epsilon)
        else:
            means = A @ y
            cons.append(cp.max(means) - cp.min(means) <= inst.epsilon)
    if inst.bounds is not None:
        cons += [y >= inst.bounds[0], y <= inst.bounds[1]]
    return cons


def far_reference(inst, far=1e4):
    """The projection of raw outputs far outside the bounds by its limit: ``(y, c, value,
    z_near)``, or None when no output is far or a solver fails.

    Split ``z = z_near + z_far``: ``z_far`` the excess over the bound of the outputs more than
    ``far`` widths (at least 1) beyond it, ``z_near`` that bound for them and ``z`` for the
    others. Far enough out, the projection of ``z`` is the point nearest ``z_near`` on the
    optimal face of the linear program ``max c . y`` over the fair set (``c = z_far``
    normalised to a largest entry of 1): the limit of ``argmin ||y - z_near - t z_far||`` as
    ``t`` grows, which that problem reaches at a finite ``t`` (its objective is ``t`` times a
    linear one plus a quadratic). The program is solved by HiGHS (its optimum ``value``) on the
    constraints in linear form; its optimal face is the fair set with every constraint whose
    dual is positive held as an equality, to ``FACE_TOL`` (complementary slackness: any
    optimal dual describes the whole face); Clarabel then finds the point of the face nearest
    ``z_near``."""
    import cvxpy as cp

    lo, hi = inst.bounds
    z = np.asarray(inst.z, dtype=np.float64)
    beyond = z - np.clip(z, lo, hi)
    is_far = np.abs(beyond) > far * max(1.0, hi - lo)
    if not is_far.any():
        return None
    c = np.where(is_far, beyond, 0.0)
    c /= np.abs(c).max()
    z_near = np.where(is_far, np.clip(z, lo, hi), z)
    y = cp.Variable(inst.n)
    sides = _linear_sides(inst, y)  # expressions that must be <= 0
    cons = [side <= 0 for side in sides]
    program = cp.Problem(cp.Maximize(c @ y), cons)
    try:
        program.solve(solver=cp.HIGHS)  # a linear program: Clarabel's interior point is inexact
        if program.status != cp.OPTIMAL:
            return None
        largest = max(float(np.max(con.dual_value, initial=0.0)) for con in cons)
        # (held to FACE_TOL: float64 equalities of a degenerate face need not meet exactly)
        face = [side[np.asarray(con.dual_value) > FACE_DUAL * largest] >= -FACE_TOL
                for side, con in zip(sides, cons)
                if np.any(np.asarray(con.dual_value) > FACE_DUAL * largest)]
    except cp.error.SolverError:
        return None
    # Clarabel at tight tolerances, else at its own (the face may be a thin set); a problem
    # each time (cvxpy keeps a failed solve's state)
    for options in ({"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12,
                     "max_iter": 400}, {}):
        nearest = cp.Problem(cp.Minimize(cp.sum_squares(y - z_near)), cons + face)
        try:
            nearest.solve(solver=cp.CLARABEL, **options)
        except cp.error.SolverError:
            continue
        if nearest.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) and y.value is not None:
            break
    else:
        return None
    return np.clip(np.asarray(y.value, dtype=np.float64), lo, hi), c, program.value, z_near


#: a constraint belongs to the optimal face of :func:`far_reference`'s program when its dual
#: exceeds this fraction of the largest (HiGHS's duals of inactive constraints are zero up to
#: its tolerances)
FACE_DUAL = 1e-9
#: how far (absolute: outputs and bounds of order 1) a constraint of the optimal face may be
#: from equality in :func:`far_reference`
FACE_TOL = 1e-10


def _linear_sides(inst, y):
    """The instance's constraints on the cvxpy variable ``y`` as vector expressions that must
    be at most 0, linear (a free centre per compared cell for parity: every group's mean within
    ``[centre, centre + epsilon]``), built here from the group codes with numpy."""
    import cvxpy as cp

    sides = []
    for A, t in _compared_means(inst):
        if t is not None:
            sides += [A @ y - t - inst.epsilon, t - A @ y - inst.epsilon]
        else:
            centre = cp.Variable()
            sides += [A @ y - centre - inst.epsilon, centre - A @ y]
    if inst.bounds is not None:
        sides += [inst.bounds[0] - y, y - inst.bounds[1]]
    return sides


def far_problems(inst, y, required=False):
    """What is wrong with ``y`` as the projection of far raw outputs, judged by their limit
    (:func:`far_reference`): ``y`` must maximise the linear program (to ``1e-8`` of ``sum |c|``
    and its value: the layer's outputs are certified to a backward error of ``1e-6`` of the
    scale), lie no farther from ``z_near`` than the reference (to ``1e-6``, relative) and differ
    from it by at most ``FAR_DEVIATION`` of the scale. An empty list when nothing is wrong, or
    when the reference failed (or left the program's optimum) and is not ``required``."""
    found = far_reference(inst)
    if found is not None:
        y_ref, c, value, z_near = found
        slack = 1e-8 * max(1.0, abs(value), float(np.abs(c).sum()))
        if c @ y_ref < value - slack:
            found = None
    if found is None:
        return ["the limit reference failed"] if required else []
    y = np.asarray(y, np.float64)
    problems = []
    if c @ y < value - slack:
        problems.append(f"off the far outputs' optimal face: c . y = {c @ y!r}, optimum "
                        f"{value!r}")
    d, d_ref = np.linalg.norm(y - z_near), np.linalg.norm(y_ref - z_near)
    if d > d_ref + 1e-6 * max(1.0, d_ref):
        problems.append(f"farther from z_near than the limit reference: {d!r} > {d_ref!r}")
    sc = scale(inst, y_ref)
    deviation = float(np.abs(y - y_ref).max()) / sc
    if deviation > FAR_DEVIATION:
        problems.append(f"y differs from the limit reference by {deviation:.3g} (relative to "
                        f"the scale {sc:.3g})")
    return problems


#: how far (relative to the outputs' scale) the layer's answer may lie from the limit reference
#: where the reference is no worse: the layer's certificate allows a backward error of 1e-6 of
#: the scale, and Clarabel's answer on the optimal face (a thin set) is accurate to about as much
FAR_DEVIATION = 1e-4


# --- the whole check -------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    ok: bool
    problems: list
    exception: str = None          # type name of a raised exception
    loud: bool = False             # a RuntimeError allowed for raw outputs far from the bounds
    violation: float = 0.0         # (gap - epsilon) / scale of the output, or 0
    distance: float = None         # (||y - z|| - ||y_ref - z||) / max(1, ||y_ref - z||)
    deviation: float = None        # max |y - y_ref| / scale
    seconds: float = 0.0
    y: np.ndarray = None


def check(inst, with_reference=None):
    """Run the layer on ``inst`` and judge the result; returns an :class:`Outcome`."""
    from skfair.constraints import InfeasibleConstraintError

    with_reference = inst.n <= REFERENCE_MAX_N if with_reference is None else with_reference
    out = Outcome(ok=True, problems=[])
    start = time.perf_counter()
    try:
        y = run_layer(inst)
    except InfeasibleConstraintError as exc:
        out.seconds = time.perf_counter() - start
        out.exception = type(exc).__name__
        s = infeasibility(inst)
        if not s > 0:
            out.problems.append(f"InfeasibleConstraintError on a feasible problem "
                                f"(independent infeasibility {s:.3g}): {exc}")
        return _done(out)
    except Exception as exc:  # noqa: BLE001 - any other exception is a failure
        out.seconds = time.perf_counter() - start
        out.exception = type(exc).__name__
        if (isinstance(exc, RuntimeError) and far_out(inst)
                and str(exc).startswith("The fairness projection failed")):
            out.loud = True  # refused loudly: the guarantee holds, exactness is not reached
            return out
        out.problems.append(f"{type(exc).__name__}: {str(exc)[:300]}")
        return _done(out)
    out.seconds = time.perf_counter() - start
    out.y = y
    dtype = inst.z.dtype
    if y.dtype != dtype or y.shape != inst.z.shape:
        out.problems.append(f"output dtype/shape {y.dtype}{y.shape}, expected "
                            f"{dtype}{inst.z.shape}")
    if not np.all(np.isfinite(y)):
        out.problems.append("non-finite output")
        return _done(out)
    if inst.bounds is not None:
        lo, hi = (np.asarray(b, dtype=y.dtype) for b in inst.bounds)
        if not (np.all(y >= lo) and np.all(y <= hi)):
            out.problems.append(f"outputs outside the bounds {inst.bounds}: range "
                                f"[{y.min()!r}, {y.max()!r}]")
    s_inf = infeasibility(inst)
    tol = tolerance(inst, y, dtype)
    if s_inf > tol:
        out.problems.append(f"returned outputs for an infeasible problem (independent "
                            f"infeasibility {s_inf:.3g}) instead of InfeasibleConstraintError")
    g = gap(inst, y)
    sc = scale(inst, y)
    out.violation = max(0.0, (g - inst.epsilon) / sc)
    if g > inst.epsilon + tol and s_inf <= tol:
        out.problems.append(f"unfair output: gap {g!r} > epsilon {inst.epsilon!r} + tolerance "
                            f"{tol:.3g} (relative violation {out.violation:.3g})")
    if with_reference and not out.problems:
        _compare_with_reference(inst, y, out)
    return _done(out)


def reference_problems(inst, y):
    """What is wrong with ``y`` as the projection, judged against Clarabel's (an empty list
    when nothing is, or when the reference is not accurate enough to judge by)."""
    out = Outcome(ok=True, problems=[])
    _compare_with_reference(inst, y, out)
    return out.problems


def _compare_with_reference(inst, y, out):
    y_ref, status = reference(inst)
    if y_ref is None:
        return  # the reference failed; nothing to compare with
    z = np.asarray(inst.z, np.float64)
    sc = scale(inst, y_ref)
    if inst.bounds is not None:
        y_ref = np.clip(y_ref, *inst.bounds)
    if gap(inst, y_ref) > inst.epsilon + 1e-7 * sc:
        return  # the reference is not accurate enough to judge by
    y = np.asarray(y, np.float64)
    d, d_ref = np.linalg.norm(y - z), np.linalg.norm(y_ref - z)
    out.distance = (d - d_ref) / max(1.0, d_ref)
    out.deviation = float(np.max(np.abs(y - y_ref), initial=0.0)) / sc
    # (outputs are float32 or float64 numbers of the outputs' scale: a rounding of each)
    rounding = (EPS32 if inst.z.dtype == np.float32 else 4 * EPS64) * math.sqrt(inst.n) * sc
    # A feasible y cannot be closer than the optimum: only a larger distance is the layer's.
    if d > d_ref + 1e-7 * max(1.0, d_ref) + rounding:
        out.problems.append(f"not the projection: ||y - z|| = {d!r}, reference {d_ref!r}")
    elif out.deviation > 1e-5 * max(1.0, d_ref / sc) + (2 * EPS32 if inst.z.dtype == np.float32
                                                         else 0.0):
        # The reference's own error in y grows with the distance (its relative objective gap
        # of ~1e-12 moves y by up to ~1e-6 * ||y_ref - z||): the allowance scales with it. And
        # only when the reference is at least as close as y (else the reference is off).
        if d_ref <= d + 1e-12 * max(1.0, d_ref):
            out.problems.append(f"y differs from the reference by {out.deviation:.3g} "
                                f"(relative to the scale {sc:.3g})")


def _done(out):
    out.ok = not out.problems
    return out


# --- random instances ------------------------------------------------------------------------

def random_instance(rng, n=None, max_n=2000):
    """One random instance from the whole instance space (used by the benchmark; the tests draw
    the same parameters through hypothesis, see :func:`make_instance`)."""
    if n is None:
        n = int(rng.choice([rng.integers(1, min(12, max_n) + 1),
                            rng.integers(1, min(80, max_n) + 1),
                            rng.integers(1, max_n + 1)], p=[0.4, 0.4, 0.2]))
    params = dict(
        n=n,
        n_attributes=int(rng.integers(1, 5)),
        max_groups=int(rng.integers(2, 31)),
        constraint=str(rng.choice(BUILTINS)),
        epsilon=float(rng.choice(EPSILONS)),
        bounds=BOUNDS[rng.integers(len(BOUNDS))],
        z_kind=str(rng.choice(Z_KINDS)),
        magnitude=float(rng.choice(MAGNITUDES)),
        float32=bool(rng.integers(2)),
        weights=str(rng.choice(WEIGHT_KINDS)),
        targets=str(rng.choice(TARGET_KINDS)),
        intersectional=bool(rng.integers(2)),
        seed=int(rng.integers(2**32)),
    )
    inst = make_instance(**params)
    inst.drawn = params  # what the instance was drawn from, for reports by kind
    return inst


Z_KINDS = ("uniform", "far", "ties", "constant", "outliers", "fair")
MAGNITUDES = (1.0, 1e3, 1e8, 1e12, 1e20)
WEIGHT_KINDS = ("none", "mild", "ratio1e12", "zeros")
TARGET_KINDS = ("inside", "wide", "huge")


def make_instance(n, n_attributes, max_groups, constraint, epsilon, bounds, z_kind, magnitude,
                  float32, weights, targets, intersectional, seed):
    """An instance from a few drawn parameters and a numpy seed for the arrays."""
    rng = np.random.default_rng(seed)
    groups = np.empty((n, n_attributes), dtype=np.int64)
    for a in range(n_attributes):
        k = int(rng.integers(2, max_groups + 1))
        # a random subset of the codes: codes below k absent from the batch
        present = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
        p = rng.dirichlet(np.full(len(present), 0.5))  # skewed: groups of one sample
        groups[:, a] = rng.choice(present, size=n, p=p)
    if z_kind == "uniform":
        z = rng.uniform(-1.5, 2.5, n)
    elif z_kind == "far":
        z = rng.choice([-1.0, 1.0], n) * magnitude * rng.uniform(0.5, 1.0, n)
    elif z_kind == "ties":
        z = rng.choice(rng.uniform(-1, 2, 3) * (magnitude if rng.integers(2) else 1.0), n)
    elif z_kind == "constant":
        z = np.full(n, rng.choice([0.0, 0.5, 1.0, -magnitude, magnitude]))
    elif z_kind == "outliers":
        z = rng.uniform(0, 1, n)
        hit = rng.uniform(size=n) < 0.2
        z[hit] = rng.choice([-1.0, 1.0], hit.sum()) * magnitude
    else:  # fair: a constant inside (0, 1) up to tiny noise
        z = 0.5 + rng.uniform(-1e-12, 1e-12, n)
    z = z.astype(np.float32 if float32 else np.float64)
    y_true = None
    if LABEL_CELLS[constraint] != (None,):
        y_true = (rng.uniform(size=n) < rng.uniform(0, 1)).astype(np.float64)
    elif constraint == "mean_residual":
        if targets == "inside":
            y_true = rng.uniform(0, 1, n)
        elif targets == "wide":
            y_true = rng.uniform(-7, 5, n)
        else:
            y_true = rng.normal(0, 1, n) * magnitude
    w = None
    if weights == "mild":
        w = rng.uniform(0.5, 2.0, n)
    elif weights == "ratio1e12":
        w = 10.0 ** rng.uniform(-6, 6, n)
        w[rng.integers(n)], w[rng.integers(n)] = 1e-6, 1e6
    elif weights == "zeros":
        w = rng.uniform(0.5, 2.0, n) * (rng.uniform(size=n) < 0.7)
        w[rng.integers(n)] = 1.0  # at least one positive weight
    return Instance(z=z, groups=groups, constraint=constraint, epsilon=epsilon, bounds=bounds,
                    y_true=y_true, sample_weight=w, intersectional=intersectional)


def summarize(outcomes):
    """Counts of exceptions by type."""
    return Counter(o.exception for o in outcomes if o.exception)
