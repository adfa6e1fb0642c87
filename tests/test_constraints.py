"""Constraint rows: structure, keys, group means, and the factored products against dense G."""

import numpy as np
import pytest
import torch

from skfair import _kernels
from skfair._bounds import open_box
from skfair._kernels import row_gram
from skfair._rows import group_mean_set
from skfair.constraints import (
    AffineConstraint,
    ConstraintSet,
    DemographicParity,
    DisparateImpact,
    EqualizedOdds,
    EqualOpportunity,
    MeanResidual,
    constraint_gap,
    get_constraint,
    intersect_groups,
)


def test_demographic_parity_rows_are_differences_of_group_means():
    groups = torch.tensor([0, 0, 0, 1, 2, 2])
    cs = DemographicParity().build(groups, epsilon=0.1)
    assert cs.n_rows == 6  # every ordered pair of the three groups
    G = cs.dense().numpy()
    mean = {0: np.array([1, 1, 1, 0, 0, 0]) / 3, 1: np.array([0, 0, 0, 1, 0, 0]),
            2: np.array([0, 0, 0, 0, 1, 1]) / 2}
    for row, (a, u, v, label) in zip(G, cs.keys):
        assert (a, label) == (0, None)
        np.testing.assert_allclose(row, mean[u] - mean[v])
    np.testing.assert_allclose(cs.h, 0.1)


def test_marginal_rows_are_stacked_per_attribute():
    groups = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 0]])
    cs = DemographicParity().build(groups, epsilon=0.0)
    assert [k[0] for k in cs.keys].count(0) == 2
    assert [k[0] for k in cs.keys].count(1) == 6


def test_equalized_odds_and_equal_opportunity_use_label_cells():
    groups = torch.tensor([0, 0, 1, 1, 0, 1])
    y_true = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    eo = EqualizedOdds().build(groups, epsilon=0.05, y_true=y_true)
    assert sorted({k[3] for k in eo.keys}) == [0, 1] and eo.n_rows == 4
    eop = EqualOpportunity().build(groups, epsilon=0.05, y_true=y_true)
    assert {k[3] for k in eop.keys} == {1} and eop.n_rows == 2
    y = torch.tensor([0.1, 0.9, 0.3, 0.6, 0.7, 0.2], dtype=torch.float64)
    # Within Y=1: group 0 has {0.9, 0.7}, group 1 has {0.6}.
    assert constraint_gap("equal_opportunity", y, groups, y_true=y_true) == pytest.approx(0.2)
    # Within Y=0: group 0 has {0.1}, group 1 has {0.3, 0.2}.
    assert constraint_gap("equalized_odds", y, groups, y_true=y_true) == pytest.approx(0.2)


def test_mean_residual_rows_and_gradient_through_targets():
    groups = torch.tensor([0, 0, 1])
    y_true = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64, requires_grad=True)
    cs = MeanResidual().build(groups, epsilon=0.5, y_true=y_true)
    h = dict(zip(cs.keys, cs.h.detach().tolist()))
    assert h == {(0, 0, "+"): 2.0, (0, 1, "+"): 5.5, (0, 0, "-"): -1.0, (0, 1, "-"): -4.5}
    cs.h.sum().backward()  # h depends on y_true: +mean and -mean cancel
    np.testing.assert_allclose(y_true.grad, [0.0, 0.0, 0.0])
    y = torch.tensor([1.0, 1.0, 5.5], dtype=torch.float64)
    assert constraint_gap("mean_residual", y, groups, y_true=y_true.detach()) == pytest.approx(0.5)


def test_sample_weight_gives_weighted_means():
    groups = torch.tensor([0, 0, 1])
    w = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    assert constraint_gap("demographic_parity", y, groups, sample_weight=w) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="sample_weight"):
        DemographicParity().build(groups, epsilon=0.1, sample_weight=torch.tensor([1.0, -1, 1]))


@pytest.mark.parametrize("constraint", ["demographic_parity", "equalized_odds",
                                        "equal_opportunity", "mean_residual"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (None, 0.5), (-0.5, None), (None, None)])
def test_factored_products_match_dense(constraint, weighted, bounds):
    rng = np.random.default_rng(0)
    n = 50
    groups = torch.as_tensor(rng.integers(0, 3, (n, 2)))
    y_true = torch.as_tensor(rng.integers(0, 2, n).astype(float))
    w = torch.as_tensor(rng.uniform(0.5, 2, n)) if weighted else None
    cs = get_constraint(constraint).build(groups, epsilon=0.1, y_true=y_true, sample_weight=w)
    G, h = cs.dense(), cs.h
    z = torch.as_tensor(rng.normal(0.5, 1.0, size=n))
    lam = torch.as_tensor(rng.uniform(size=cs.n_rows))
    torch.testing.assert_close(cs.matvec(z), G @ z)
    torch.testing.assert_close(cs.rmatvec(lam), G.T @ lam)
    np.testing.assert_allclose(row_gram(cs.host_rows, cs.square_mass, np.arange(cs.n_rows)),
                               (G @ G.T).numpy(), atol=1e-12)
    np.testing.assert_allclose(cs.host_mass, np.bincount(cs.host_atom, weights=None if w is None
                                                         else w.numpy(), minlength=cs.n_atoms))
    violation, low, high = cs.violation_and_range(z)
    assert violation == pytest.approx(float((G @ z - h).max()))
    assert (low, high) == (float(z.min()), float(z.max()))
    assert cs.violation(z) == violation

    lo, hi = bounds
    y_ref = (z - G.T @ lam).clamp(lo, hi) if bounds != (None, None) else z - G.T @ lam
    free = torch.ones(n, dtype=torch.bool)
    if lo is not None:
        free &= y_ref > lo
    if hi is not None:
        free &= y_ref < hi
    # The exact solver's compiled passes on the factored form (skfair._kernels, skfair._exact).
    low, high = open_box(lo, hi)
    out, sums, free_mass = np.empty(n), np.empty(cs.n_atoms), np.empty(cs.n_atoms)
    shift = cs.host_coef.T @ lam.numpy()
    np.testing.assert_allclose(_kernels.atom_shift(cs.host_rows, lam.numpy()), shift, atol=1e-12)
    _kernels.clip_shift(z.numpy(), cs.host_atom, shift, cs.host_weight, low, high, out)
    distance = _kernels.shifted_sums(z.numpy(), cs.host_atom, shift, cs.host_weight, low, high,
                                     sums, free_mass)
    np.testing.assert_allclose(out, y_ref.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(cs.host_coef @ sums, (G @ y_ref).numpy(), atol=1e-12)
    np.testing.assert_allclose(_kernels.row_values(cs.host_rows, sums, cs.host_h),
                               (G @ y_ref - h).detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(row_gram(cs.host_rows, free_mass, np.arange(cs.n_rows)),
                               (G[:, free] @ G[:, free].T).numpy(), atol=1e-12)
    assert distance == pytest.approx(0.5 * float(((y_ref - z) ** 2).sum()), rel=1e-12)

    values, u = rng.normal(size=n), rng.uniform(size=cs.n_rows)
    y_host = y_ref.numpy()
    _kernels.free_sums(values, y_host, cs.host_atom, cs.host_weight, low, high, sums, free_mass)
    np.testing.assert_allclose(cs.host_coef @ sums, G[:, free].numpy() @ values[free.numpy()],
                               atol=1e-12)
    np.testing.assert_allclose(row_gram(cs.host_rows, free_mass, np.arange(cs.n_rows)),
                               (G[:, free] @ G[:, free].T).numpy(), atol=1e-12)
    _kernels.free_shift(values, y_host, cs.host_atom, cs.host_coef.T @ u, cs.host_weight, low,
                        high, out)
    np.testing.assert_allclose(out, (values - G.numpy().T @ u) * free.numpy(), atol=1e-12)


def test_large_codes_take_the_sorting_path():
    groups = torch.tensor([[0, 10**7], [1, 5], [0, 5], [1, 10**7]])
    cs = DemographicParity().build(groups, epsilon=0.1)
    assert cs.n_rows == 4
    y = torch.tensor([1.0, 0.0, 0.5, 0.5], dtype=torch.float64)
    assert constraint_gap("demographic_parity", y, groups) == pytest.approx(0.5)


def test_empty_groups_contribute_no_rows():
    cs = DemographicParity().build(torch.tensor([3, 3, 3]), epsilon=0.1)
    assert cs.n_rows == 0 and cs.dense().shape == (0, 3)
    assert constraint_gap("demographic_parity", torch.ones(3), torch.tensor([3, 3, 3])) == 0.0
    # Zero total weight makes a group absent.
    cs = DemographicParity().build(torch.tensor([0, 1]), epsilon=0.1,
                                   sample_weight=torch.tensor([1.0, 0.0]))
    assert cs.n_rows == 0


def test_reference_means_stand_in_for_absent_groups():
    groups = torch.tensor([0, 0])
    cs = group_mean_set(DemographicParity(), groups, epsilon=0.1,
                        reference_means={(0, 1, None): 0.3})
    assert cs.keys == [(0, 0, 1, None), (0, 1, 0, None)]
    np.testing.assert_allclose(cs.dense(), [[0.5, 0.5], [-0.5, -0.5]])
    np.testing.assert_allclose(cs.h, [0.4, -0.2])
    # A present group ignores its own reference; mean residual never borrows one.
    assert group_mean_set(DemographicParity(), torch.tensor([0, 1]), epsilon=0.1,
                          reference_means={(0, 1, None): 0.3}).n_rows == 2
    assert group_mean_set(MeanResidual(), groups, epsilon=0.1, y_true=torch.zeros(2),
                          reference_means={(0, 1, None): 0.3}).n_rows == 2


def test_intersect_groups_is_stable_with_cardinalities():
    groups = torch.tensor([[0, 2], [1, 0], [1, 2]])
    np.testing.assert_array_equal(intersect_groups(groups, [2, 3])[:, 0], [2, 3, 5])
    # Without cardinalities the batch's own range is used.
    np.testing.assert_array_equal(intersect_groups(groups[:2])[:, 0], [2, 3])


def test_custom_constraint_validation():
    class Bad(AffineConstraint):
        def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
            return torch.zeros(2, 3), torch.zeros(3)

    with pytest.raises(ValueError, match="must return G of shape"):
        Bad().build(torch.tensor([0, 1, 0]), epsilon=0.1)


@pytest.mark.parametrize("build", [
    lambda g: DemographicParity().build(g, epsilon=0.1),
    lambda g: intersect_groups(g, [2, 2]),
    lambda g: intersect_groups(g),
])
def test_negative_group_codes_are_rejected(build):
    # 40 rows: the mixed-radix path of the atoms, not the sorting one
    groups = torch.tensor([[0, 1], [1, -1]] * 20)
    with pytest.raises(ValueError, match="non-negative"):
        build(groups)


def test_custom_constraint_rejects_negative_group_codes():
    class Parity(AffineConstraint):
        def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
            raise AssertionError("rows must not see invalid codes")

    with pytest.raises(ValueError, match="non-negative"):
        Parity().build(torch.tensor([0, -2, 1]), epsilon=0.1)


def test_get_constraint():
    assert isinstance(get_constraint("equalized_odds"), EqualizedOdds)
    c = DemographicParity()
    assert get_constraint(c) is c
    with pytest.raises(ValueError, match="constraint must be one of"):
        get_constraint("statistical_parity")


def _family_rows(cs):
    """The pair families of ``cs``: for each, its rows by pair ``(i, j)`` of members."""
    rows = cs.host_rows
    families = []
    for f, k in enumerate(rows.family_size.tolist()):
        start = int(rows.family_start[f])
        families.append({(i, j): start + i * (k - 1) + j - (j > i)
                         for i in range(k) for j in range(k) if i != j})
    return families


@pytest.mark.parametrize("constraint", ["demographic_parity", "equalized_odds"])
def test_pair_families_list_every_ordered_pair_of_a_cell(constraint):
    rng = np.random.default_rng(1)
    groups = torch.as_tensor(rng.integers(0, 3, (60, 2)))
    y_true = torch.as_tensor(rng.integers(0, 2, 60).astype(float))
    cs = get_constraint(constraint).build(groups, epsilon=0.1, y_true=y_true)
    families = _family_rows(cs)
    rows = [r for family in families for r in family.values()]
    assert sorted(rows) == list(range(cs.n_rows))  # every row is a pair row here
    assert len(families) == 2 * (1 if constraint == "demographic_parity" else 2)
    G = cs.dense()
    for family in families:
        first = cs.keys[family[0, 1]]
        for (i, j), r in family.items():
            # key (attribute, u, v, label): one attribute and label cell per family, member i
            # is group u of every row (i, .)
            a, u, v, label = cs.keys[r]
            assert (a, label) == (first[0], first[3]) and u != v
            assert cs.keys[family[j, i]] == (a, v, u, label)
            assert cs.keys[family[i, 0 if i else 1]][1] == u
            assert cs.h[r] == cs.h[family[0, 1]]
            # row (u, v) is minus row (v, u): one statistic per group
            torch.testing.assert_close(G[family[j, i]], -G[r])
            # a difference of two group means
            assert float(G[r].clamp(min=0).sum()) == pytest.approx(1.0)
        k = round((1 + (1 + 4 * len(family)) ** 0.5) / 2)
        assert len(family) == k * (k - 1) and k == 3


def test_mean_residual_pairs_opposite_rows_and_reference_rows_stay_out():
    y_true = torch.tensor([0.2, 0.4, 0.6])
    cs = MeanResidual().build(torch.tensor([0, 0, 1]), epsilon=0.1, y_true=y_true)
    # each group's two rows are opposite, and their bounds sum to 2 * epsilon >= 0
    assert list(cs.keys) == [(0, 0, "+"), (0, 0, "-"), (0, 1, "+"), (0, 1, "-")]
    assert cs.host_rows.family_size.tolist() == [2, 2]
    G = cs.dense()
    for family in _family_rows(cs):
        r, s = family[0, 1], family[1, 0]
        torch.testing.assert_close(G[r], -G[s])
        assert float(cs.h[r] + cs.h[s]) == pytest.approx(0.2)
    cs = group_mean_set(DemographicParity(), torch.tensor([0, 0, 1]), epsilon=0.1,
                        reference_means={(0, 2, None): 0.3})
    assert list(_family_rows(cs)[0].values()) == [0, 1]
    assert int(cs.host_rows.family_start[-1]) == 2  # the reference rows are outside families
    assert cs.n_rows == 6  # two in-batch pair rows, two reference rows per present group


def test_row_structure_is_cached_by_the_atoms_present():
    from skfair._rows import row_structure

    rng = np.random.default_rng(2)
    groups = torch.as_tensor(rng.integers(0, 3, (40, 2)))
    first = DemographicParity().build(groups, epsilon=0.1)
    hits = row_structure.cache_info().hits
    # Another batch with the same atoms reuses the structure; its rows are its own.
    other = groups[torch.randperm(40)][:35]
    again = DemographicParity().build(other, epsilon=0.2)
    assert row_structure.cache_info().hits == hits + 1
    dense = again.dense()
    for r, (a, u, v, _) in enumerate(again.keys):
        col = other[:, a]
        expected = (col == u).double() / (col == u).sum() - (col == v).double() / (col == v).sum()
        torch.testing.assert_close(dense[r], expected)
    torch.testing.assert_close(again.h, torch.full((again.n_rows,), 0.2, dtype=torch.float64))
    assert again.keys == first.keys
    # Zero-weight atoms are not present: another structure, without the emptied group.
    w = (groups[:, 0] != 2).double()
    weighted = DemographicParity().build(groups, epsilon=0.1, sample_weight=w)
    assert {key[1] for key in weighted.keys if key[0] == 0} == {0, 1}


def test_rows_with_reference_means_share_a_cached_structure():
    """A stream's batches compare present groups with running means of absent ones: the rows
    are cached by which references exist, the means enter h at every batch (never the cached
    h itself)."""
    from skfair._rows import batch_rows

    groups = torch.tensor([0, 0, 1])
    first = group_mean_set(DemographicParity(), groups, epsilon=0.1,
                           reference_means={(0, 2, None): 0.3})
    hits = batch_rows.cache_info().hits
    second = group_mean_set(DemographicParity(), groups, epsilon=0.1,
                            reference_means={(0, 2, None): 0.7})
    again = group_mean_set(DemographicParity(), groups, epsilon=0.1,
                           reference_means={(0, 2, None): 0.3})
    assert batch_rows.cache_info().hits == hits + 2 and second.keys == first.keys
    torch.testing.assert_close(again.h, first.h, rtol=0, atol=0)
    for cs, ref in ((first, 0.3), (second, 0.7)):
        h = dict(zip(cs.keys, cs.h.tolist()))
        for u in (0, 1):
            # mean_u - ref <= eps and ref - mean_u <= eps
            assert h[(0, u, 2, None)] == pytest.approx(0.1 + ref)
            assert h[(0, 2, u, None)] == pytest.approx(0.1 - ref)
        assert h[(0, 0, 1, None)] == h[(0, 1, 0, None)] == pytest.approx(0.1)


def test_batches_of_the_same_composition_share_their_rows():
    """Rows depend on the counts of every combination of groups, not on the order of the
    samples: a batch with the same counts reuses them, and gets the same projection."""
    from skfair._rows import batch_rows

    rng = np.random.default_rng(3)
    groups = torch.as_tensor(rng.integers(0, 3, (40, 2)))
    first = DemographicParity().build(groups, epsilon=0.05)
    hits = batch_rows.cache_info().hits
    order = torch.as_tensor(rng.permutation(40))
    shuffled = DemographicParity().build(groups[order], epsilon=0.05)
    assert batch_rows.cache_info().hits == hits + 1
    assert shuffled.keys == first.keys
    np.testing.assert_array_equal(shuffled.dense().numpy(), first.dense()[:, order].numpy())
    # another epsilon is another h
    looser = DemographicParity().build(groups, epsilon=0.2)
    assert torch.all(looser.h == 0.2) and torch.all(first.h == 0.05)


def test_constraint_set_rejects_inconsistent_arrays():
    """The compiled passes index by atom without bounds checks: bad indices must not get there."""
    coef, h = torch.ones((1, 2), dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    with pytest.raises(ValueError, match="column indices"):
        ConstraintSet(coef, torch.tensor([0, 2]), h, ["r"])
    with pytest.raises(ValueError, match="column indices"):
        ConstraintSet(coef, torch.tensor([-1, 0]), h, ["r"])
    with pytest.raises(ValueError, match="column indices"):
        ConstraintSet(coef, torch.tensor([0.0, 1.0]), h, ["r"])
    with pytest.raises(ValueError, match="weight must have shape"):
        ConstraintSet(coef, torch.tensor([0, 1]), h, ["r"], weight=torch.ones(3))
    with pytest.raises(ValueError, match="dimensions"):
        ConstraintSet(coef[0], torch.tensor([0, 1]), h, ["r"])
    cs = ConstraintSet(coef, torch.tensor([0, 1, 1]), h, ["r"])
    assert cs.violation(torch.tensor([1.0, 2.0, 3.0])) == 6.0
    with pytest.raises(ValueError, match="one value per sample"):
        cs.violation(torch.tensor([1.0, 2.0]))


def test_gap_of_outputs_and_groups_of_different_lengths_is_an_error():
    with pytest.raises(ValueError, match="one value per sample"):
        constraint_gap("demographic_parity", torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1]))


def test_too_many_pair_rows_are_refused_with_a_clear_error(monkeypatch):
    """Beyond MAX_PAIR_ROWS (a number per pair row adds up: thousands of groups present
    together) the build raises a ValueError saying what to do, instead of exhausting memory."""
    from skfair import _rows

    monkeypatch.setattr(_rows, "MAX_PAIR_ROWS", 50)
    _rows.row_structure.cache_clear()
    groups = torch.arange(8)  # 8 groups: 56 pair rows
    with pytest.raises(ValueError, match=r"8 groups present together \(attribute 0\) needs 56 "
                                         r"pair rows.*marginal instead of intersectional"):
        DemographicParity().build(groups, epsilon=0.1)
    assert DemographicParity().build(torch.arange(7), epsilon=0.1).n_rows == 42
    _rows.row_structure.cache_clear()


@pytest.mark.parametrize("ratio", [0.8, 0.5, 1.0])
def test_disparate_impact_rows_are_scaled_means(ratio):
    """Row (u, v) is ratio * mean_v - mean_u <= epsilon (keys (attribute, u, v, label)), for
    every ordered pair of groups present; weighted means with sample weights."""
    rng = np.random.default_rng(0)
    groups = torch.as_tensor(rng.integers(0, 3, 30))
    w = torch.as_tensor(rng.uniform(0.5, 2.0, 30))
    y = torch.as_tensor(rng.uniform(size=30))
    cs = DisparateImpact(ratio).build(groups, epsilon=0.01, sample_weight=w)
    means = {g: float((y * w)[groups == g].sum() / w[groups == g].sum()) for g in range(3)}
    values = dict(zip(cs.keys, (cs.matvec(y) - cs.h).tolist()))
    assert len(values) == 6
    for (a, u, v, label), value in values.items():
        assert (a, label) == (0, None)
        assert value == pytest.approx(ratio * means[v] - means[u] - 0.01, abs=1e-12)


def test_disparate_impact_parameters():
    assert repr(DisparateImpact()) == "DisparateImpact(ratio=0.8)"
    assert get_constraint("disparate_impact").ratio == 0.8
    for bad in (0, 1.5, True, "0.8"):
        with pytest.raises(ValueError, match="ratio must be a number in"):
            DisparateImpact(bad)
