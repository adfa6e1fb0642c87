"""Row-by-row inference (inference="individual"): offsets and thresholds from one calibration
projection, checked against the projection itself, numpy group means, brute-force labels and a
simulated population."""

import math
import pickle
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import biased_frame
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from skfair import FairNeuralClassifier, FairNeuralRegressor
from skfair._calibration import calibrate, gap_bound, offset_outputs
from skfair.constraints import get_constraint
from skfair.decisions import fair_labels
from skfair.layer import project
from test_transactional import fitted_state

FAST = dict(hidden_layer_sizes=(16,), max_epochs=15, batch_size=128, learning_rate=0.01,
            random_state=0)


def numpy_gap(values, codes):
    """The largest difference of group means over the columns of ``codes`` (numpy)."""
    gap = 0.0
    for column in codes.T:
        means = [values[column == g].mean() for g in np.unique(column)]
        gap = max(gap, max(means) - min(means))
    return gap


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), n_attributes=st.integers(1, 2),
       n_groups=st.integers(2, 5), epsilon=st.sampled_from([0.0, 1e-3, 0.05, 0.3]),
       kind=st.sampled_from(["uniform", "extreme", "ties"]))
def test_offsets_reproduce_the_projection_of_the_calibration_batch(seed, n, n_attributes,
                                                                    n_groups, epsilon, kind):
    """Row by row, the offsets give the calibration batch its exact projection (so its gap,
    recomputed with numpy, is within epsilon), whatever is clipped: probabilities near 0 and 1,
    ties, groups of one row."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(n_groups, size=(n, n_attributes), p=rng.dirichlet(np.full(n_groups, .4)))
    if kind == "uniform":
        p = rng.uniform(size=n)
    elif kind == "extreme":
        p = rng.choice([0.0, 1e-12, 0.5, 1 - 1e-12, 1.0], n)
    else:
        p = rng.choice(rng.uniform(size=3), n)
    out, groups = torch.as_tensor(p), torch.as_tensor(codes)
    constraint = get_constraint("demographic_parity")
    calibration = calibrate(out, groups, constraint, epsilon, (0.0, 1.0), "exact")
    cells = np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)
    y = offset_outputs(calibration, out, cells, (0.0, 1.0)).numpy()
    exact, _ = project(out, constraint.build(groups, epsilon=epsilon), (0.0, 1.0))
    np.testing.assert_allclose(y, exact.numpy(), rtol=0, atol=1e-12)
    assert numpy_gap(y, codes) <= epsilon + 1e-9
    assert calibration.gap <= epsilon + 1e-9


@pytest.mark.parametrize("seed", range(20))
def test_thresholds_reproduce_the_fair_labels(seed):
    """Per cell, the threshold between its last selected and first unselected score gives back
    the calibration batch's fair labels (distinct scores), whose selection rates meet epsilon
    exactly (fractions of counts)."""
    rng = np.random.default_rng(seed)
    n, epsilon = int(rng.integers(5, 200)), float(rng.choice([0.0, 0.02, 0.1]))
    codes = rng.choice(3, size=(n, 1), p=[0.6, 0.3, 0.1])
    p = np.clip(rng.uniform(size=n) + 0.2 * codes[:, 0], 0, 1)
    p += rng.uniform(0, 1e-9, n)  # distinct scores
    out, groups = torch.as_tensor(np.clip(p, 0, 1)), torch.as_tensor(codes)
    calibration = calibrate(out, groups, get_constraint("demographic_parity"), epsilon,
                            (0.0, 1.0), "exact",
                            lambda scores, g: fair_labels(scores, g, epsilon))
    cells = np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)
    scores = offset_outputs(calibration, out, cells, (0.0, 1.0)).numpy()
    labels = (scores > calibration.thresholds[cells]).astype(int)
    np.testing.assert_array_equal(labels, fair_labels(scores, codes, epsilon))
    rates = [Fraction(int(labels[codes[:, 0] == g].sum()), int((codes[:, 0] == g).sum()))
             for g in np.unique(codes)]
    assert max(rates) - min(rates) <= Fraction(epsilon)
    assert calibration.label_gap <= epsilon


def test_gap_bound_formula():
    """One attribute, groups of 100 and 400 rows in one cell each: epsilon + sum over the two
    groups of sqrt(ln(2 * 2 / delta) / (2 n_g))."""
    out = torch.as_tensor(np.r_[np.full(100, 0.3), np.full(400, 0.6)])
    groups = torch.as_tensor(np.r_[np.zeros(100), np.ones(400)].astype(np.int64))[:, None]
    calibration = calibrate(out, groups, get_constraint("demographic_parity"), 0.05, (0.0, 1.0),
                            "exact")
    term = [math.sqrt(math.log(4 / 0.1) / (2 * n)) for n in (100, 400)]
    assert gap_bound(calibration, 0.05, 0.1, 1.0) == pytest.approx(0.05 + sum(term))
    assert gap_bound(calibration, 0.05, 0.1, 2.0) == pytest.approx(0.05 + 2 * sum(term))


def test_gap_bound_holds_on_the_population():
    """Offsets and thresholds calibrated on 3,000 draws of a known population: the population's
    own gaps (a million fresh draws) are within the bound at delta = 0.01, and near epsilon."""
    def draw(rng, n):
        codes = rng.choice(2, size=(n, 1), p=[0.3, 0.7])
        p = np.clip(rng.beta(2, 5, n) + 0.25 * codes[:, 0], 0, 1)
        return torch.as_tensor(p), torch.as_tensor(codes)

    rng = np.random.default_rng(0)
    epsilon = 0.05
    out, groups = draw(rng, 3000)
    calibration = calibrate(out, groups, get_constraint("demographic_parity"), epsilon,
                            (0.0, 1.0), "exact",
                            lambda scores, g: fair_labels(scores, g, epsilon))
    bound = gap_bound(calibration, epsilon, 0.01, 1.0)
    new, new_groups = draw(rng, 1_000_000)
    codes = new_groups.numpy()
    scores = offset_outputs(calibration, new, codes[:, 0], (0.0, 1.0)).numpy()
    labels = (scores > calibration.thresholds[codes[:, 0]]).astype(float)
    for values in (scores, labels):
        assert numpy_gap(values, codes) <= bound
        assert numpy_gap(values, codes) <= epsilon + 0.03
    # without offsets the population is far from fair
    assert numpy_gap(new.numpy(), codes) > 0.2


@pytest.fixture(scope="module")
def individual():
    X, y = biased_frame(1200)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], epsilon=0.03,
                               inference="individual", guarantee="labels", **FAST).fit(X, y)
    return clf, X, y


def test_a_row_gets_the_same_prediction_in_any_batch(individual):
    """Alone or with others, a row gets the same probability (up to the float32 rounding of
    the network's matrix products, whose summation order depends on the batch's size) and the
    same label."""
    clf, X, _ = individual
    proba, labels = clf.predict_proba(X), clf.predict(X)
    for rows in ([0], [5, 3], list(range(40, 47))):
        np.testing.assert_allclose(clf.predict_proba(X.iloc[rows]), proba[rows], atol=1e-6)
        np.testing.assert_array_equal(clf.predict(X.iloc[rows]), labels[rows])
    # streams too: partial_predict is predict, and there is no stream
    np.testing.assert_array_equal(clf.partial_predict(X.iloc[:7]), labels[:7])
    np.testing.assert_allclose(clf.partial_predict_proba(X.iloc[7:9]), proba[7:9], atol=1e-6)
    with pytest.raises(ValueError, match="no stream"):
        clf.stream_stats()


def test_fit_calibrates_on_the_training_data(individual):
    """The training set, predicted row by row, meets epsilon: scores (numpy means) and labels
    (exact counts, no ties among continuous scores)."""
    clf, X, _ = individual
    codes = X[["sex", "race"]].apply(lambda c: pd.factorize(c)[0]).to_numpy()
    assert numpy_gap(clf.predict_proba(X)[:, 1], codes) <= 0.03 + 1e-9
    labels = (clf.predict(X) == clf.classes_[1]).astype(int)
    for column in codes.T:
        rates = [Fraction(int(labels[column == g].sum()), int((column == g).sum()))
                 for g in np.unique(column)]
        assert max(rates) - min(rates) <= Fraction(0.03)
    assert clf.calibration_.gap <= 0.03 + 1e-9 and clf.calibration_.label_gap <= 0.03
    assert 0.03 < clf.individual_gap_bound(0.05) < 1


def test_calibrate_on_held_out_rows(individual):
    clf, _, _ = individual
    held_out, _ = biased_frame(600, seed=7)
    clf = pickle.loads(pickle.dumps(clf))
    before = clf.calibration_.offsets.copy()
    assert clf.calibrate(held_out) is clf
    assert not np.array_equal(clf.calibration_.offsets, before)
    codes = held_out[["sex", "race"]].apply(lambda c: pd.factorize(c)[0]).to_numpy()
    assert numpy_gap(clf.predict_proba(held_out)[:, 1], codes) <= 0.03 + 1e-9


def test_a_combination_missing_from_the_calibration_is_named(individual):
    clf, X, _ = individual
    clf = pickle.loads(pickle.dumps(clf))
    clf.calibrate(X[(X["sex"] == "M") | (X["race"] == "a")])  # no ("F", "b")
    with pytest.raises(ValueError, match="sex='F', race='b'.*calibrate"):
        clf.predict(X[(X["sex"] == "F") & (X["race"] == "b")])
    clf.predict(X[X["sex"] == "M"])  # the others are known


def test_failed_calibration_changes_nothing(individual):
    clf, X, _ = individual
    clf = pickle.loads(pickle.dumps(clf))
    before = fitted_state(clf)
    bad = X.copy()
    bad.loc[bad.index[0], "x1"] = np.nan
    with pytest.raises(ValueError):
        clf.calibrate(bad)
    assert fitted_state(clf) == before


def test_individual_inference_needs_a_calibration_and_a_label_free_constraint(individual):
    clf, X, y = individual
    batch = FairNeuralClassifier(protected_attributes=["sex", "race"], **FAST).fit(X, y)
    batch.set_params(inference="individual")
    with pytest.raises(NotFittedError, match="calibrate"):
        batch.predict(X)
    batch.calibrate(X)
    batch.predict(X)
    batch.set_params(guarantee="labels")  # the calibration learned no thresholds
    with pytest.raises(NotFittedError, match="calibrate"):
        batch.predict(X)
    with pytest.raises(ValueError, match="inference='individual'.*true labels"):
        FairNeuralClassifier(protected_attributes=["sex", "race"], fairness="equalized_odds",
                             inference="individual", **FAST).fit(X, y)


def test_regressor_predicts_row_by_row():
    X, _ = biased_frame(500)
    y = X["x1"] + 2.0 * (X["sex"] == "M")
    X = X.drop(columns="race")
    reg = FairNeuralRegressor(protected_attributes=["sex"], epsilon=0.1, inference="individual",
                              **FAST).fit(X, y)
    pred = reg.predict(X)
    np.testing.assert_allclose(reg.predict(X.iloc[[3]]), pred[[3]], atol=1e-5)
    sex = X["sex"].to_numpy()
    assert abs(pred[sex == "M"].mean() - pred[sex == "F"].mean()) <= 0.1 + 1e-9
    assert math.isfinite(reg.individual_gap_bound())
