"""The extended-precision last resort of the projection (``skfair._precise``).

Checked against references that share none of its code: the method alone on random small
instances, ordinary and far out, against the oracle of ``tests/_oracle.py`` (numpy group means,
Clarabel's projection); its certificate against wrong outputs and multipliers; and the
fuzzing's refusals of small batches, which no float64 method certifies and the layer now
projects through it.
"""

import decimal
from decimal import Decimal

import numpy as np
import pytest
import torch
from _oracle import (
    BOUNDS,
    BUILTINS,
    EPSILONS,
    MAGNITUDES,
    WEIGHT_KINDS,
    check,
    constraint_set,
    far_out,
    gap,
    infeasibility,
    make_instance,
    pair_rows,
    reference_problems,
    run_layer,
    scale,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from skfair import _precise
from skfair import layer as layer_module
from skfair._bounds import Bounds
from skfair._constraint_set import ConstraintSet
from skfair._guarantee import POLISH_TOL, output_scale, tolerance
from skfair._guarantee import check as check_outputs


def _certificate(z, y, lam, cs, bounds):
    """The backward error of ``y`` with the layer's tolerances (at most 0: certified)."""
    found = check_outputs(y, cs)
    return _precise.backward_error(z, y, lam, cs, bounds, tolerance(found, cs),
                                   POLISH_TOL * output_scale(found, cs))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), n_attributes=st.integers(1, 4), max_groups=st.integers(2, 8),
       constraint=st.sampled_from(BUILTINS), epsilon=st.sampled_from(EPSILONS),
       bounds=st.sampled_from(BOUNDS),
       z_kind=st.sampled_from(["uniform", "ties", "constant", "far", "outliers"]),
       magnitude=st.sampled_from(MAGNITUDES), weights=st.sampled_from(WEIGHT_KINDS),
       intersectional=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_precise_solve_is_the_certified_projection(n, n_attributes, max_groups, constraint,
                                                   epsilon, bounds, z_kind, magnitude,
                                                   weights, intersectional, seed):
    inst = make_instance(n, n_attributes, max_groups, constraint, epsilon, bounds, z_kind,
                         magnitude, False, weights, "inside", intersectional, seed)
    assume(pair_rows(inst) <= 400 and infeasibility(inst) == 0.0)
    cs = constraint_set(inst)
    assume(_precise.fits(cs))
    z = inst.z.astype(np.float64)
    found = _precise.solve(z, cs, *Bounds.of(bounds).box)
    assert found is not None, "the extended-precision method did not settle"
    y, lam, _ = found
    assert min(lam, default=0) >= 0
    if bounds is not None:
        assert bounds[0] <= y.min() and y.max() <= bounds[1]
    assert gap(inst, y) <= epsilon + 1e-9 * scale(inst, y)
    assert _certificate(z, y, lam, cs, Bounds.of(bounds)) <= 0
    assert reference_problems(inst, y) == []


def test_precise_solve_reports_contradicting_rows():
    # y <= -1 and y >= 1 on one sample
    cs = ConstraintSet(torch.tensor([[1.0], [-1.0]], dtype=torch.float64),
                       torch.zeros(1, dtype=torch.long),
                       torch.tensor([-1.0, -1.0], dtype=torch.float64), ["below", "above"])
    assert _precise.solve(np.zeros(1), cs, -np.inf, np.inf) is None


def test_certificate_refuses_other_outputs_and_negative_multipliers():
    inst = make_instance(12, 2, 3, "demographic_parity", 0.05, (0.0, 1.0), "uniform", 1.0,
                         False, "mild", "inside", False, 7)
    cs, bounds = constraint_set(inst), Bounds.of(inst.bounds)
    z = inst.z.astype(np.float64)
    y, lam, _ = _precise.solve(z, cs, *bounds.box)
    assert lam.max() > 0  # the rows move the outputs: the certificate has something to check
    assert _certificate(z, y, lam, cs, bounds) <= 0
    moved = y.copy()
    moved[np.argmax((0 < y) & (y < 1))] -= 1e-4  # a free output off its place
    assert _certificate(z, moved, lam, cs, bounds) > 0
    assert _certificate(z, y, -lam, cs, bounds) > 0


#: refusals of the fuzzing (benchmarks/guarantee_fuzz.py, seeds 0 and 5) of small batches, as the
#: parameters they were drawn from (:func:`_oracle.make_instance`): outputs far out in groups
#: of one sample or tied with ordinary ones, whose multipliers cancel beyond float64's
#: precision, and rows at epsilon 0 whose float64 right-hand sides do not cancel exactly
SMALL_REFUSALS = {
    "7 outputs 1e12 out, unbounded mean residual": dict(
        n=7, n_attributes=4, max_groups=29, constraint="mean_residual", epsilon=1.0,
        bounds=None, z_kind="outliers", magnitude=1e12, float32=False, weights="mild",
        targets="inside", intersectional=False, seed=696644191),
    "34 tied outputs 1e3 out, weights spanning 1e12, epsilon 0": dict(
        n=34, n_attributes=4, max_groups=29, constraint="mean_residual", epsilon=0.0,
        bounds=None, z_kind="ties", magnitude=1e3, float32=False, weights="ratio1e12",
        targets="inside", intersectional=False, seed=3277032066),
    "38 outputs 1e20 out, demographic parity of three attributes": dict(
        n=38, n_attributes=3, max_groups=25, constraint="demographic_parity", epsilon=0.05,
        bounds=(0.0, 1.0), z_kind="outliers", magnitude=1e20, float32=False, weights="mild",
        targets="huge", intersectional=False, seed=758800426),
    "46 tied float32 outputs 1e8 out, intersectional parity at epsilon 1e-9": dict(
        n=46, n_attributes=3, max_groups=11, constraint="demographic_parity", epsilon=1e-9,
        bounds=(0.0, 1.0), z_kind="ties", magnitude=1e8, float32=True, weights="zeros",
        targets="huge", intersectional=True, seed=242039212),
    "59 outputs 1e20 out, equalized odds at epsilon 0, weights spanning 1e12": dict(
        n=59, n_attributes=4, max_groups=20, constraint="equalized_odds", epsilon=0.0,
        bounds=(0.0, 1.0), z_kind="outliers", magnitude=1e20, float32=False,
        weights="ratio1e12", targets="wide", intersectional=False, seed=12338796),
    "73 float32 outputs, 1e12 outliers, equalized odds of two attributes": dict(
        n=73, n_attributes=2, max_groups=26, constraint="equalized_odds", epsilon=0.001,
        bounds=(-5.0, 3.0), z_kind="outliers", magnitude=1e12, float32=True, weights="zeros",
        targets="inside", intersectional=False, seed=365630942),
    "74 float32 outputs, 1e12 outliers, demographic parity of three attributes": dict(
        n=74, n_attributes=3, max_groups=28, constraint="demographic_parity", epsilon=0.05,
        bounds=(0.0, 1.0), z_kind="outliers", magnitude=1e12, float32=True, weights="zeros",
        targets="wide", intersectional=False, seed=245319988),
}


@pytest.mark.parametrize("name", SMALL_REFUSALS)
def test_small_refusals_of_the_fuzzing_are_projected(name, monkeypatch):
    inst = make_instance(**SMALL_REFUSALS[name])
    assert far_out(inst)
    outcome = check(inst, with_reference=True)
    assert outcome.ok and not outcome.loud, outcome.problems
    # without the last resorts (this one, and the reduction of far outputs), the layer
    # refuses them
    monkeypatch.setattr(layer_module, "_precise_result", lambda *args: None)
    monkeypatch.setattr(layer_module, "_reduced_result", lambda *args: None)
    with pytest.raises(RuntimeError, match="The fairness projection failed"):
        run_layer(inst)


def test_refusal_of_a_large_batch_names_the_size_limit():
    # a refusal of the fuzzing, seed 0: 1433 samples, beyond the extended-precision solve
    inst = make_instance(n=1433, n_attributes=4, max_groups=16, constraint="equal_opportunity",
                         epsilon=0.0, bounds=(0.0, 1.0), z_kind="outliers", magnitude=1e20,
                         float32=True, weights="ratio1e12", targets="wide", intersectional=True,
                         seed=648229065)
    with pytest.raises(RuntimeError, match="too large for the extended-precision solve"):
        run_layer(inst)


@pytest.mark.parametrize("seed", [5, 37, 54])
def test_raw_outputs_near_the_float_range_keep_their_digits(seed):
    # outputs 1e300 out: 100 digits cannot cancel multipliers of that size (these outputs came
    # out unfair); the arithmetic takes one digit more per power of ten
    inst = make_instance(n=12, n_attributes=2, max_groups=4, constraint="equal_opportunity",
                         epsilon=0.01, bounds=(0.0, 1.0), z_kind="outliers", magnitude=1e300,
                         float32=False, weights="mild", targets="inside", intersectional=False,
                         seed=seed)
    cs = constraint_set(inst)
    z = inst.z.astype(np.float64)
    found = _precise.solve(z, cs, 0.0, 1.0)
    assert found is not None
    y, lam, _ = found
    assert gap(inst, y) <= inst.epsilon + 1e-9 * scale(inst, y)
    checked = check_outputs(y, cs)
    assert _precise.backward_error(z, y, lam, cs, Bounds.of((0.0, 1.0)),
                                   tolerance(checked, cs),
                                   POLISH_TOL * output_scale(checked, cs)) <= 0


def _exact_backward_error(z, y, lam, cs, bounds, active_tol, tol):
    """The certificate as its definition reads, in exact rational arithmetic with ``G`` as a
    dense matrix: the reference of :func:`skfair._precise.backward_error` (which works through
    the atoms in decimal)."""
    from fractions import Fraction

    from skfair._constraint_set import dense_coef

    problem = cs.host_problem
    weight = problem.weight if problem.weight.size else np.ones(len(z))
    coef = dense_coef(problem.rows, cs.n_atoms)[:, problem.atom] * 1.0
    g = [[Fraction(float(c)) * Fraction(float(w)) for c, w in zip(row, weight)] for row in coef]
    h = [Fraction(float(v)) for v in problem.h]
    lam = [Fraction(v) for v in lam]  # (exact, from a float or a decimal)
    if min(lam, default=0) < 0:
        return np.inf
    low, high = bounds.box

    def shifted(multipliers):
        return [Fraction(float(z[i])) - sum(g[r][i] * multipliers[r] for r in range(len(g)))
                for i in range(len(z))]

    def clipped(values):
        return [min(max(v, Fraction(low)) if low > -np.inf else v, Fraction(high))
                if high < np.inf else (max(v, Fraction(low)) if low > -np.inf else v)
                for v in values]

    def rows_at(values):
        return [sum(g[r][i] * values[i] for i in range(len(z))) - h[r] for r in range(len(g))]

    exact = clipped(shifted(lam))
    infeasible = float(max(rows_at(exact), default=Fraction(0)) - Fraction(active_tol))
    y_exact = [Fraction(float(v)) for v in y]
    active = [v >= -Fraction(active_tol) for v in rows_at(y_exact)]
    free = shifted([m if a else Fraction(0) for m, a in zip(lam, active)])
    excess = -np.inf
    for i in range(len(z)):
        if y[i] >= high:
            error = max(Fraction(high) - free[i], Fraction(0))
        elif y[i] <= low:
            error = max(free[i] - Fraction(low), Fraction(0))
        else:
            error = abs(y_exact[i] - free[i])
        allowed = Fraction(tol) + 64 * Fraction(float(np.spacing(abs(z[i]))))
        excess = max(excess, float(error - allowed))
    return max(excess, infeasible)


@pytest.mark.parametrize("seed", range(6))
def test_certificate_through_the_atoms_is_the_dense_one(seed):
    # small instances, ordinary and far out, with the decimal solve's multipliers and with
    # multipliers and outputs moved off it: the same backward error as the exact dense one
    rng = np.random.default_rng(seed)
    inst = make_instance(n=12, n_attributes=2, max_groups=3,
                         constraint=["demographic_parity", "equalized_odds"][seed % 2],
                         epsilon=[0.0, 0.05, 1e-9][seed % 3], bounds=(0.0, 1.0),
                         z_kind=["uniform", "outliers"][seed // 3], magnitude=1e12,
                         float32=False, weights="mild", targets="inside", intersectional=False,
                         seed=seed)
    cs = constraint_set(inst)
    z = inst.z.astype(np.float64)
    bounds = Bounds.of(inst.bounds)
    found = _precise.solve(z, cs, *bounds.box)
    assert found is not None
    y, lam, _ = found
    tols = (1e-9, 1e-6)
    moved_lam = lam * np.array([Decimal(1 + 1e-3 * v) for v in rng.normal(size=len(lam))],
                                   dtype=object)
    moved_y = np.clip(y + rng.normal(size=len(y)) * 1e-3, 0.0, 1.0)
    for outputs, multipliers in ((y, lam), (y, moved_lam), (moved_y, lam)):
        got = _precise.backward_error(z, outputs, multipliers, cs, bounds, *tols)
        want = _exact_backward_error(z, outputs, multipliers, cs, bounds, *tols)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_refined_multipliers_restore_what_float64_rounding_took():
    # a small batch with outputs 1e20 out: the decimal solve's multipliers certify its
    # outputs, rounded to float64 they do not (they cancel below float64's rounding); from
    # those the refinement finds multipliers that do, on the same rows
    inst = make_instance(**SMALL_REFUSALS["38 outputs 1e20 out, demographic parity of three "
                                          "attributes"])
    cs = constraint_set(inst)
    z = inst.z.astype(np.float64)
    bounds = Bounds.of(inst.bounds)
    y, lam, _ = _precise.solve(z, cs, *bounds.box)
    found = check_outputs(y, cs)
    tols = tolerance(found, cs), POLISH_TOL * output_scale(found, cs)
    rounded = lam.astype(np.float64)
    assert _precise.backward_error(z, y, lam, cs, bounds, *tols) <= 0
    assert _precise.backward_error(z, y, rounded, cs, bounds, *tols) > 0
    refined = _precise.refined_multipliers(z, y, rounded, cs, *bounds.box, *tols)
    assert refined is not None and min(refined) >= 0
    assert set(np.flatnonzero(refined != 0)) <= set(np.flatnonzero(rounded > 0))
    assert _precise.backward_error(z, y, refined, cs, bounds, *tols) <= 0


def test_refined_multipliers_need_a_support_of_bounded_size():
    inst = make_instance(**SMALL_REFUSALS["38 outputs 1e20 out, demographic parity of three "
                                          "attributes"])
    cs = constraint_set(inst)
    z = inst.z.astype(np.float64)
    y = np.clip(z, 0.0, 1.0)
    assert _precise.refined_multipliers(z, y, np.zeros(cs.n_rows), cs, 0.0, 1.0, 1e-9,
                                        1e-6) is None


@pytest.mark.parametrize("dependent", [False, True])
def test_least_squares_in_decimal(dependent):
    rng = np.random.default_rng(3)
    matrix = rng.integers(-9, 10, size=(9, 4)) / 4.0  # (exact: dependence is exact too)
    if dependent:
        matrix[:, 3] = matrix[:, 0] - 2 * matrix[:, 1]  # (its unknown stays 0)
    target = rng.normal(size=9)
    with decimal.localcontext(prec=_precise.PRECISION):  # (the arithmetic it runs in)
        x = _precise._least_squares(matrix, np.array([Decimal(v) for v in target],
                                                     dtype=object))
    best = np.linalg.lstsq(matrix, target, rcond=None)[0]
    fitted = matrix @ np.array([float(v) for v in x])
    np.testing.assert_allclose(fitted, matrix @ best, rtol=0, atol=1e-12)
    assert (x[3] == 0) == dependent
