"""The exact active-set fallback of the projection (``skfair._active_set``).

Checked against references that share none of its code: the QP method against Clarabel on
random small QPs with duplicated, opposite and dependent rows; the whole method, started cold
(from zero multipliers, not from the Newton iteration's point), against the oracle of
``tests/_oracle.py`` (numpy group means, Clarabel's projection); and the fuzzing's in-range
failures of the Newton iteration, and its refusals of raw outputs far beyond the outputs' scale,
which it now solves through the public layer.
"""

import numpy as np
import pytest
import torch
from _oracle import (
    BOUNDS,
    BUILTINS,
    EPSILONS,
    Instance,
    check,
    constraint_set,
    far_out,
    gap,
    infeasibility,
    make_instance,
    pair_rows,
    reference_problems,
    scale,
)
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from skfair import FairnessLayer, _active_set, _exact, _precise
from skfair._bounds import Bounds
from skfair._constraint_set import dense_coef
from skfair._guarantee import POLISH_TOL, active_rows, certified, output_scale, tolerance
from skfair._guarantee import check as check_outputs


def _clarabel_qp(normals, beta):
    import cvxpy as cp

    x = cp.Variable(normals.shape[1])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x) / 2), [normals @ x <= beta])
    # (rows opposed at a gap of 1e-9 are a degenerate cone for an interior-point method: its
    # "inaccurate" answers are still far within the comparison's 1e-6; None when it fails)
    try:
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    except cp.error.SolverError:
        return None
    return x.value if problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) else None


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(dim=st.integers(1, 8), n_rows=st.integers(1, 10), seed=st.integers(0, 2**32 - 1),
       repeated=st.integers(0, 6), opposite_gap=st.sampled_from([0.0, 1e-9, 0.1]))
@example(dim=7, n_rows=9, seed=280386, repeated=0, opposite_gap=0.0)  # (Clarabel's larger)
def test_goldfarb_idnani_is_the_qp_solution_with_dependent_rows(dim, n_rows, seed, repeated,
                                                                 opposite_gap):
    rng = np.random.default_rng(seed)
    normals = rng.normal(size=(n_rows, dim))
    # rows that repeat others, combine two of them, or oppose one at a gap (a pair at epsilon)
    for _ in range(repeated):
        i, j = rng.integers(n_rows, size=2)
        kind = rng.integers(3)
        normals = np.vstack([normals, normals[i] if kind == 0 else
                             normals[i] + normals[j] if kind == 1 else -normals[i]])
    feasible = rng.normal(size=dim) * 3
    slack = np.where(rng.uniform(size=len(normals)) < 0.5, 0.0,
                     rng.uniform(0, 1, len(normals)))
    beta = normals @ feasible + slack
    beta[n_rows:] += opposite_gap
    unit = max(1.0, np.abs(beta).max())
    lam = _active_set._goldfarb_idnani(normals, beta, _active_set.VIOLATION_TOL * unit)
    # the KKT conditions, which certify the solution of a convex QP: multipliers >= 0, the
    # rows met, a row with a multiplier active, and stationarity x + normals^T lam = 0
    assert lam is not None and lam.min() >= 0
    x = -normals.T @ lam
    assert (normals @ x - beta).max() <= 1e-9 * unit
    assert np.all((lam == 0) | (np.abs(normals @ x - beta) <= 1e-8 * max(unit, lam.max())))
    reference_x = _clarabel_qp(normals, beta)
    if reference_x is not None:
        # x is feasible (above): its objective is at most the reference's, and where the
        # reference's is no smaller they agree. (Degenerate cones cost Clarabel digits: at
        # opposite rows with no gap between them it stops about 1e-6 from the solution, and
        # beside a row within 1e-5 of active it ended 1e-5 away with a larger objective.)
        objective, reference = x @ x / 2, reference_x @ reference_x / 2
        assert objective <= reference + 1e-9 * max(1.0, reference)
        if reference <= objective:
            np.testing.assert_allclose(x, reference_x, atol=1e-5)


def test_goldfarb_idnani_reports_contradicting_rows():
    normals = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    beta = np.array([-1.0, -1.0, 0.0])  # x0 <= -1 and x0 >= 1
    assert _active_set._goldfarb_idnani(normals, beta, 1e-13) is None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 60), n_attributes=st.integers(1, 4), max_groups=st.integers(2, 8),
       constraint=st.sampled_from(BUILTINS), epsilon=st.sampled_from(EPSILONS),
       bounds=st.sampled_from(BOUNDS), z_kind=st.sampled_from(["uniform", "ties", "constant"]),
       weights=st.sampled_from(["none", "mild", "zeros"]), intersectional=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_cold_start_is_the_projection(n, n_attributes, max_groups, constraint, epsilon, bounds,
                                      z_kind, weights, intersectional, seed):
    inst = make_instance(n, n_attributes, max_groups, constraint, epsilon, bounds, z_kind, 1.0,
                         False, weights, "inside", intersectional, seed)
    assume(pair_rows(inst) <= 2000 and infeasibility(inst) == 0.0)
    cs = constraint_set(inst)
    box = Bounds.of(bounds).box
    scale_ = _exact.problem_scale(torch.as_tensor(inst.z), cs, *Bounds.of(bounds))
    found = _active_set.solve(inst.z.astype(np.float64), cs, *box, np.zeros(cs.n_rows), scale_)
    if found is None:
        # its one documented excuse: a pattern whose held outputs contradict the rows needs
        # the proximal step, a QP with a slack per row, which it does not take beyond
        # MAX_UNKNOWNS unknowns (the layer's other methods project such batches)
        assert cs.n_rows + cs.n_atoms > _active_set.MAX_UNKNOWNS, (
            "the active-set method did not settle from zero multipliers")
        assert check(inst).ok
        return
    y, lam, _ = found
    assert lam.min(initial=0.0) >= 0
    if bounds is not None:
        assert bounds[0] <= y.min() and y.max() <= bounds[1]
    assert gap(inst, y) <= epsilon + 1e-9 * scale(inst, y)
    assert reference_problems(inst, y) == []


#: the fuzzing's two in-range failures of the Newton iteration (mean residual over several
#: marginal attributes at epsilon 1e-9 with sample weights: dependent rows), shrunk
FUZZ_FAILURES = {
    "unbounded, 36 samples, four attributes": Instance(
        z=np.ones(36), constraint="mean_residual", epsilon=1e-9, bounds=None,
        groups=np.array([
            [15, 2, 6, 0], [8, 2, 1, 0], [14, 2, 1, 0], [15, 2, 1, 0], [14, 2, 6, 0],
            [8, 2, 11, 2], [8, 3, 1, 0], [15, 2, 1, 0], [6, 2, 1, 0], [11, 2, 1, 0],
            [14, 2, 7, 0], [15, 3, 1, 2], [11, 3, 13, 0], [15, 2, 1, 0], [8, 2, 1, 0],
            [14, 3, 10, 0], [6, 2, 1, 2], [15, 2, 6, 0], [8, 3, 1, 0], [15, 3, 1, 1],
            [15, 2, 1, 0], [15, 2, 11, 0], [11, 3, 1, 0], [8, 2, 11, 0], [8, 2, 6, 0],
            [14, 2, 1, 0], [11, 3, 6, 0], [6, 2, 1, 0], [15, 2, 6, 0], [15, 3, 1, 0],
            [10, 3, 8, 0], [15, 2, 1, 0], [6, 2, 1, 0], [15, 2, 1, 0], [1, 2, 1, 0],
            [15, 3, 1, 0]]),
        y_true=np.array([
            0.9299238548391016, 0.6765488372028912, 0.21725618528691193, 0.014200659681928296,
            0.29710441252988695, 0.23603561626612868, 0.30143752098602916,
            0.22603358172844956, 0.6332290562833366, 0.9179448520169694, 0.8360876494283919,
            0.9328202680293988, 0.8008846169426463, 0.1535919040701892, 0.7715714673679664,
            0.13390630435240192, 0.013492598363878394, 0.4532161510849937,
            0.5007951895357536, 0.5254523981226862, 0.16324438987733736, 0.1171436298716424,
            0.20992720584207714, 0.9443110082370668, 0.3909726212695074, 0.6450448084677551,
            0.7394740884945986, 0.5245967531878998, 0.7750561720780955, 0.8748571079751544,
            0.5678706566206951, 0.9172704963369699, 0.6690835201389651, 0.49555980442114855,
            0.29598899891604935, 0.07190051650265972]),
        sample_weight=np.array([
            1.3, 0.8, 0.89, 1.4, 1.2, 0.93, 0.58, 1.9, 1.2, 1.7, 1.7, 1.9, 0.75, 0.68, 1.4,
            1.2, 1.4, 0.54, 1.3, 1.9, 2.0, 1.6, 1.6, 1.5, 0.52, 1.8, 0.58, 1.3, 1.1, 0.63, 0.8,
            1.0, 1.8, 0.73, 0.61, 1.4])),
    "bounded float32, 4 samples, three attributes": Instance(
        z=np.array([0.8, 1.7, 0.34, -1.3], dtype=np.float32), constraint="mean_residual",
        epsilon=1e-9, bounds=(-5.0, 3.0),
        groups=np.array([[8, 0, 15], [18, 0, 17], [8, 0, 18], [12, 0, 3]]),
        y_true=np.array([0.66, 0.46, 0.45, 0.019]),
        sample_weight=np.array([1.7, 0.85, 1.0, 0.98])),
}


@pytest.mark.parametrize("name", FUZZ_FAILURES)
def test_dependent_rows_at_tiny_epsilon_are_projected(name):
    inst = FUZZ_FAILURES[name]
    cs = constraint_set(inst)
    newton = _exact.solve(torch.as_tensor(inst.z, dtype=torch.float64), cs,
                          *Bounds.of(inst.bounds))
    # what made these failures: the Newton iteration alone ends short of the tolerance
    assert newton.check[0] > 1e-9
    outcome = check(inst, with_reference=True)
    assert outcome.ok and not outcome.loud, outcome.problems


#: the fuzzing's refusals of raw outputs far beyond the outputs' scale (the rounding of ``z``
#: exceeds the outputs), shrunk
FAR_OUT_REFUSALS = {
    "unbounded, one output 1e20 held by its target": Instance(
        z=np.array([1.19506605e20], dtype=np.float32), groups=np.array([[0, 0]]),
        constraint="mean_residual", epsilon=1.0, bounds=None, y_true=np.array([-3.0]),
        sample_weight=np.array([1e6])),
    "bounded, outputs 1e12 out, three attributes at epsilon 1e-9": Instance(
        z=np.array([1e12, -7e11, 6e11], dtype=np.float32),
        groups=np.array([[0, 0, 1], [0, 0, 2], [0, 1, 0]]), constraint="mean_residual",
        epsilon=1e-9, bounds=(0.0, 1.0), y_true=np.array([0.392, 0.922, 0.943])),
    "bounded, outputs 1e20 out, weights spanning 1e12, epsilon 0": Instance(
        z=np.array([9e19, -7e19, 8e19, 6e19, -9e19]), groups=np.array([[3], [1], [0], [2], [2]]),
        constraint="equal_opportunity", epsilon=0.0, bounds=(-5.0, 3.0), y_true=np.ones(5),
        sample_weight=np.array([2e-2, 1e6, 3e-1, 2e-3, 1e-6]), intersectional=True),
    "unbounded, outputs 1e8 out beside one inside": Instance(
        z=np.array([0.79, -1e8, 1e8], dtype=np.float32), groups=np.array([[2, 2], [0, 1], [1, 0]]),
        constraint="equalized_odds", epsilon=1e-3, bounds=None, y_true=np.zeros(3)),
    "bounded, one output 1e12 out beside one inside, weights spanning 1e7": Instance(
        z=np.array([1e12, 0.7]), groups=np.array([[0, 0], [1, 0]]), constraint="mean_residual",
        epsilon=0.05, bounds=(-5.0, 3.0), y_true=np.array([0.08, 0.5]),
        sample_weight=np.array([1e6, 8.4e-2])),
    "bounded, parity of outputs 1e20 out, weights spanning 1e7": Instance(
        z=np.array([9.12424e19, -5.02295e19, 6.04101e19]),
        groups=np.array([[0, 0], [1, 0], [1, 1]]), constraint="demographic_parity",
        epsilon=1.0, bounds=(-5.0, 3.0), sample_weight=np.array([3.9e-2, 1e6, 6.3e-2])),
    "bounded float32, equal opportunity of outputs 1e20 out": Instance(
        z=np.array([6.9684782e19, -7.5951985e19, -6.0551478e19], dtype=np.float32),
        groups=np.array([[1, 0], [0, 0], [0, 1]]), constraint="equal_opportunity",
        epsilon=1e-3, bounds=(-5.0, 3.0), y_true=np.ones(3), sample_weight=np.array([2.0, 1, 1])),
    "bounded float32, outputs 1e20 out on both sides, two attributes": Instance(
        z=np.array([1e20, -1e20, 1e20], dtype=np.float32),
        groups=np.array([[1, 0], [1, 1], [0, 1]]), constraint="equal_opportunity",
        epsilon=0.05, bounds=(0.0, 1.0), y_true=np.ones(3),
        sample_weight=np.array([1.7, 1.6, 1.6])),
    # The two below were refused: their outputs were the projection, but the multipliers found
    # for them were a combination of size 1e12 that cancels to within rounding, which no
    # certificate accepts; the multipliers that certify them are searched for now.
    "bounded, equalized odds of outputs 1e12 out, weights spanning 2.5e11": Instance(
        z=np.array([0.6228132, 0.3488771, 1e12, 1e12, 0.9632723, 0.59120321, -1e12]),
        groups=np.array([[2, 5], [2, 1], [3, 1], [3, 1], [2, 4], [10, 4], [2, 6]]),
        constraint="equalized_odds", epsilon=1e-3, bounds=(0.0, 1.0), y_true=np.ones(7),
        sample_weight=np.array([4e3, 5.0, 3e4, 4e-6, 9e-2, 5e-2, 1e6])),
    "bounded float32, intersectional equalized odds of tied outputs 1e12 out": Instance(
        z=np.array([8.3e11, 8.3e11, 8.3e11, -2e11, -9.2e11, -9.2e11, -9.2e11, 8.3e11, -2e11,
                    -9.2e11, 8.3e11, 8.3e11], dtype=np.float32),
        groups=np.array([[0, 3], [11, 2], [9, 3], [1, 2], [7, 3], [10, 3], [10, 2], [7, 3],
                         [5, 2], [9, 3], [1, 3], [5, 3]]),
        constraint="equalized_odds", epsilon=1e-3, bounds=(0.0, 1.0),
        y_true=np.array([0.0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 1]),
        sample_weight=np.array([2.0, 5, 2, 0.3, 300, 2e-6, 3e-3, 5, 2e-4, 4e-4, 300, 2e4]),
        intersectional=True),
}

#: refusals of the fuzzing (benchmarks/guarantee_fuzz.py, seed 0) that no smaller instance
#: reproduces, as the parameters they were drawn from (:func:`_oracle.make_instance`): outputs
#: far out on both sides in groups of one sample, whose certifying multipliers were not found
FAR_OUT_DRAWS = {
    "59 outputs 1e12 out, three attributes intersected": dict(
        n=59, n_attributes=3, max_groups=27, constraint="equalized_odds", epsilon=0.05,
        bounds=(0.0, 1.0), z_kind="far", magnitude=1e12, float32=True, weights="none",
        targets="inside", intersectional=True, seed=2920723721),
    "1401 outputs 1e20 out at epsilon 0, two attributes intersected": dict(
        n=1401, n_attributes=2, max_groups=13, constraint="equalized_odds", epsilon=0.0,
        bounds=(0.0, 1.0), z_kind="far", magnitude=1e20, float32=True, weights="none",
        targets="wide", intersectional=True, seed=3351823453),
}


@pytest.mark.parametrize("name", FAR_OUT_REFUSALS)
def test_far_out_raw_outputs_are_projected(name):
    inst = FAR_OUT_REFUSALS[name]
    assert far_out(inst)  # beyond the range where the layer may refuse
    outcome = check(inst, with_reference=True)
    assert outcome.ok and not outcome.loud, outcome.problems


@pytest.mark.parametrize("name", FAR_OUT_DRAWS)
def test_far_out_draws_of_the_fuzzing_are_projected(name):
    inst = make_instance(**FAR_OUT_DRAWS[name])
    assert far_out(inst)
    outcome = check(inst)
    assert outcome.ok and not outcome.loud, outcome.problems


def test_the_certificate_searches_for_multipliers_when_the_solvers_do_not_certify():
    """Outputs that are the projection, given multipliers that do not certify them: the
    search finds ones that do, and outputs that are not the projection get none."""
    inst = FAR_OUT_REFUSALS["bounded, equalized odds of outputs 1e12 out, weights spanning "
                            "2.5e11"]
    cs = constraint_set(inst)
    bounds = Bounds.of(inst.bounds)
    z = inst.z.astype(np.float64)
    y = FairnessLayer(inst.constraint, epsilon=inst.epsilon, bounds=inst.bounds)(
        torch.as_tensor(inst.z), torch.as_tensor(inst.groups),
        y_true=torch.as_tensor(inst.y_true),
        sample_weight=torch.as_tensor(inst.sample_weight)).detach().numpy()
    found = check_outputs(y, cs)
    lam = certified(z, y, np.zeros(cs.n_rows), found, cs, bounds, "test", failures := [])
    assert lam is not None and lam.min() >= 0 and not failures
    assert _active_set.certifying_multipliers(
        z, cs, *bounds.box, y, np.zeros(cs.n_rows), np.ones(cs.n_rows, bool),
        POLISH_TOL * output_scale(found, cs) + 64 * np.spacing(np.abs(z))) is not None
    moved = y.copy()
    moved[np.argmin(np.abs(y - 0.5))] += 1e-3  # a free output moved: no multipliers explain it
    assert certified(z, moved, lam, check_outputs(moved, cs), cs, bounds, "test",
                     failures) is None
    assert failures and "not certified" in failures[0]


def test_outputs_no_active_row_explains_get_no_multipliers_not_an_error():
    """Every row slack at outputs that differ from the clipped raw outputs (a sample alone in
    its group moved): no multipliers can explain them, and the search says so (None, the
    certificate refuses) instead of handing the linear program no unknowns."""
    rng = np.random.default_rng(0)
    inst = Instance(z=rng.uniform(0.3, 0.7, 8), groups=np.array([[0]] + [[1]] * 7),
                    constraint="demographic_parity", epsilon=0.5)
    cs = constraint_set(inst)
    bounds = Bounds.of(inst.bounds)
    moved = inst.z.copy()
    moved[0] += 1e-3
    found = check_outputs(moved, cs)
    assert not active_rows(moved, cs, tolerance(found, cs)).any()
    assert _active_set.certifying_multipliers(
        inst.z, cs, *bounds.box, moved, np.zeros(cs.n_rows), np.zeros(cs.n_rows, bool),
        np.full(8, 1e-9)) is None
    assert certified(inst.z, moved, np.zeros(cs.n_rows), found, cs, bounds, "test",
                     failures := []) is None
    assert "not certified" in failures[0]


@pytest.mark.parametrize("start", [np.inf, np.nan])
def test_non_finite_starting_multipliers_get_none_not_an_error(start):
    """A solver's multipliers that overflowed (or are NaN) on the active rows: the search
    starts from them, finds nothing and says so, and the certificate refuses."""
    rng = np.random.default_rng(0)
    z = np.r_[rng.uniform(0.0, 0.2, 6), rng.uniform(0.8, 1.0, 6)]
    inst = Instance(z=z, groups=np.repeat([[0], [1]], 6, axis=0),
                    constraint="demographic_parity", epsilon=0.1)
    cs = constraint_set(inst)
    bounds = Bounds.of(inst.bounds)
    y = FairnessLayer(inst.constraint, epsilon=inst.epsilon, bounds=inst.bounds)(
        torch.as_tensor(z), torch.as_tensor(inst.groups)).detach().numpy()
    found = check_outputs(y, cs)
    active = active_rows(y, cs, tolerance(found, cs))
    assert active.any()
    lam = np.where(active, start, 0.0)
    assert _active_set.certifying_multipliers(z, cs, *bounds.box, y, lam, active,
                                              np.full(len(z), 1e-6)) is None
    assert certified(z, y, lam, found, cs, bounds, "test", failures := []) is None
    assert "not certified" in failures[0]


@pytest.mark.parametrize("limit, value", [("MAX_UNKNOWNS", 0), ("GI_STEPS", 0),
                                          ("MAX_PATTERNS", 0), ("DENSE_SIZE", 0)])
def test_beyond_its_limits_the_method_gives_up_and_the_layer_refuses(monkeypatch, limit,
                                                                      value):
    """Past a cap (QP size, QP steps, patterns, dense rows) the method returns None, never a partial
    answer; the layer then refuses an instance that only the method could project."""
    inst = FUZZ_FAILURES["bounded float32, 4 samples, three attributes"]
    cs = constraint_set(inst)
    z = inst.z.astype(np.float64)
    monkeypatch.setattr(_active_set, limit, value)
    monkeypatch.setattr(_precise, "MAX_SAMPLES", 0)  # (the last resort would project it)
    box = Bounds.of(inst.bounds).box
    assert _active_set.solve(z, cs, *box, np.zeros(cs.n_rows), 1.0) is None
    with pytest.raises(RuntimeError, match="The fairness projection failed"):
        FairnessLayer(inst.constraint, epsilon=inst.epsilon, bounds=inst.bounds)(
            torch.as_tensor(inst.z), torch.as_tensor(inst.groups),
            y_true=torch.as_tensor(inst.y_true), sample_weight=torch.as_tensor(
                inst.sample_weight))


def test_no_free_output_or_no_tight_row_gives_zero_multipliers():
    """The multipliers that explain the free outputs: none to explain, or no row to explain
    them with, is zero (not a call of nnls on an empty matrix)."""
    inst = FUZZ_FAILURES["bounded float32, 4 samples, three attributes"]
    cs = constraint_set(inst)
    problem = cs.host_problem
    rows = dense_coef(problem.rows, cs.n_atoms)
    z = inst.z.astype(np.float64)
    weight = problem.weight if problem.weight.size else np.ones_like(z)
    y = np.clip(z, *inst.bounds)
    for free, tight in ((np.zeros(len(z), bool), np.ones(cs.n_rows, bool)),
                        (np.ones(len(z), bool), np.zeros(cs.n_rows, bool))):
        lam = _active_set._multipliers(z, weight, problem, rows, y, free, tight)
        np.testing.assert_array_equal(lam, np.zeros(cs.n_rows))


def test_negative_multipliers_certify_nothing():
    """Outputs fair but not the projection (z is fair as it is; y moves the groups apart to the
    gap epsilon) are exactly what a negative multiplier on the now active row explains; a KKT
    point has none, so the certificate refuses them."""
    from skfair._guarantee import backward_error

    inst = Instance(z=np.full(8, 0.5), groups=np.repeat([[0], [1]], 4, axis=0),
                    constraint="demographic_parity", epsilon=0.1)
    cs = constraint_set(inst)
    bounds = Bounds.of(inst.bounds)
    y = np.r_[np.full(4, 0.55), np.full(4, 0.45)]
    G, h = cs.dense().numpy(), cs.h.numpy()
    row = int(np.argmax(G @ y - h))
    assert abs((G @ y - h)[row]) < 1e-12  # the row that y makes active
    lam = np.zeros(cs.n_rows)
    lam[row] = -0.2
    np.testing.assert_allclose(inst.z - G.T @ lam, y, atol=1e-15)  # what lam would explain
    found = check_outputs(y, cs)
    tol = POLISH_TOL * output_scale(found, cs)
    assert backward_error(inst.z, y, lam, cs, bounds, tolerance(found, cs), tol) == np.inf
    assert certified(inst.z, y, lam, found, cs, bounds, "test", failures := []) is None
    assert "not certified" in failures[0]
