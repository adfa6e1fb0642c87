"""The online primal-dual algorithm: its finite-T guarantee, single-row streams and its state."""

import math
import pickle

import numpy as np
import pytest
import torch

from skfair._streaming import DEFAULT_ETA0, PrimalDualStream
from skfair.constraints import constraint_gap, get_constraint

EPS = 0.05


def biased_batch(rng, n, p):
    """Group 1 (share p) scores 0.3 higher than group 0."""
    groups = torch.as_tensor(rng.uniform(size=n) < p).long()[:, None]
    z = torch.as_tensor(np.clip(0.35 + 0.3 * groups[:, 0].numpy() + 0.1 * rng.normal(size=n),
                                0, 1))
    return z, groups


def new_stream(eta0=DEFAULT_ETA0, b_tau=100, dual_init=None):
    return PrimalDualStream(get_constraint("demographic_parity"), EPS, (0.0, 1.0), eta0, b_tau,
                            dual_init=dual_init)


def test_weighted_average_gap_meets_the_finite_T_bound_and_decreases():
    rng = np.random.default_rng(0)
    stream = new_stream()
    raw_gaps, checkpoints = [], []
    for t in range(1, 2401):
        # Batch sizes 1..32 and a group ratio that drifts across the stream.
        z, groups = biased_batch(rng, int(rng.integers(1, 33)), 0.2 + 0.6 * (t % 97) / 97)
        stream.step(z, groups)
        raw_gaps.append(len(z) * constraint_gap("demographic_parity", z, groups))
        if t in (300, 600, 1200, 2400):
            checkpoints.append(stream.stats())
    for stats in checkpoints:
        assert stats["weighted_avg_fairness_gap"] <= EPS + stats["bound"]
        assert stats["bound"] == pytest.approx(
            stats["lambda_max"] * math.sqrt(stats["n_steps"]) / (DEFAULT_ETA0 * stats["n_samples"]))
    excess = [s["weighted_avg_fairness_gap"] + s["bound"] for s in checkpoints]
    assert excess == sorted(excess, reverse=True)
    assert checkpoints[-1]["bound"] < 0.02
    # Without the algorithm the same stream is far from fair.
    assert sum(raw_gaps) / checkpoints[-1]["n_samples"] > 4 * EPS


def test_single_row_stream_pooled_gap_converges():
    """Every batch is one row, so every row is compared with the other group's running mean.

    Per row (u, v) the dual argument gives sum_i (y_i - R_v(t_i) - eps) <= lam_max sqrt(T)/eta0
    over u's rows, hence pooled_u - pooled_v <= eps + lam_max sqrt(T) / (eta0 N_u) + drift, with
    drift the distance between the references used and v's final pooled mean.
    """
    rng = np.random.default_rng(1)
    stream = new_stream()
    counts, raw_sums = np.zeros(2), np.zeros(2)
    for _ in range(4000):
        z, groups = biased_batch(rng, 1, 0.4)
        counts[int(groups[0, 0])] += 1
        raw_sums[int(groups[0, 0])] += float(z[0])
        stream.step(z, groups)
    # Without the reference rule a single row has no counterpart, hence no constraint row: the
    # outputs would be the raw scores, whose pooled gap is about 0.3.
    assert abs(raw_sums[1] / counts[1] - raw_sums[0] / counts[0]) > 0.25
    stats = stream.stats()
    bound = stats["lambda_max"] * math.sqrt(stats["n_steps"]) / (DEFAULT_ETA0 * counts.min())
    assert stats["pooled_fairness_gap"] <= EPS + bound + stats["reference_drift"]
    # That worst case shrinks like 1/sqrt(T) and is still loose here (about 0.1); the algorithm
    # does much better: the raw gap of 0.3 ends within 0.01 of epsilon.
    assert stats["pooled_fairness_gap"] <= EPS + 0.01


def test_warm_start_lowers_early_violation():
    def early_violation(dual_init):
        rng = np.random.default_rng(2)
        stream = new_stream(dual_init=dual_init)
        for _ in range(100):
            stream.step(*biased_batch(rng, int(rng.integers(1, 33)), 0.5))
        # Each batch's own gap beyond epsilon, weighted by its size.
        return stream.stats()["mean_batch_violation"]

    # Multipliers a long stream converged to stand in for those recorded in fit.
    rng = np.random.default_rng(3)
    long = new_stream()
    for _ in range(3000):
        long.step(*biased_batch(rng, int(rng.integers(1, 33)), 0.5))
    assert early_violation(long.duals) < early_violation(None) - 0.01


def test_large_batches_are_projected_exactly():
    rng = np.random.default_rng(4)
    stream = new_stream(b_tau=50)
    for n in (3, 60, 10, 200, 1):
        z, groups = biased_batch(rng, n, 0.5)
        y = stream.step(z, groups)
        if n >= 50:
            assert constraint_gap("demographic_parity", y, groups) <= EPS + 1e-9
    stats = stream.stats()
    assert stats["n_batches"] == 5 and stats["n_steps"] == 3 and stats["n_samples"] == 274


def test_state_pickles_mid_stream_and_empty_batches_are_no_ops():
    rng = np.random.default_rng(5)
    batches = [biased_batch(rng, int(rng.integers(1, 9)), 0.5) for _ in range(40)]
    stream = new_stream()
    for z, g in batches[:20]:
        stream.step(z, g)
    before = stream.stats()
    empty = stream.step(torch.zeros(0, dtype=torch.float64), torch.zeros((0, 1), dtype=torch.long))
    assert empty.shape == (0,) and stream.stats() == before
    resumed = pickle.loads(pickle.dumps(stream))
    for z, g in batches[20:]:
        torch.testing.assert_close(stream.step(z, g), resumed.step(z, g))
    assert stream.stats() == resumed.stats()


def test_label_dependent_constraints_cannot_stream():
    with pytest.raises(ValueError, match="needs true labels"):
        PrimalDualStream(get_constraint("equalized_odds"), EPS, (0.0, 1.0), 0.1, 100)


# ------------------------------------------------------------------------------------------------
# The streaming regime of the estimators


@pytest.fixture(scope="module")
def fitted():
    from conftest import biased_frame

    from skfair import FairNeuralClassifier

    X, y = biased_frame(2000, seed=0)
    # No distortion penalty: the network itself stays biased, so the stream has work to do.
    model = FairNeuralClassifier(protected_attributes=["sex", "race"], epsilon=EPS,
                                 distortion_penalty=0.0, hidden_layer_sizes=(16,), max_epochs=15,
                                 batch_size=128, learning_rate=0.01, random_state=0).fit(X, y)
    stream_X, _ = biased_frame(4000, seed=1)
    return model, stream_X


def stream_batches(X, n_batches, seed, max_size=32):
    """Batches of random size whose share of men drifts along the stream."""
    rng = np.random.default_rng(seed)
    men, women = np.flatnonzero(X["sex"] == "M"), np.flatnonzero(X["sex"] == "F")
    for t in range(n_batches):
        size = int(rng.integers(1, max_size + 1))
        share = 0.2 + 0.6 * (t % 50) / 50
        n_men = rng.binomial(size, share)
        rows = np.concatenate([rng.choice(men, n_men), rng.choice(women, size - n_men)])
        yield X.iloc[rows]


def test_estimator_stream_meets_its_bound_and_beats_raw_outputs(fitted):
    import copy

    model = copy.deepcopy(fitted[0])
    X = fitted[1]
    model.reset_stream()
    excess, raw_sum, n = [], 0.0, 0
    for t, batch in enumerate(stream_batches(X, 2000, seed=2), 1):
        model.partial_predict_proba(batch)
        raw = model._predict_unconstrained(batch)
        men = (batch["sex"] == "M").to_numpy()
        if men.any() and (~men).any():
            raw_sum += len(batch) * (raw[men].mean() - raw[~men].mean())
        n += len(batch)
        if t in (250, 500, 1000, 2000):
            stats = model.stream_stats()
            assert stats["weighted_avg_fairness_gap"] <= EPS + stats["bound"]
            excess.append(stats["weighted_avg_fairness_gap"] + stats["bound"])
    assert excess == sorted(excess, reverse=True)
    # The network alone: its men-minus-women gap averaged the same way is far above epsilon.
    assert raw_sum / n > 2 * EPS
    assert model.stream_stats()["n_batches"] == 2000


def test_estimator_warm_start_helps_early_batches(fitted):
    import copy

    assert fitted[0].dual_init_  # recorded in fit
    violations = {}
    for warm in (False, True):
        model = copy.deepcopy(fitted[0]).set_params(stream_warm_start=warm)
        model.reset_stream()
        for batch in stream_batches(fitted[1], 100, seed=3, max_size=8):
            model.partial_predict_proba(batch)
        violations[warm] = model.stream_stats()["mean_batch_violation"]
    assert violations[True] < violations[False]


def test_estimator_stream_state(fitted, tmp_path):
    import copy

    model, X = copy.deepcopy(fitted[0]), fitted[1]
    batches = list(stream_batches(X, 60, seed=4))
    for batch in batches[:30]:
        model.partial_predict_proba(batch)
    # predict / predict_proba between stream calls change nothing in the stream.
    before = model.stream_stats()
    model.predict_proba(X.iloc[:50])
    model.predict(X.iloc[:7])
    assert model.stream_stats() == before
    resumed = pickle.loads(pickle.dumps(model))
    for batch in batches[30:]:
        np.testing.assert_array_equal(model.partial_predict_proba(batch),
                                      resumed.partial_predict_proba(batch))
    assert model.stream_stats() == resumed.stream_stats()
    # Invalid input raises before the state changes; an empty batch changes nothing.
    before = model.stream_stats()
    with pytest.raises(ValueError, match="NaN"):
        model.partial_predict_proba(X.iloc[:5].assign(x1=[0.1, np.nan, 0.2, 0.3, 0.4]))
    with pytest.raises(ValueError, match="not seen in fit"):
        model.partial_predict(X.iloc[:3].assign(sex="X"))
    assert model.partial_predict_proba(X.iloc[:0]).shape == (0, 2)
    assert model.stream_stats() == before
    # Reset starts over.
    model.reset_stream()
    assert model.stream_stats()["n_batches"] == 0


def test_estimator_mixed_stream_projects_large_batches_exactly(fitted):
    import copy

    from skfair.metrics import demographic_parity_difference

    model, X = copy.deepcopy(fitted[0]), fitted[1]
    model.set_params(b_tau=64).reset_stream()
    for i, batch in enumerate(stream_batches(X, 40, seed=5, max_size=120)):
        p = model.partial_predict_proba(batch)[:, 1]
        if len(batch) >= 64:
            gap = demographic_parity_difference(None, p, sensitive_features=batch[["sex", "race"]])
            assert gap <= EPS + 1e-6


def test_partial_predict_without_a_label_free_constraint(fitted):
    from conftest import biased_frame

    from skfair import FairNeuralClassifier

    X, y = biased_frame(300)
    model = FairNeuralClassifier(protected_attributes=["sex", "race"], fairness="equalized_odds",
                                 max_epochs=2, random_state=0).fit(X, y)
    np.testing.assert_array_equal(model.partial_predict_proba(X.iloc[:5]),
                                  model.predict_proba(X.iloc[:5]))
    with pytest.raises(ValueError, match="needs true labels"):
        model.stream_stats()
