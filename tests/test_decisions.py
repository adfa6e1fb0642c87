"""Fair labels: exact selection-rate parity, the best expected accuracy, checked against brute
force and an integer program written here."""

import itertools
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from skfair.decisions import _ratio_rows, fair_labels, selection_rate_gap


def _exact_gap(labels, groups):
    """The largest selection-rate difference per attribute, counted here with fractions."""
    groups = groups.reshape(len(labels), -1)
    gap = Fraction(0)
    for column in groups.T:
        rates = [Fraction(int(labels[column == g].sum()), int((column == g).sum()))
                 for g in np.unique(column)]
        gap = max(gap, max(rates) - min(rates))
    return gap


def _brute_force(proba, groups, epsilon):
    """The best expected gain over every labeling that meets the constraint (all 2^n of them,
    the rate gaps cross-multiplied to integers)."""
    n = len(proba)
    labelings = np.array(list(itertools.product([0, 1], repeat=n)))
    feasible = np.ones(len(labelings), dtype=bool)
    for column in groups.reshape(n, -1).T:
        for u, v in itertools.permutations(np.unique(column), 2):
            n_u, n_v = int((column == u).sum()), int((column == v).sum())
            c_u, c_v = labelings[:, column == u].sum(1), labelings[:, column == v].sum(1)
            feasible &= n_v * c_u - n_u * c_v <= math.floor(Fraction(epsilon) * n_u * n_v)
    return float((labelings[feasible] @ (2 * proba - 1)).max())


def _milp_reference(proba, groups, epsilon, ratio=1.0):
    """The best expected gain from scipy's MILP on per-sample binaries, with the rate gaps (or
    ``ratio * rate_v - rate_u`` for a ratio of small denominator) cross-multiplied to integers
    (written independently of the package)."""
    from scipy.optimize import LinearConstraint, milp

    n = len(proba)
    exact_ratio = Fraction(ratio)
    p, q = exact_ratio.numerator, exact_ratio.denominator
    assert q <= 64
    rows, upper = [], []
    for column in groups.reshape(n, -1).T:
        present = np.unique(column)
        for u, v in itertools.permutations(present, 2):
            n_u, n_v = int((column == u).sum()), int((column == v).sum())
            rows.append(p * n_u * (column == v) - q * n_v * (column == u))
            upper.append(math.floor(q * Fraction(epsilon) * n_u * n_v))
    if not rows:
        return float(np.maximum(2 * proba - 1, 0).sum())
    found = milp(-(2 * proba - 1), integrality=np.ones(n), bounds=(0, 1),
                 constraints=LinearConstraint(np.array(rows, float), -np.inf, upper),
                 options={"mip_rel_gap": 0.0, "time_limit": 60})
    assert found.status == 0  # proven optimal
    return float(((2 * proba - 1) * np.round(found.x)).sum())


def _instance(rng, n, n_attributes, max_groups):
    groups = np.stack([rng.integers(0, int(rng.integers(1, max_groups + 1)), n)
                       for _ in range(n_attributes)], axis=1)
    proba = rng.uniform(size=n) if rng.uniform() < 0.5 else np.round(rng.uniform(size=n), 1)
    epsilon = float(rng.choice([0.0, 0.05, 0.1, 0.25, 1 / 3, 0.5, 1.0]))
    return proba, groups, epsilon


@pytest.mark.parametrize("seed", range(4))
def test_labels_are_exactly_fair_and_optimal_on_small_instances(seed):
    """Every labeling of up to 10 samples enumerated: the chosen one meets the constraint as
    exact fractions and reaches the best expected accuracy (one or two attributes, ties)."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        proba, groups, epsilon = _instance(rng, int(rng.integers(1, 11)),
                                           int(rng.integers(1, 3)), 3)
        labels = fair_labels(proba, groups, epsilon)
        assert _exact_gap(labels, groups) <= Fraction(epsilon)
        assert ((2 * proba - 1) * labels).sum() == pytest.approx(
            _brute_force(proba, groups, epsilon), abs=1e-9)


@pytest.mark.parametrize("n_attributes", [1, 2, 3])
@pytest.mark.parametrize("seed", range(3))
def test_labels_match_an_integer_program_on_larger_instances(n_attributes, seed):
    """Up to 40 samples and 5 groups per attribute: the window search (one attribute) and the
    package's integer program over atoms (several) reach the optimum of an independent MILP on
    per-sample binaries."""
    rng = np.random.default_rng(100 + seed)
    for _ in range(5):
        proba, groups, epsilon = _instance(rng, int(rng.integers(12, 41)), n_attributes, 5)
        labels = fair_labels(proba, groups, epsilon)
        assert _exact_gap(labels, groups) <= Fraction(epsilon)
        assert ((2 * proba - 1) * labels).sum() == pytest.approx(
            _milp_reference(proba, groups, epsilon), abs=1e-6)


def test_intersectional_labels_constrain_the_crossed_cells():
    rng = np.random.default_rng(5)
    proba, groups = rng.uniform(size=200), rng.integers(0, 3, (200, 2))
    labels = fair_labels(proba, groups, 0.1, intersectional=True)
    cells = groups[:, 0] * 3 + groups[:, 1]
    assert _exact_gap(labels, cells) <= Fraction(0.1)
    np.testing.assert_array_equal(labels, fair_labels(proba, cells, 0.1))


def test_a_group_of_one_sample_pins_the_others_near_zero_or_one():
    """A single sample can only be selected at rate 0 or 1: at epsilon 0.2 every other group's
    rate is within 0.2 of it. Here the lone sample is very likely positive and the others mostly
    not: selecting it would force 80% selections elsewhere, so it is not selected."""
    proba = np.r_[0.99, np.full(10, 0.3), np.full(10, 0.2)]
    groups = np.r_[0, np.ones(10, int), np.full(10, 2)]
    labels = fair_labels(proba, groups, 0.2)
    assert labels[0] == 0
    assert _exact_gap(labels, groups) <= Fraction(0.2)
    assert labels[1:].sum() <= 4  # at most 2 of each group of 10


def test_ties_are_broken_by_position_and_epsilon_one_is_the_plain_decision():
    groups = np.array([0, 0, 0, 1, 1, 1])
    # equal probabilities within a group: its selections go to its first positions
    labels = fair_labels(np.r_[0.7, 0.7, 0.7, 0.6, 0.6, 0.6], groups, 0.0)
    np.testing.assert_array_equal(labels, [1, 1, 1, 1, 1, 1])
    proba = np.r_[0.7, 0.7, 0.7, 0.45, 0.45, 0.45]
    # rates 1 and 2/3: the two selections of group 1 go to its first two positions
    np.testing.assert_array_equal(fair_labels(proba, groups, 0.34), [1, 1, 1, 1, 1, 0])
    # the float 1/3 lies below the fraction 1/3: a gap of exactly one third is not allowed
    np.testing.assert_array_equal(fair_labels(proba, groups, 1 / 3), [1, 1, 1, 1, 1, 1])
    rng = np.random.default_rng(0)
    p = rng.uniform(size=50)
    np.testing.assert_array_equal(fair_labels(p, rng.integers(0, 3, 50), 1.0), p > 0.5)


def test_selection_rate_gap_is_exact():
    assert selection_rate_gap([1, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]) == Fraction(1, 3)
    assert selection_rate_gap([1, 1], [[0, 0], [0, 1]]) == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(proba=[0.5, 1.5], groups=[0, 1], epsilon=0.1), "probabilities"),
    (dict(proba=[0.5, 0.5], groups=[0, 1, 1], epsilon=0.1), "same n"),
    (dict(proba=[0.5, 0.5], groups=[0, -1], epsilon=0.1), "non-negative integer"),
    (dict(proba=[0.5, 0.5], groups=[0, 1], epsilon=1.5), "epsilon"),
    (dict(proba=[0.5, 0.5], groups=[0, 1], epsilon=True), "epsilon"),
])
def test_bad_inputs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fair_labels(**kwargs)


def _ratio_feasible(labelings, groups, epsilon, ratio):
    """Which rows of ``labelings`` (0/1, one labeling a row) meet ``ratio * c_v / n_v - c_u /
    n_u <= epsilon`` for every attribute and ordered pair of its groups: the counts by numpy,
    the admissible pairs of counts with fractions."""
    labelings = np.atleast_2d(labelings)
    n = labelings.shape[1]
    exact_ratio, exact_epsilon = Fraction(ratio), Fraction(epsilon)
    feasible = np.ones(len(labelings), dtype=bool)
    for column in groups.reshape(n, -1).T:
        for u, v in itertools.permutations(np.unique(column), 2):
            n_u, n_v = int((column == u).sum()), int((column == v).sum())
            admissible = np.array([[exact_ratio * Fraction(c_v, n_v) - Fraction(c_u, n_u)
                                    <= exact_epsilon for c_v in range(n_v + 1)]
                                   for c_u in range(n_u + 1)])
            c_u, c_v = labelings[:, column == u].sum(1), labelings[:, column == v].sum(1)
            feasible &= admissible[c_u, c_v]
    return feasible


def _brute_force_ratio(proba, groups, epsilon, ratio):
    """The best expected gain over every labeling whose selection rates meet
    ``rate_u >= ratio * rate_v - epsilon`` for every attribute and ordered pair."""
    labelings = np.array(list(itertools.product([0, 1], repeat=len(proba))))
    feasible = _ratio_feasible(labelings, groups, epsilon, ratio)
    return float((labelings[feasible] @ (2 * proba - 1)).max())


def _quiet_fair_labels(*args, **kwargs):
    """fair_labels, failing on its warnings (a fallback to all-zero labels or a time limit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return fair_labels(*args, **kwargs)


@pytest.mark.parametrize("seed", range(3))
def test_ratio_labels_are_exact_and_optimal(seed):
    """The disparate-impact rule on labels (every selection rate at least ratio times every
    other, less epsilon), one attribute or crossed cells: exact and optimal by brute force."""
    rng = np.random.default_rng(50 + seed)
    for _ in range(30):
        n = int(rng.integers(1, 11))
        groups = rng.integers(0, int(rng.integers(1, 4)), n)
        proba = rng.uniform(size=n) if rng.uniform() < 0.5 else np.round(rng.uniform(size=n), 1)
        ratio = float(rng.choice([0.5, 0.8, 1.0]))
        epsilon = float(rng.choice([0.0, 0.05, 0.2]))
        labels = fair_labels(proba, groups, epsilon, ratio=ratio)
        assert _ratio_feasible(labels, groups, epsilon, ratio).all()
        assert ((2 * proba - 1) * labels).sum() == pytest.approx(
            _brute_force_ratio(proba, groups, epsilon, ratio), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_ratio_labels_over_several_attributes_are_exact_and_optimal(seed):
    """The disparate-impact rule on each of two or three attributes (marginal): every labeling
    of up to 10 samples enumerated; the chosen one meets every ordered pair's rule as exact
    fractions (at the float ratio's binary value) and reaches the best expected accuracy, with
    no fallback to all-zero labels."""
    rng = np.random.default_rng(70 + seed)
    for _ in range(30):
        n = int(rng.integers(1, 11))
        proba, groups, _ = _instance(rng, n, int(rng.integers(2, 4)), 3)
        ratio = float(rng.choice([0.5, 0.8, 0.9, 1.0, rng.uniform(0.05, 1.0)]))
        epsilon = float(rng.choice([0.0, 0.0, 0.05, 0.2]))
        labels = _quiet_fair_labels(proba, groups, epsilon, ratio=ratio)
        assert _ratio_feasible(labels, groups, epsilon, ratio).all()
        assert ((2 * proba - 1) * labels).sum() == pytest.approx(
            _brute_force_ratio(proba, groups, epsilon, ratio), abs=1e-9)


@pytest.mark.parametrize("seed", range(2))
def test_ratio_labels_over_several_attributes_match_an_integer_program(seed):
    """Up to 40 samples, 5 groups per attribute, ratios of small denominators (so that the
    reference MILP on per-sample binaries has exact integer rows): the same optimum."""
    rng = np.random.default_rng(200 + seed)
    for _ in range(5):
        proba, groups, _ = _instance(rng, int(rng.integers(12, 41)), int(rng.integers(2, 4)), 5)
        ratio = float(rng.choice([0.5, 0.75, 0.875]))
        epsilon = float(rng.choice([0.0, 0.05, 0.1]))
        labels = _quiet_fair_labels(proba, groups, epsilon, ratio=ratio)
        assert _ratio_feasible(labels, groups, epsilon, ratio).all()
        assert ((2 * proba - 1) * labels).sum() == pytest.approx(
            _milp_reference(proba, groups, epsilon, ratio), abs=1e-6)


def test_ratio_labels_with_a_group_of_one_sample():
    """A lone sample's group has rate 0 or 1. At epsilon 0 a rate of 0 forces every group of its
    attribute to 0, so the lone sample is selected even though unlikely positive (the others
    gain more); then the rest of its attribute needs rate >= 0.8, 7 or 8 of 8. Leaving one out
    puts the second attribute at 3/4 or 4/5 against 1, below the float 0.8 (slightly above
    4/5): all are selected."""
    proba = np.r_[0.2, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.6, 0.1]
    groups = np.stack([np.r_[0, np.ones(8, int)], np.r_[0, 0, 0, 0, 1, 1, 1, 1, 1]], axis=1)
    labels = _quiet_fair_labels(proba, groups, 0.0, ratio=0.8)
    assert labels.tolist() == [1] * 9
    # at 0.75 the second attribute may have 4 of 5 (or 3 of 4): the sample at 0.1 is left out
    assert _quiet_fair_labels(proba, groups, 0.0, ratio=0.75).tolist() == [1] * 8 + [0]
    assert _ratio_feasible(labels, groups, 0.0, 0.8).all()
    assert ((2 * proba - 1) * labels).sum() == pytest.approx(
        _brute_force_ratio(proba, groups, 0.0, 0.8), abs=1e-9)
    # the lone sample all but surely negative: every label of its attribute 0 is best
    proba[0] = 0.0
    proba[1:] = 0.55
    labels = _quiet_fair_labels(proba, groups, 0.0, ratio=0.8)
    assert labels.tolist() == [0] * 9
    # a lone sample in each attribute, epsilon 0.1 lets rates of 1 and 0.9 coexist
    groups[:, 1] = np.r_[np.zeros(8, int), 1]
    labels = _quiet_fair_labels(np.full(9, 0.7), groups, 0.1, ratio=0.8)
    assert labels.tolist() == [1] * 9


def test_ratio_labels_on_marginal_attributes_and_bad_ratios():
    proba, groups = np.full(4, 0.7), np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    assert fair_labels(proba, groups, 0.0, ratio=0.8).tolist() == [1] * 4
    assert fair_labels(proba, groups, 0.0, ratio=0.8, intersectional=True).tolist() == [1] * 4
    # ratio 1 is demographic parity
    rng = np.random.default_rng(3)
    p, g = rng.uniform(size=30), rng.integers(0, 3, (30, 2))
    np.testing.assert_array_equal(fair_labels(p, g, 0.1, ratio=1.0), fair_labels(p, g, 0.1))
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="ratio"):
            fair_labels(proba, groups[:, 0], 0.0, ratio=bad)


def test_selection_rate_gap_with_a_ratio():
    labels, groups = [1, 1, 0, 1, 0, 0], np.array([[0, 0], [0, 0], [0, 1], [1, 1], [1, 1],
                                                   [1, 1]])
    assert selection_rate_gap(labels, groups) == Fraction(3, 4)  # second attribute: 1 - 1/4
    # 0.8 at its binary value times 1, less 1/4
    assert selection_rate_gap(labels, groups, ratio=0.8) == Fraction(0.8) - Fraction(1, 4)
    assert selection_rate_gap(labels, groups, ratio=0.25) == Fraction(0)


def test_ratio_rows_admit_exactly_the_admissible_counts():
    """The integer rows of one ordered pair of groups: their integer solutions in the box are
    the pairs of counts meeting ``ratio * c_v / n_v - c_u / n_u <= epsilon`` as fractions."""
    rng = np.random.default_rng(9)
    for _ in range(150):
        n_u, n_v = (int(x) for x in rng.integers(1, 21, 2))
        ratio = float(rng.choice([0.8, 0.5, 1 / 3, 0.999, 1.0, rng.uniform(0.01, 1.0)]))
        epsilon = float(rng.choice([0.0, 0.05, 1 / 3, rng.uniform(0.0, 1.0), 1.0]))
        rows = np.array(_ratio_rows(n_u, n_v, ratio, epsilon), dtype=np.int64).reshape(-1, 3)
        c_u, c_v = np.meshgrid(np.arange(n_u + 1), np.arange(n_v + 1), indexing="ij")
        admitted = ((rows[:, 0, None, None] * c_v - rows[:, 1, None, None] * c_u)
                    <= rows[:, 2, None, None]).all(axis=0)
        exact = np.array([[Fraction(ratio) * Fraction(b, n_v) - Fraction(a, n_u)
                           <= Fraction(epsilon) for b in range(n_v + 1)]
                          for a in range(n_u + 1)])
        np.testing.assert_array_equal(admitted, exact)
