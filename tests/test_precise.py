"""The extended-precision last resort of the projection (``skfair._precise``).

Checked against references that share none of its code: the method alone on random small
instances, ordinary and far out, against the oracle of ``tests/_oracle.py`` (numpy group means,
Clarabel's projection); its certificate against wrong outputs and multipliers; and the
fuzzing's refusals of small batches, which no float64 method certifies and the layer now
projects through it.
"""

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
