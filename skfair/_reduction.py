"""Raw outputs far outside the bounds, brought to the outputs' own scale without changing
their projection.

Split the raw outputs as ``z = z_near + z_far``: ``z_far`` is each output's excess over the
bound it lies beyond, kept for the outputs more than :data:`FAR_OUTSIDE` times the bounds'
width (at least 1) outside them and zero elsewhere. Let ``y`` be the projection onto the fair
set ``F`` (the rows and the bounds) of ``z_t = z_near + t z_far`` for some ``0 < t <= 1``. When
``y`` also maximises ``z_far . y`` over ``F``, it is the projection of ``z`` itself:
``z - y = (z_t - y) + (1 - t) z_far``, where ``z_t - y`` lies in the normal cone of ``F`` at
``y`` (``y`` projects ``z_t``) and so does ``z_far`` (``y`` maximises it), and the cone holds
their sum with ``1 - t >= 0``: the optimality condition of the projection of ``z``. As ``t``
grows the projection of ``z_t`` settles on the optimal face of that linear program (at a
finite ``t``: the objective is ``t`` times a linear one plus a quadratic), so a moderate ``t``
(far outputs :data:`TARGETS` widths beyond their bound) gives the projection of most ``z``,
however far. Raw outputs that tie exactly stay tied in ``z_t``.

Float64 cannot compute that projection from ``z`` itself: its multipliers have the raw outputs'
magnitude and cancel, on the outputs that end inside the bounds, below their rounding. From
``z_t`` it can. The multipliers of ``z`` are those of ``z_t`` plus ``(1 - t)`` times the linear
program's (:func:`program_multipliers`, HiGHS's duals), and the layer certifies the outputs
with them on ``z`` itself (:func:`skfair._guarantee.certified`): the argument above tells where
to look, the certificate decides.
"""

import math

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from ._constraint_set import sparse_coef

#: outputs more than this many bounds' widths (at least 1) beyond a bound are far
FAR_OUTSIDE = 1e4
#: how many widths beyond their bound the farthest output is put, one solve per entry in turn
#: until one is certified: the nearest first (the more accurate solve), then farther ones (they
#: settle on the program's optimum sooner), while they are nearer than the raw outputs and the
#: float solves of the previous one succeeded
TARGETS = (1e1, 1e2, 1e3, 1e4, 1e5)
#: the largest float64
LARGEST = float(np.finfo(np.float64).max)


def width(lo, hi):
    """The scale of the bounds ``[lo, hi]`` (infinite where missing): their width, at least 1."""
    return max(1.0, hi - lo) if math.isfinite(hi - lo) else 1.0


def excess(z, lo, hi):
    """``z_far``: each raw output's excess over the bound it lies beyond when it is more than
    :data:`FAR_OUTSIDE` widths beyond it, else 0."""
    with np.errstate(over="ignore"):  # an excess beyond float64's range: its largest float
        beyond = np.clip(z - np.clip(z, lo, hi), -LARGEST, LARGEST)
    return np.where(np.abs(beyond) > FAR_OUTSIDE * width(lo, hi), beyond, 0.0)


def reduced(z, far, lo, hi, target):
    """``(z_t, t)``: ``z`` with its far excess ``far`` scaled by ``t``, so that the farthest
    output lies ``target`` widths beyond its bound."""
    t = target * width(lo, hi) / float(np.abs(far).max())
    return np.where(far > 0.0, hi + t * far, np.where(far < 0.0, lo + t * far, z)), t


def program_multipliers(far, cs, lo, hi):
    """Multipliers ``nu >= 0`` of the rows with which some maximiser ``y`` of ``far . y`` over
    the fair set meets the linear program's optimality conditions (``far - G^T nu`` pushes every
    output against the bound it lies at), or None when HiGHS finds none.

    The program is posed on the atoms' sums ``S_a = sum_{i in a} w_i y_i`` (the rows read only
    them), so its size is that of the constraint set's rows, not of ``G``."""
    problem, n, n_atoms = cs.host_problem, cs.n_samples, cs.n_atoms
    weight = problem.weight if problem.weight.size else np.ones(n)
    on_sums = sparse.hstack([sparse.csr_matrix((cs.n_rows, n)), sparse_coef(cs.host_rows,
                                                                            n_atoms)])
    sums = sparse.hstack([sparse.csr_matrix((-weight, (problem.atom, np.arange(n))),
                                            shape=(n_atoms, n)), sparse.identity(n_atoms)])
    # HiGHS reads numbers of 1e20 and beyond as infinite: the costs in units of the largest, and
    # the outputs in units of the problem's size (which leaves the multipliers as they are)
    unit = float(np.abs(far).max())
    size = max([1.0, float(np.abs(cs.host_h).max(initial=0.0))]
               + [abs(bound) for bound in (lo, hi) if math.isfinite(bound)])
    found = linprog(np.r_[-far / unit, np.zeros(n_atoms)], A_ub=on_sums.tocsr(),
                    b_ub=cs.host_h / size, A_eq=sums.tocsr(), b_eq=np.zeros(n_atoms),
                    bounds=[(_finite(lo / size), _finite(hi / size))] * n
                    + [(None, None)] * n_atoms,
                    method="highs-ds", options={"primal_feasibility_tolerance": 1e-10,
                                                "dual_feasibility_tolerance": 1e-10})
    if found.status != 0:
        return None
    return np.maximum(-found.ineqlin.marginals, 0.0) * unit


def _finite(bound):
    return bound if math.isfinite(bound) else None
