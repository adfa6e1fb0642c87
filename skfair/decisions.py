"""Fair decisions: labels whose selection rates satisfy demographic parity exactly.

Auditors measure decisions: the share of each group that gets the positive label (its
*selection rate*). :func:`fair_labels` chooses the labels of one batch so that, for every
protected attribute (or for the crossed cells when intersectional), the selection rates of any
two groups present differ by at most ``epsilon``, as exact fractions: ``c_u / n_u - c_v / n_v
<= epsilon`` with integer counts, no tolerance.

Among the labelings that satisfy it, the one chosen maximises the expected accuracy under the
given probabilities ``p``: a positive label on sample ``i`` is right with probability ``p_i``
and a negative one with ``1 - p_i``, so the expected number of right labels is
``sum(1 - p) + sum_{selected} (2 p_i - 1)``. (Agreement with the unconstrained decision
``p > 0.5`` is the same objective up to its weights; expected accuracy is what a user of the
scores can check.) Given how many samples of each group are selected, the best choice within a
group is its highest scores, so the problem is one over the per-group counts:

* one attribute (or the crossed cells): the rates lie in a window ``[L, L + epsilon]`` whose
  lower end ``L`` is one of the rates ``c / n_g``. For each such ``L`` every group's best count
  is its unconstrained best clipped to the window (its gain is concave in the count), so
  enumerating the windows finds the optimum exactly, in ``O((n + k) k)`` operations;
* several attributes (marginal): the counts of different attributes interact through the
  samples they share; the labels come from an integer program over the per-atom counts (HiGHS
  through :func:`scipy.optimize.milp`, integer rows per pair of groups, optimal to the solver's
  absolute gap, within a time limit after which its best answer is used with a warning),
  whose answer is checked with exact fractions.

With a ``ratio`` (the disparate-impact rule, ``ratio * c_v / n_v - c_u / n_u <= epsilon`` for
every ordered pair, float ``ratio`` and ``epsilon`` at their exact binary values) the window is
``[L, (L + epsilon) / ratio]`` and the same search applies (one attribute or crossed cells).
For several marginal attributes the integer program takes, for every ordered pair, the facets
of the convex hull of the pair's admissible integer counts ``(c_u, c_v)`` (computed exactly, a
few rows per pair with integer coefficients at most the group sizes): its integer solutions are
exactly the admissible counts, so the ratio is not approximated and nothing of the optimum is
lost. Building those rows takes ``O(n)`` exact integer operations per ordered pair.

Ties are broken deterministically: within a group by score, then by position in the batch;
between windows of equal expected accuracy, the one with the lowest rates. All-equal labels
(every rate 0) always satisfy the constraint, so a labeling always exists. A group of a single
sample can only have rate 0 or 1: with ``epsilon < 1`` it forces every other group of its
attribute to within ``epsilon`` of that, which is why small groups can cost accuracy.
"""

import math
import warnings
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .constraints import intersect_groups

__all__ = ["fair_labels", "selection_rate_gap"]


def fair_labels(proba: ArrayLike, groups: ArrayLike, epsilon: float, *,
                intersectional: bool = False, ratio: float | None = None) -> NDArray[np.int64]:
    """Labels of one batch whose selection rates meet demographic parity (or, with ``ratio``,
    the disparate-impact rule) exactly.

    Parameters
    ----------
    proba : array-like of shape (n_samples,)
        Probability of the positive class of every sample (e.g. the fair probabilities).
    groups : array-like of int of shape (n_samples,) or (n_samples, n_attributes)
        Protected group codes (non-negative integers), one column per attribute.
    epsilon : float
        Largest allowed difference of selection rates, in [0, 1].
    intersectional : bool, default=False
        Constrain the crossed cells of the attributes instead of each attribute.
    ratio : float in (0, 1] or None, default=None
        Instead of differences, bound ratios: every group's selection rate at least ``ratio``
        times every other group's, less ``epsilon`` (``ratio=0.8, epsilon=0``: the four-fifths
        rule): ``ratio * c_v / n_v - c_u / n_u <= epsilon`` for every ordered pair of groups
        present, with exact fractions and the exact binary values of ``ratio`` and ``epsilon``
        (so the float 0.8, slightly above 4/5, is what is met). For one attribute, the crossed
        cells, or each of several attributes (marginal), with the best expected accuracy as
        without ``ratio``.

    Returns
    -------
    labels : ndarray of int of shape (n_samples,)
        0/1 labels: for every attribute (or the crossed cells), the selection rates of any two
        groups present differ by at most ``epsilon`` (with ``ratio``: meet the ratio rule
        above), and the expected accuracy under ``proba`` is the largest possible.

    Examples
    --------
    >>> import numpy as np
    >>> from skfair.decisions import fair_labels
    >>> proba = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.2])
    >>> groups = np.array([0, 0, 0, 1, 1, 1])
    >>> fair_labels(proba, groups, epsilon=0.34)
    array([1, 1, 0, 1, 0, 0])
    """
    proba, groups = _checked_batch(proba, groups, epsilon, ratio)
    if proba.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if intersectional and groups.shape[1] > 1:
        import torch

        groups = intersect_groups(torch.as_tensor(groups)).numpy()
    gain = 2.0 * proba - 1.0
    ratio = 1.0 if ratio is None else float(ratio)
    codes = [np.unique(column, return_inverse=True)[1].ravel() for column in groups.T]
    if len(codes) == 1:
        ranking = _ranking(gain, codes[0])
        counts = _window_counts(gain, codes[0], ranking, float(epsilon), ratio)
        return _top_scores(ranking, codes[0], counts)
    return _integer_program(gain, codes, float(epsilon), ratio)


def _checked_batch(proba: ArrayLike, groups: ArrayLike, epsilon: float, ratio: float | None
                   ) -> tuple[NDArray[np.float64], NDArray[Any]]:
    """``(proba, groups)`` of :func:`fair_labels` as float64 (n,) and (n, n_attributes) arrays,
    every argument checked."""
    proba = np.asarray(proba, dtype=np.float64)
    groups = np.asarray(groups)
    if groups.ndim == 1:
        groups = groups[:, None]
    if proba.ndim != 1 or groups.ndim != 2 or groups.shape[0] != proba.shape[0]:
        raise ValueError(f"proba must have shape (n,) and groups (n,) or (n, n_attributes) with "
                         f"the same n; got {proba.shape} and {groups.shape}.")
    if not np.isfinite(proba).all() or ((proba < 0) | (proba > 1)).any():
        raise ValueError("proba must hold probabilities in [0, 1].")
    if (not isinstance(epsilon, (int, float, np.floating, np.integer))
            or isinstance(epsilon, bool) or not 0 <= epsilon <= 1):
        raise ValueError(f"epsilon must be a number in [0, 1]; got {epsilon!r}.")
    if groups.size and (not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0):
        raise ValueError("groups must hold non-negative integer group codes.")
    if ratio is not None and (not isinstance(ratio, (int, float, np.floating))
                              or isinstance(ratio, bool) or not 0 < ratio <= 1):
        raise ValueError(f"ratio must be None or a number in (0, 1]; got {ratio!r}.")
    return proba, groups


def selection_rate_gap(labels: ArrayLike, groups: ArrayLike, *,
                       ratio: float | None = None) -> Fraction:
    """The largest difference of selection rates between two groups present, per attribute
    (the largest over the attributes), as an exact fraction; with ``ratio``, the largest
    ``ratio * rate_v - rate_u`` over ordered pairs of groups (at least 0), the quantity the
    disparate-impact rule bounds by ``epsilon``.

    Parameters
    ----------
    labels : array-like of 0/1 of shape (n_samples,)
    groups : array-like of int of shape (n_samples,) or (n_samples, n_attributes)
    ratio : float or None, default=None
        Taken at its exact binary value; ``None`` is 1 (the difference of rates).

    Returns
    -------
    fractions.Fraction

    Examples
    --------
    >>> from skfair.decisions import selection_rate_gap
    >>> selection_rate_gap([1, 1, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1])
    Fraction(1, 3)
    >>> selection_rate_gap([1, 1, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1], ratio=0.5)
    Fraction(0, 1)
    """
    labels = np.asarray(labels).astype(np.int64)
    groups = np.asarray(groups)
    if groups.ndim == 1:
        groups = groups[:, None]
    factor = Fraction(1) if ratio is None else Fraction(ratio)
    gap = Fraction(0)
    for column in groups.T:
        codes = np.unique(column, return_inverse=True)[1].ravel()
        sizes = np.bincount(codes)
        selected = np.bincount(codes, weights=labels).astype(np.int64)
        rates = [Fraction(int(c), int(s)) for c, s in zip(selected, sizes)]
        gap = max(gap, factor * max(rates) - min(rates))
    return gap


def _fits(count, a, b, sizes, epsilon, ratio):
    """Whether ``ratio * count / n_g <= a / b + epsilon`` (rates as exact fractions, float
    ``epsilon`` and ``ratio`` at their exact binary values), elementwise: in floating point, and
    with fractions where that is too close to tell."""
    left = ratio * (count * b).astype(np.float64)
    right = (a * sizes).astype(np.float64) + epsilon * (sizes * b).astype(np.float64)
    result = left <= right
    close = np.abs(left - right) <= 1e-9 * np.maximum(np.abs(right), 1.0)
    exact_ratio, exact_epsilon = Fraction(ratio), Fraction(epsilon)
    count, a, b, sizes = np.broadcast_arrays(count, a, b, sizes)
    for index in zip(*np.nonzero(close)):
        c, a_, b_, n = (int(x[index]) for x in (count, a, b, sizes))
        result[index] = exact_ratio * c * b_ <= a_ * n + exact_epsilon * n * b_
    return result


def _window_counts(gain, codes, ranking, epsilon, ratio=1.0):
    """The per-group counts of the best labeling of one attribute (see the module): every rate
    within ``[L, (L + epsilon) / ratio]`` for the lowest rate ``L``; ``ranking`` is
    :func:`_ranking` of the samples."""
    order, sizes, starts, _ = ranking
    k = sizes.size
    sorted_gain = gain[order]
    prefix = [np.r_[0.0, np.cumsum(sorted_gain[starts[g]:starts[g + 1]])] for g in range(k)]
    best = np.bincount(codes, weights=gain > 0, minlength=k).astype(np.int64)
    # the windows' lower ends: every rate c / n_g, lowest first, each value once
    numerators = np.concatenate([np.arange(s + 1) for s in sizes])
    denominators = np.repeat(sizes, sizes + 1)
    order_l = np.lexsort((denominators, numerators / denominators))
    numerators, denominators = numerators[order_l], denominators[order_l]
    keep = np.r_[True, numerators[1:] * denominators[:-1] != numerators[:-1] * denominators[1:]]
    numerators, denominators = numerators[keep], denominators[keep]
    best_value, best_counts = -math.inf, np.zeros(k, dtype=np.int64)
    block = max(1, 2_000_000 // k)
    for start in range(0, numerators.size, block):
        a = numerators[start:start + block, None]
        b = denominators[start:start + block, None]
        low = -(-(a * sizes) // b)  # ceil(a n_g / b): the smallest count at rate >= a / b
        high = np.floor((a * sizes + epsilon * sizes * b) / (ratio * b)).astype(np.int64)
        # the float floor may be off by one at the boundary: settle it exactly
        high = np.clip(high + 1, 0, sizes)
        for _ in range(2):
            high -= ~_fits(high, a, b, sizes, epsilon, ratio)
        counts = np.clip(best, low, high)
        feasible = (low <= high).all(axis=1)
        values = np.zeros(counts.shape[0])
        for g in range(k):
            values += prefix[g][counts[:, g]]
        values[~feasible] = -math.inf
        i = int(np.argmax(values))
        if values[i] > best_value:
            best_value, best_counts = values[i], counts[i]
    return best_counts


def _ranking(gain, codes):
    """The samples by group, decreasing score, then position: ``(order, sizes, starts,
    rank)``, group ``g`` being ``order[starts[g]:starts[g + 1]]`` and ``rank[i]`` the place of
    sample ``i`` within its group (0: its highest score)."""
    order = np.lexsort((np.arange(gain.size), -gain, codes))
    sizes = np.bincount(codes)
    starts = np.r_[0, np.cumsum(sizes)]
    rank = np.empty(gain.size, dtype=np.int64)
    rank[order] = np.arange(gain.size) - np.repeat(starts[:-1], sizes)
    return order, sizes, starts, rank


def _top_scores(ranking, codes, counts):
    """Labels selecting, in every group, its ``counts[g]`` highest scores (ties: the first
    positions); ``ranking`` is :func:`_ranking` of the samples."""
    return (ranking[3] < counts[codes]).astype(np.int64)


def _integer_program(gain, codes, epsilon, ratio=1.0):
    """Labels of several attributes from an integer program over the atoms (samples that share
    every group): an integer count ``c_a`` per atom, selecting its highest scores, whose
    expected gain ``P_a(c_a)`` is concave (the sorted gains' prefix sums) and enters through
    its tangents ``t_a <= P_a(j) + g_{a,j} (c_a - j)``; for every attribute and ordered pair of
    its groups ``(u, v)``, ``n_v * selected_u - n_u * selected_v <= floor(epsilon * n_u *
    n_v)``: integer coefficients and an integer bound (the floor taken exactly), so that the
    solver's tolerances cannot admit a rate gap beyond epsilon; with ``ratio < 1``, the rows of
    :func:`_ratio_rows` instead. Solved by HiGHS within :data:`TIME_LIMIT` seconds; the answer
    is checked with exact fractions."""
    import scipy.sparse as sp
    from scipy.optimize import Bounds, LinearConstraint, milp

    groups = np.stack(codes, axis=1)
    table, atom = np.unique(groups, axis=0, return_inverse=True)
    atom = atom.ravel()
    n_atoms = table.shape[0]
    ranking = _ranking(gain, atom)
    sizes = ranking[1]
    # variables: counts c (n_atoms), then epigraph values t (n_atoms)
    rows = [_tangent_rows(gain, atom, ranking, n_atoms)]
    rows += _group_rows(table, sizes, epsilon, ratio)
    found = milp(np.r_[np.zeros(n_atoms), -np.ones(n_atoms)],
                 integrality=np.r_[np.ones(n_atoms), np.zeros(n_atoms)],
                 bounds=Bounds(np.r_[np.zeros(n_atoms), np.full(n_atoms, -np.inf)],
                               np.r_[sizes, np.full(n_atoms, np.inf)]),
                 constraints=LinearConstraint(sp.vstack([r[0] for r in rows]).tocsr(),
                                              np.full(sum(r[0].shape[0] for r in rows), -np.inf),
                                              np.concatenate([r[1] for r in rows])),
                 options={"mip_rel_gap": 0.0, "time_limit": TIME_LIMIT})
    if found.x is not None:
        counts = np.round(found.x[:n_atoms]).astype(np.int64)
        labels = _top_scores(ranking, atom, counts)
        if selection_rate_gap(labels, groups, ratio=ratio) <= Fraction(epsilon):
            if found.status != 0:
                warnings.warn(f"The integer program of fair labels stopped at its time limit "
                              f"({TIME_LIMIT} s): the labels meet the constraint but may not "
                              f"be the most accurate.", RuntimeWarning, stacklevel=3)
            return labels
    warnings.warn("The integer program of fair labels found no answer; every label is 0 "
                  "(always fair, not the most accurate).", RuntimeWarning, stacklevel=3)
    return np.zeros(gain.size, dtype=np.int64)


def _tangent_rows(gain, atom, ranking, n_atoms):
    """``(matrix, upper)`` of the rows ``t_a - g_j c_a <= P_a(j) - g_j j``, one per sample
    (tangent ``j`` of its atom's expected gain), over the variables ``(c, t)``."""
    import scipy.sparse as sp

    n = gain.size
    order, sizes, starts, _ = ranking
    sorted_gain = gain[order]
    position = np.arange(n) - np.repeat(starts[:-1], sizes)  # j within its atom
    prefix = np.cumsum(sorted_gain) - np.repeat(np.r_[0.0, np.cumsum(sorted_gain)][starts[:-1]],
                                                sizes) - sorted_gain  # P_a(j)
    atom_of = atom[order]
    matrix = sp.csr_matrix(
        (np.r_[np.ones(n), -sorted_gain], (np.r_[np.arange(n), np.arange(n)],
                                           np.r_[n_atoms + atom_of, atom_of])),
        shape=(n, 2 * n_atoms))
    return matrix, prefix - sorted_gain * position


def _group_rows(table, sizes, epsilon, ratio):
    """The ``(matrix, upper)`` rows over ``(c, t)`` that bound, for every attribute and ordered
    pair of its groups present, the selection counts: ``n_v c_u - n_u c_v <= floor(epsilon
    n_u n_v)`` (exact), or :func:`_ratio_rows` with ``ratio < 1``."""
    import scipy.sparse as sp

    n_atoms = table.shape[0]
    exact = Fraction(epsilon)
    rows = []
    for a in range(table.shape[1]):
        group_sizes = np.bincount(table[:, a], weights=sizes).astype(np.int64)
        present = np.flatnonzero(group_sizes)
        member = sp.csr_matrix((np.ones(n_atoms), (table[:, a], np.arange(n_atoms))),
                               shape=(group_sizes.size, 2 * n_atoms))
        for u in present:
            for v in present:
                if u == v:
                    continue
                n_u, n_v = int(group_sizes[u]), int(group_sizes[v])
                if ratio == 1.0:
                    rows.append((n_v * member[u] - n_u * member[v],
                                 [math.floor(exact * n_u * n_v)]))
                    continue
                rows += [(a_v * member[v] - a_u * member[u], [bound])
                         for a_v, a_u, bound in _ratio_rows(n_u, n_v, ratio, epsilon)]
    return rows


def _ratio_rows(n_u, n_v, ratio, epsilon):
    """Integer rows ``a_v * c_v - a_u * c_u <= bound``, as triples ``(a_v, a_u, bound)``, whose
    integer solutions with ``0 <= c_u <= n_u`` and ``0 <= c_v <= n_v`` are exactly those of
    ``ratio * c_v / n_v - c_u / n_u <= epsilon`` (``ratio`` and ``epsilon`` at their exact
    binary values): the facets of the convex hull of those integer points.

    For each ``c_v`` the smallest admissible ``c_u`` is ``low(c_v) = max(0, ceil(ratio * n_u *
    c_v / n_v - epsilon * n_u))``, nondecreasing, computed with exact integers, and at most
    ``n_u`` (``ratio <= 1``). The hull is bounded below by the lower convex hull of the points
    ``(c_v, low(c_v))``: one row per edge (the edges at ``c_u = 0`` are the bounds). Its vertices
    are among the points whose distance above the line ``ratio * n_u * c_v / n_v - epsilon *
    n_u`` is smaller than at every point before them or every point after them (a point with a
    point no farther on each side lies on or above their segment), which leaves few points for
    the exact hull."""
    r, e = Fraction(ratio), Fraction(epsilon)
    scale = math.lcm(r.denominator, e.denominator)
    # low(c_v) = ceil((slope * c_v - offset) / modulus), all integers
    slope = r.numerator * (scale // r.denominator) * n_u
    offset = e.numerator * (scale // e.denominator) * n_u * n_v
    modulus = scale * n_v
    line = slope * np.arange(n_v + 1).astype(object) - offset
    low = np.maximum(-(-line // modulus), 0)
    excess = low * modulus - line
    before = np.minimum.accumulate(excess)
    after = np.minimum.accumulate(excess[::-1])[::-1]
    keep = np.zeros(n_v + 1, dtype=bool)
    keep[[0, n_v]] = True
    keep[1:] |= excess[1:] < before[:-1]
    keep[:-1] |= excess[:-1] < after[1:]
    hull = []
    for point in zip(np.flatnonzero(keep).tolist(), low[keep].tolist()):
        while len(hull) > 1 and ((hull[-1][0] - hull[-2][0]) * (point[1] - hull[-2][1])
                                 - (hull[-1][1] - hull[-2][1]) * (point[0] - hull[-2][0]) <= 0):
            hull.pop()
        hull.append(point)
    rows = []
    for (v0, u0), (v1, u1) in zip(hull, hull[1:]):
        if u1 > u0:  # (c_u - u0) * (v1 - v0) >= (c_v - v0) * (u1 - u0)
            d = math.gcd(u1 - u0, v1 - v0)
            a_v, a_u = (u1 - u0) // d, (v1 - v0) // d
            rows.append((a_v, a_u, a_v * v0 - a_u * u0))
    return rows


#: seconds the integer program of several attributes may take before its best answer is used
TIME_LIMIT = 20.0
