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

from ._constraint_set import sparse_stats
from ._kernels import value_range

#: outputs more than this many bounds' widths (at least 1) beyond a bound are far
FAR_OUTSIDE = 1e4
#: how many widths beyond their bound the farthest output is put, one solve per entry in turn
#: until one is certified: the nearest first (the more accurate solve), then farther ones (they
#: settle on the program's optimum sooner), while they are nearer than the raw outputs
TARGETS = (1e1, 1e2, 1e3, 1e4, 1e5)
#: the most rows for which the far outputs' program is also posed with every pair row (when
#: the band's multipliers fall short of a certificate)
PAIR_PROGRAM_ROWS = 1_000_000
#: the largest float64
LARGEST = float(np.finfo(np.float64).max)


def width(lo, hi):
    """The scale of the bounds ``[lo, hi]`` (infinite where missing): their width, at least 1."""
    return max(1.0, hi - lo) if math.isfinite(hi - lo) else 1.0


def has_far(z, lo, hi):
    """Whether some raw output of ``z`` lies more than :data:`FAR_OUTSIDE` widths beyond a bound
    (one compiled pass: every projection asks)."""
    low, high = value_range(z)
    reach = FAR_OUTSIDE * width(lo, hi)
    return high - hi > reach or lo - low > reach


def beyond(z, lo, hi):
    """Each raw output's excess over the bound it lies beyond (0 within the bounds)."""
    with np.errstate(over="ignore"):  # an excess beyond float64's range: its largest float
        return np.clip(z - np.clip(z, lo, hi), -LARGEST, LARGEST)


def excess(z, lo, hi):
    """``z_far``: each raw output's excess over the bound it lies beyond when it is more than
    :data:`FAR_OUTSIDE` widths beyond it, else 0."""
    out = beyond(z, lo, hi)
    return np.where(np.abs(out) > FAR_OUTSIDE * width(lo, hi), out, 0.0)


def reduced(z, far, lo, hi, target):
    """``(z_t, t)``: ``z`` with its far excess ``far`` scaled by ``t``, so that the farthest
    output lies ``target`` widths beyond its bound."""
    t = target * width(lo, hi) / float(np.abs(far).max())
    return np.where(far > 0.0, hi + t * far, np.where(far < 0.0, lo + t * far, z)), t


def program_multipliers(far, cs, lo, hi, as_pairs=False):
    """Multipliers ``nu >= 0`` of the rows with which some maximiser ``y`` of ``far . y`` over
    the fair set meets the linear program's optimality conditions (``far - G^T nu`` pushes every
    output against the bound it lies at), or None when HiGHS finds none.

    The program is posed on the atoms' sums ``S_a = sum_{i in a} w_i y_i`` (the rows read only
    them), and a family of pair rows ``stat_u - stat_v <= c + o_u - o_v`` over ``k`` groups as
    its band: every ``stat_u - o_u`` within ``[m, m + c]`` of a free centre ``m``, ``2 k`` rows
    (:func:`_pair_multipliers` maps their multipliers back onto pairs). Its size is then that
    of the groups, not of their pairs or of ``G``. With ``as_pairs``, every row is posed as it
    is: HiGHS's multipliers of the pairs themselves can be more accurate than the band's
    routed ones (to the rounding of the raw outputs that a certificate asks)."""
    problem, n, n_atoms = cs.host_problem, cs.n_samples, cs.n_atoms
    rows = cs.host_rows
    weight = problem.weight if problem.weight.size else np.ones(n)
    stats = sparse_stats(rows, n_atoms)  # (the last: "no statistic", a constant side)
    bands = [] if as_pairs else _bands(rows, cs.host_h)
    n_centres = len(bands)
    end = 0 if as_pairs else rows.family_start[-1]
    other = stats[rows.plus[end:]] - stats[rows.minus[end:]]  # rows outside the bands
    member_stats = np.concatenate([band[0] for band in bands] + [np.zeros(0, np.int64)])
    member_centre = np.repeat(np.arange(n_centres), [band[0].size for band in bands])
    on_members = stats[member_stats]
    centre = sparse.csr_matrix((np.ones(member_stats.size),
                                (np.arange(member_stats.size), member_centre)),
                               shape=(member_stats.size, n_centres))
    upper = np.concatenate([band[1] + band[2] for band in bands] + [np.zeros(0)])
    lower = np.concatenate([-band[1] for band in bands] + [np.zeros(0)])
    on_sums = sparse.vstack([
        sparse.hstack([other, sparse.csr_matrix((other.shape[0], n_centres))]),
        sparse.hstack([on_members, -centre]),   # stat_u - m <= c + o_u
        sparse.hstack([-on_members, centre]),   # m - stat_u <= -o_u
    ])
    A_ub = sparse.hstack([sparse.csr_matrix((on_sums.shape[0], n)), on_sums]).tocsr()
    b_ub = np.r_[cs.host_h[end:], upper, lower]
    sums = sparse.hstack([sparse.csr_matrix((-weight, (problem.atom, np.arange(n))),
                                            shape=(n_atoms, n)), sparse.identity(n_atoms),
                          sparse.csr_matrix((n_atoms, n_centres))])
    # HiGHS reads numbers of 1e20 and beyond as infinite: the costs in units of the largest, and
    # the outputs in units of the problem's size (which leaves the multipliers as they are)
    unit = float(np.abs(far).max())
    size = max([1.0, float(np.abs(cs.host_h).max(initial=0.0))]
               + [abs(bound) for bound in (lo, hi) if math.isfinite(bound)])
    found = linprog(np.r_[-far / unit, np.zeros(n_atoms + n_centres)], A_ub=A_ub,
                    b_ub=b_ub / size, A_eq=sums.tocsr(), b_eq=np.zeros(n_atoms),
                    bounds=[(_finite(lo / size), _finite(hi / size))] * n
                    + [(None, None)] * (n_atoms + n_centres),
                    method="highs-ds", options={"primal_feasibility_tolerance": 1e-10,
                                                "dual_feasibility_tolerance": 1e-10})
    if found.status != 0:
        return None
    duals = np.maximum(-found.ineqlin.marginals, 0.0) * unit
    nu = np.zeros(cs.n_rows)
    nu[end:] = duals[:cs.n_rows - end]
    ups = duals[cs.n_rows - end:][:member_stats.size]
    lows = duals[cs.n_rows - end + member_stats.size:]
    first = 0
    for f, band in enumerate(bands):
        k = band[0].size
        _pair_multipliers(nu, rows.family_start[f], k, ups[first:first + k],
                          lows[first:first + k])
        first += k
    return nu


def _bands(rows, h):
    """Per family of pair rows: ``(stats, offsets, width)``, its members' statistics, their
    offsets ``o`` (the first member's 0) and the band's width ``c``, read from the rows' ``h``
    (``h_uv = c + o_u - o_v``)."""
    bands = []
    for f, k in enumerate(rows.family_size):
        if k < 2:  # no pair: nothing to hold
            bands.append((np.zeros(0, np.int64), np.zeros(0), 0.0))
            continue
        # the rows (u, 0) and (0, u) of every member u >= 1: their statistics and bounds
        members = np.arange(1, k)
        to_first = rows.family_start[f] + members * (k - 1)
        from_first = rows.family_start[f] + members - 1
        stats = np.r_[rows.minus[to_first[:1]], rows.plus[to_first]]
        offsets = np.r_[0.0, (h[to_first] - h[from_first]) / 2]
        bands.append((stats, offsets, (h[to_first[0]] + h[from_first[0]]) / 2))
    return bands


def _pair_multipliers(nu, start, k, ups, lows):
    """Write onto the ``k (k - 1)`` pair rows from ``start`` multipliers with the band's net
    flows: member ``u`` gives ``ups[u]`` and takes ``lows[u]``, routed from givers to takers in
    order (each pair ``(u, v)`` of a giver and a taker carries what both still have; a
    member's flow to itself moves no output and is dropped)."""
    u = v = 0
    give, take = ups.astype(float).copy(), lows.astype(float).copy()
    while u < k and v < k:
        amount = min(give[u], take[v])
        if amount > 0 and u != v:
            nu[start + u * (k - 1) + v - (v > u)] += amount
        give[u] -= amount
        take[v] -= amount
        if give[u] <= 0:
            u += 1
        if take[v] <= 0:
            v += 1


def _finite(bound):
    return bound if math.isfinite(bound) else None
