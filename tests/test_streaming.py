"""The online primal-dual algorithm: its finite-T guarantee, single-row streams and its state."""

import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skfair._streaming import DEFAULT_ETA0, DecisionStream, PrimalDualStream
from skfair.constraints import AffineConstraint, constraint_gap, get_constraint

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
    raw_gaps, checkpoints, steps = [], [], []
    for t in range(1, 2401):
        # Batch sizes 1..32 and a group ratio that drifts across the stream.
        z, groups = biased_batch(rng, int(rng.integers(1, 33)), 0.2 + 0.6 * (t % 97) / 97)
        stream.step(z, groups)
        raw_gaps.append(len(z) * constraint_gap("demographic_parity", z, groups))
        if t in (300, 600, 1200, 2400):
            checkpoints.append(stream.stats())
            steps.append((stream.step_size, stream.size_squares))
    for stats, (alpha, squares) in zip(checkpoints, steps):
        assert stats["weighted_avg_fairness_gap"] <= EPS + stats["bound"]
        assert stats["bound"] == pytest.approx(stats["lambda_max"] / (alpha * stats["n_samples"]))
        # alpha_T = eta0 / sqrt(sum n_t^2): the stability cap does not bind at the default eta0
        assert alpha == pytest.approx(DEFAULT_ETA0 / math.sqrt(squares))
    excess = [s["weighted_avg_fairness_gap"] + s["bound"] for s in checkpoints]
    assert excess == sorted(excess, reverse=True)
    assert checkpoints[-1]["bound"] < 0.1
    # Without the algorithm the same stream is far from fair.
    assert sum(raw_gaps) / checkpoints[-1]["n_samples"] > 4 * EPS


def test_single_row_stream_pooled_gap_converges():
    """Every batch is one row, so every row is compared with the other group's running mean.

    Summing row (u, v) over the rows of u (y_i - R_v) and of v (R_u - y_j), the dual argument
    gives pooled_u - pooled_v <= eps + lam_max / (alpha_T N) + drift (module docstring), drift
    the distance between the references used and the final pooled means; the first row, streamed
    before the other group's first, is in no row (its share is 1 / N_u of the pooled mean).
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
    first_row = 1 / counts.min()
    assert stats["pooled_fairness_gap"] <= (EPS + stats["bound"] + stats["reference_drift"]
                                            + first_row)
    # The raw gap of 0.3 ends within 0.01 of epsilon.
    assert stats["pooled_fairness_gap"] <= EPS + 0.01


def test_single_row_stream_under_disparate_impact():
    """Disparate impact borrows the reference means too: a stream of single rows ends with a
    pooled ratio of mean scores near 0.8 (raw: about 0.5)."""
    rng = np.random.default_rng(4)
    stream = PrimalDualStream(get_constraint("disparate_impact"), 0.0, (0.0, 1.0),
                              DEFAULT_ETA0, 100)
    sums, counts = np.zeros(2), np.zeros(2)
    for _ in range(3000):
        z, groups = biased_batch(rng, 1, 0.5)
        z = z * z  # group 0 around 0.12, group 1 around 0.42
        g = int(groups[0, 0])
        sums[g] += float(stream.step(z, groups)[0])
        counts[g] += 1
    means = sums / counts
    assert means.min() >= 0.8 * means.max() - 0.01


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
            gap = demographic_parity_difference(None, p, sensitive_features=batch[["sex", "race"]],
                                                intersectional=False)  # as constrained
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


# ------------------------------------------------------------------------------------------------
# Stability, non-finite outputs, reference drift and the bound on random streams


@pytest.mark.parametrize("n", [1, 8, 32, 64, 99])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), None])
def test_stable_step_at_every_batch_size_below_b_tau(n, bounds):
    """The loop gain does not grow with the batch size: at the default step, batches of up to
    b_tau - 1 rows neither saturate the outputs, nor alternate their gaps, nor diverge."""
    rng = np.random.default_rng(n)
    stream = PrimalDualStream(get_constraint("demographic_parity"), EPS, bounds, DEFAULT_ETA0,
                              100)
    outputs, gaps = [], []
    for _ in range(200):
        z, groups = biased_batch(rng, n, 0.5)
        y = stream.step(z, groups)
        outputs.append(y)
        if n > 1 and 0 < int(groups.sum()) < n:
            gaps.append(constraint_gap("demographic_parity", y, groups))
    y = torch.cat(outputs)
    assert bool(torch.isfinite(y).all()) and float(y.abs().max()) < 2
    assert float(((y == 0) | (y == 1)).double().mean()) < 0.01
    if gaps:  # the later batches are about as fair as epsilon, not +-1 in turn
        assert max(abs(g) for g in gaps[100:]) < 0.4
    stats = stream.stats()
    assert stats["weighted_avg_fairness_gap"] <= EPS + stats["bound"]
    assert stats["lambda_max"] < 1  # on the scale of the outputs (the raw gap is 0.3)


def test_a_stream_of_small_batches_keeps_accuracy_and_scale(fitted):
    import copy

    from sklearn.metrics import accuracy_score

    from conftest import biased_frame
    from skfair import FairNeuralRegressor

    model, X = copy.deepcopy(fitted[0]), fitted[1]
    y_true = biased_frame(4000, seed=1)[1]
    whole = model.predict_proba(X)[:, 1]
    model.reset_stream()
    chunked = np.concatenate([model.partial_predict_proba(X.iloc[i:i + 64])[:, 1]
                              for i in range(0, len(X), 64)])
    assert float(np.mean((chunked == 0) | (chunked == 1))) < 0.01
    assert accuracy_score(y_true, chunked > 0.5) >= accuracy_score(y_true, whole > 0.5) - 0.02
    Xr, _ = biased_frame(1500, seed=2)
    target = Xr["x1"] + (Xr["sex"] == "M")
    regressor = FairNeuralRegressor(protected_attributes=["sex", "race"], epsilon=EPS, bounds=False,
                                    distortion_penalty=0.0, hidden_layer_sizes=(8,),
                                    max_epochs=5, random_state=0).fit(Xr, target)
    whole = regressor.predict(Xr)
    regressor.reset_stream()
    chunked = np.concatenate([regressor.partial_predict(Xr.iloc[i:i + 64])
                              for i in range(0, len(Xr), 64)])
    assert np.all(np.isfinite(chunked)) and np.abs(chunked).max() < 2 * np.abs(whole).max()
    assert np.mean(np.abs(chunked - whole)) < 0.2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_outputs_raise_before_the_state_changes(bad):
    rng = np.random.default_rng(6)
    stream = new_stream(dual_init={(0, 1, 0, None): 0.1})
    for _ in range(30):
        stream.step(*biased_batch(rng, int(rng.integers(1, 9)), 0.5))
    state = pickle.dumps(stream)
    before = (dict(stream.duals), stream.stats(), stream.step_size, stream.size_squares)
    for n in (1, 5, 150):  # a step, a step, an exact projection
        z, groups = biased_batch(rng, n, 0.5)
        z[n // 2] = bad
        with pytest.raises(ValueError, match="finite"):
            stream.step(z, groups)
        assert (dict(stream.duals), stream.stats(), stream.step_size,
                stream.size_squares) == before
    assert pickle.dumps(stream) == state
    y = stream.step(*biased_batch(rng, 4, 0.5))  # the stream goes on
    assert bool(torch.isfinite(y).all()) and stream.stats()["n_batches"] == 31


def test_multipliers_that_would_overflow_raise_before_the_state_changes():
    """Finite outputs far apart (bounds None) make a row's value overflow to infinity: the
    step raises and leaves every multiplier, sum and counter as it was."""
    rng = np.random.default_rng(9)
    stream = PrimalDualStream(get_constraint("demographic_parity"), EPS, None, DEFAULT_ETA0, 100)
    for _ in range(30):
        stream.step(*biased_batch(rng, int(rng.integers(1, 9)), 0.5))
    state, duals = pickle.dumps(stream), stream.duals
    with pytest.raises(ValueError, match="overflow"):
        stream.step(torch.tensor([1e308, -1e308], dtype=torch.float64), torch.tensor([[1], [0]]))
    assert pickle.dumps(stream) == state and stream.duals == duals
    y = stream.step(*biased_batch(rng, 4, 0.5))  # the stream goes on
    assert bool(torch.isfinite(y).all()) and stream.stats()["n_batches"] == 31


def test_reference_drift_is_reported():
    """Single rows; group 0's scores rise along the stream, so the running means group 1 is
    compared with lag behind group 0's final pooled mean: that lag is the drift term."""
    rng = np.random.default_rng(7)
    stream = new_stream()
    outputs, references = {0: [], 1: []}, {0: [], 1: []}
    T = 3000
    for t in range(T):
        g = int(rng.uniform() < 0.5)
        z = torch.tensor([0.2 + 0.5 * t / T + 0.3 * g + 0.05 * rng.normal()], dtype=torch.float64)
        if outputs[1 - g]:  # the running mean of the other group, which this row is compared with
            references[1 - g].append(np.mean(outputs[1 - g]))
        y = stream.step(z.clamp(0, 1), torch.tensor([[g]]))
        outputs[g].append(float(y[0]))
    stats = stream.stats()
    drifts = [abs(np.mean(references[w]) - np.mean(outputs[w])) for w in (0, 1)]
    assert max(drifts) > 0.05
    assert stats["reference_drift"] == pytest.approx(max(drifts), rel=1e-9)
    pooled = abs(np.mean(outputs[1]) - np.mean(outputs[0]))
    assert stats["pooled_fairness_gap"] == pytest.approx(pooled)
    first_row = 1 / min(len(outputs[0]), len(outputs[1]))
    assert pooled <= EPS + stats["bound"] + stats["reference_drift"] + first_row


def _numpy_row_sums(batches, outputs, epsilon):
    """``sum_t n_t (G_t y_t)_k`` per row key of demographic parity, recomputed with numpy: the
    in-batch rows ``mean_u - mean_v`` and, for a present ``u`` and an absent ``w`` that was
    streamed before, ``mean_u - R_w`` (key ``(a, u, w)``) and ``R_w - mean_u`` (key ``(a, w, u)``),
    ``R_w`` the mean of all of ``w``'s earlier outputs."""
    sums, history = {}, {}
    for groups, y in zip(batches, outputs):
        n = len(y)
        for a in range(groups.shape[1]):
            codes = groups[:, a]
            present = sorted(set(codes.tolist()))
            means = {g: y[codes == g].mean() for g in present}
            rows = {(u, v): means[u] - means[v] for u in present for v in present if u != v}
            for w, (total, count) in history.get(a, {}).items():
                if w not in present:
                    for u in present:
                        rows[(u, w)] = means[u] - total / count
                        rows[(w, u)] = total / count - means[u]
            for (u, v), value in rows.items():
                sums[(a, u, v)] = sums.get((a, u, v), 0.0) + n * value
            for g in present:
                total, count = history.setdefault(a, {}).get(g, (0.0, 0))
                history[a][g] = (total + y[codes == g].sum(), count + int((codes == g).sum()))
    return sums


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), b_tau=st.integers(2, 40), n_batches=st.integers(1, 40),
       n_attributes=st.integers(1, 2), n_groups=st.integers(2, 3),
       bounded=st.booleans(), eta0=st.floats(1e-3, 10), float32=st.booleans(),
       offset=st.floats(-50, 50), spread=st.floats(0.01, 100))
def test_random_streams_stay_finite_within_bounds_and_meet_the_bound(
        seed, b_tau, n_batches, n_attributes, n_groups, bounded, eta0, float32, offset, spread):
    rng = np.random.default_rng(seed)
    bounds = (0.0, 1.0) if bounded else None
    stream = PrimalDualStream(get_constraint("demographic_parity"), EPS, bounds, eta0, b_tau)
    batches, outputs, N = [], [], 0
    for _ in range(n_batches):
        n = int(rng.integers(1, b_tau))  # every batch takes a primal-dual step
        # tiny groups: one group takes most rows, the others a row now and then
        share = rng.dirichlet(np.full(n_groups, 0.3))
        groups = rng.choice(n_groups, size=(n, n_attributes), p=share)
        z = offset + spread * rng.standard_normal(n) + 3 * spread * groups[:, 0]
        z = torch.tensor(z, dtype=torch.float32 if float32 else torch.float64)
        y = stream.step(z, torch.as_tensor(groups))
        assert y.dtype == torch.float64 and bool(torch.isfinite(y).all())
        if bounded:
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        batches.append(groups)
        outputs.append(y.numpy())
        N += n
        stats = stream.stats()
        sums = _numpy_row_sums(batches, outputs, EPS)
        weighted = max((s / N for s in sums.values()), default=0.0)
        scale = 1.0 + max(float(np.abs(np.concatenate(outputs)).max()), abs(offset))
        assert weighted == pytest.approx(stats["weighted_avg_fairness_gap"], abs=1e-9 * scale)
        assert weighted <= EPS + stats["bound"] + 1e-9 * scale


def test_warm_start_scale_reproduces_the_exact_projection():
    """A multiplier mu of the exact projection is lam = mu ||g||^2 on the stream's scale (what
    fit records in dual_init_): started from them, the primal step of the same batch is that
    projection."""
    from skfair._streaming import row_norms
    from skfair.layer import project

    rng = np.random.default_rng(8)
    z, groups = biased_batch(rng, 60, 0.3)
    cs = get_constraint("demographic_parity").build(groups, epsilon=EPS)
    exact, info = project(z, cs, (0.0, 1.0))
    dual_init = {k: info["duals"][k] * norm for k, norm in zip(cs.keys, row_norms(cs))}
    assert max(dual_init.values()) > 0
    torch.testing.assert_close(new_stream(dual_init=dual_init).step(z, groups), exact,
                               atol=1e-9, rtol=0)


# --- decisions --------------------------------------------------------------------------------

def new_decisions(b_tau=100, constraint="demographic_parity", epsilon=EPS):
    return DecisionStream(get_constraint(constraint), epsilon, DEFAULT_ETA0, b_tau)


def test_decision_stream_meets_its_bound_on_selection_rates():
    """Batches of 1..32 probabilities (group 1 scores 0.3 higher): the decisions are 0/1, the
    weighted average of every row's selection-rate difference (recomputed with numpy) meets
    epsilon + bound, the bound shrinks, and the plain decisions p > 0.5 are far from fair."""
    rng = np.random.default_rng(0)
    stream = new_decisions()
    batches, outputs, plain, N = [], [], [], 0
    for t in range(1, 2401):
        z, groups = biased_batch(rng, int(rng.integers(1, 33)), 0.2 + 0.6 * (t % 97) / 97)
        labels = stream.step(z, groups).numpy()
        assert set(np.unique(labels)) <= {0.0, 1.0}
        batches.append(groups.numpy())
        outputs.append(labels)
        plain.append((z.numpy() > 0.5).astype(float))
        N += len(z)
    stats = stream.stats()
    weighted = max(s / N for s in _numpy_row_sums(batches, outputs, EPS).values())
    assert weighted == pytest.approx(stats["weighted_avg_fairness_gap"], abs=1e-12)
    assert weighted <= EPS + stats["bound"]
    assert stats["bound"] < 0.1
    raw = max(s / N for s in _numpy_row_sums(batches, plain, EPS).values())
    assert raw > 4 * EPS


def test_decision_stream_of_single_rows():
    """One row per batch: every decision is compared with the other group's running selection
    rate; the pooled selection-rate gap ends within the module's bound (see
    test_single_row_stream_pooled_gap_converges) and near epsilon."""
    rng = np.random.default_rng(1)
    stream = new_decisions()
    selected, counts = np.zeros(2), np.zeros(2)
    for _ in range(4000):
        z, groups = biased_batch(rng, 1, 0.4)
        g = int(groups[0, 0])
        selected[g] += float(stream.step(z, groups)[0])
        counts[g] += 1
    stats = stream.stats()
    gap = abs(selected[1] / counts[1] - selected[0] / counts[0])
    assert gap == pytest.approx(stats["pooled_fairness_gap"])
    assert gap <= EPS + stats["bound"] + stats["reference_drift"] + 1 / counts.min()
    assert gap <= EPS + 0.02


def test_decision_stream_labels_large_batches_exactly():
    """A batch of at least b_tau rows gets the most accurate labels that meet the rule on the
    batch, exactly (counts as fractions)."""
    from fractions import Fraction

    rng = np.random.default_rng(2)
    stream = new_decisions(b_tau=50, epsilon=0.02)
    z, groups = biased_batch(rng, 333, 0.3)
    labels = stream.step(z, groups).numpy().astype(int)
    codes = groups[:, 0].numpy()
    rates = [Fraction(int(labels[codes == g].sum()), int((codes == g).sum())) for g in (0, 1)]
    assert abs(rates[0] - rates[1]) <= Fraction(0.02)
    assert stream.stats()["n_steps"] == 0


def test_decision_stream_under_the_four_fifths_rule():
    """Disparate impact (ratio 0.8, epsilon 0) on a stream of single rows: each decision is held
    against the other group's running selection rate (ratio * R_w - rate_u and ratio * rate_u -
    R_w), so the pooled ratio of selection rates ends near 0.8 (raw decisions: about 0.1)."""
    rng = np.random.default_rng(3)
    stream = new_decisions(constraint="disparate_impact", epsilon=0.0)
    selected, plain, counts = np.zeros(2), np.zeros(2), np.zeros(2)
    for _ in range(4000):
        z, groups = biased_batch(rng, 1, 0.5)
        g = int(groups[0, 0])
        selected[g] += float(stream.step(z, groups)[0])
        plain[g] += float(z[0] > 0.5)
        counts[g] += 1
    stats = stream.stats()
    assert stats["weighted_avg_fairness_gap"] <= stats["bound"]
    rates = selected / counts
    assert rates.min() >= 0.8 * rates.max() - stats["bound"] - stats["reference_drift"] - 0.01
    raw = plain / counts
    assert raw.min() < 0.2 * raw.max()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), b_tau=st.integers(2, 40), n_batches=st.integers(1, 40),
       n_attributes=st.integers(1, 2), n_groups=st.integers(2, 3), eta0=st.floats(1e-3, 10))
def test_random_decision_streams_meet_the_bound(seed, b_tau, n_batches, n_attributes, n_groups,
                                                eta0):
    rng = np.random.default_rng(seed)
    stream = DecisionStream(get_constraint("demographic_parity"), EPS, eta0, b_tau)
    batches, outputs, N = [], [], 0
    for _ in range(n_batches):
        n = int(rng.integers(1, b_tau))  # every batch takes a primal-dual step
        share = rng.dirichlet(np.full(n_groups, 0.3))
        groups = rng.choice(n_groups, size=(n, n_attributes), p=share)
        p = np.clip(rng.uniform(size=n) * 0.6 + 0.3 * groups[:, 0] / (n_groups - 1), 0, 1)
        labels = stream.step(torch.as_tensor(p), torch.as_tensor(groups)).numpy()
        assert set(np.unique(labels)) <= {0.0, 1.0}
        batches.append(groups)
        outputs.append(labels)
        N += n
        stats = stream.stats()
        weighted = max((s / N for s in _numpy_row_sums(batches, outputs, EPS).values()),
                       default=0.0)
        assert weighted == pytest.approx(stats["weighted_avg_fairness_gap"], abs=1e-12)
        assert weighted <= EPS + stats["bound"] + 1e-12


# --- the step's cached, compiled bookkeeping against a plain reference --------------------------

class _PlainStream:
    """The primal-dual stream written plainly: every batch rebuilds its rows (with the running
    means of the absent groups), pools the group statistics from scratch and computes the step
    with numpy; ``threshold`` set, it is the decision stream. :class:`PrimalDualStream` must
    reproduce its outputs, multipliers and statistics."""

    def __init__(self, constraint, epsilon, bounds, eta0, b_tau, dual_init=None,
                 threshold=None):
        self.constraint, self.epsilon, self.bounds = constraint, epsilon, bounds
        self.eta0, self.b_tau, self.threshold = eta0, b_tau, threshold
        self.duals = dict(dual_init or {})
        self.lambda_max = max(self.duals.values(), default=0.0)
        self.n_steps = self.size_squares = self.n_batches = self.n_samples = 0
        self.step_size = math.inf
        self.batch_gap_sum = self.batch_violation_sum = 0.0
        self.row_sums, self.atom_sums, self.reference_sums, self.reference_uses = {}, {}, {}, {}

    def step(self, z, groups):
        from skfair import _rows
        from skfair._bounds import Bounds
        from skfair._kernels import atom_shift, clip_shift, row_gram
        from skfair._streaming import MAX_GAIN
        from skfair.decisions import fair_labels
        from skfair.layer import project

        n = len(z)
        z = z.to(torch.float64)
        codes = groups.numpy()
        atoms = _rows.atoms(codes)
        if n >= self.b_tau:
            cs = self.constraint.build(groups, epsilon=self.epsilon)
            if self.threshold is None:
                y = project(z, cs, self.bounds)[0].numpy()
            else:
                y = fair_labels(z.numpy(), codes, self.epsilon,
                                ratio=getattr(self.constraint, "ratio", None)).astype(float)
            self._record(y, cs, atoms)
            return y
        means, counts = self._group_stats()
        grouped = isinstance(self.constraint, _rows.GroupMeanLayout)
        if grouped:
            cs = _rows.group_mean_set(self.constraint, groups, epsilon=self.epsilon,
                                      reference_means={(a, g, None): mean
                                                       for (a, g), mean in means.items()})
        else:
            cs = self.constraint.build(groups, epsilon=self.epsilon)
        if cs.n_rows == 0:
            y = self._decide(np.clip(z.numpy(), *Bounds.of(self.bounds).box))
            self.n_steps += 1
            self._record(y, cs, atoms)
            return y
        present = [set(column) for column in zip(*(row for row, count in
                                                   zip(atoms[1], atoms[2]) if count))]
        keys = list(cs.keys)
        gram = row_gram(cs.host_rows, cs.square_mass, np.arange(cs.n_rows))
        scale = np.diag(gram).copy()
        if grouped and means:
            for r, (a, u, v, *_) in enumerate(keys):
                if u in present[a] and v not in present[a]:
                    scale[r] *= 1.0 + counts.get((a, u), 0) / counts[(a, v)]
                elif v in present[a] and u not in present[a]:
                    scale[r] *= 1.0 + counts.get((a, v), 0) / counts[(a, u)]
        inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        lam = np.array([self.duals.get(k, 0.0) for k in keys])
        y = np.empty(n)
        clip_shift(z.numpy(), cs.host_atom, atom_shift(cs.host_rows, lam * inverse),
                   cs.host_weight, *Bounds.of(self.bounds).box, y)
        y = self._decide(y)
        violation = self._values(y, cs)
        size_squares = self.size_squares + n * n
        step_size = min(self.step_size, self.eta0 / math.sqrt(size_squares))
        active = (lam > 0) | (violation > 0)
        if active.any():
            block = np.abs(gram[np.ix_(active, active)]) * inverse[active][None, :]
            step_size = min(step_size, MAX_GAIN / (n * block.sum(axis=1).max()))
        lam = np.maximum(lam + step_size * n * violation, 0.0)
        self.n_steps += 1
        self.size_squares, self.step_size = size_squares, step_size
        self.duals.update(zip(keys, lam.tolist()))
        self.lambda_max = max(self.lambda_max, lam.max())
        for a, u, w, *_ in keys if grouped and means else ():
            if u in present[a] and w not in present[a]:
                pair = (a, u, w)
                self.reference_sums[pair] = self.reference_sums.get(pair, 0.0) + n * means[(a, w)]
                self.reference_uses[pair] = self.reference_uses.get(pair, 0) + n
        self._record(y, cs, atoms)
        return y

    def _decide(self, y):
        return y if self.threshold is None else (y > self.threshold).astype(float)

    @staticmethod
    def _values(y, cs):
        from skfair._kernels import row_values

        weight = cs.host_weight
        sums = np.bincount(cs.host_atom, weights=y * weight if weight.size else y,
                           minlength=cs.n_atoms)
        return row_values(cs.host_rows, sums, cs.host_h)

    def _group_stats(self):
        sums = {}
        for codes, (total, count) in self.atom_sums.items():
            for a, g in enumerate(codes):
                acc = sums.setdefault((a, g), [0.0, 0])
                acc[0] += total
                acc[1] += count
        return ({k: total / count for k, (total, count) in sums.items()},
                {k: count for k, (_, count) in sums.items()})

    def _record(self, y, cs, atoms):
        n = len(y)
        self.n_batches += 1
        self.n_samples += n
        values = (self._values(y, cs) + self.epsilon).tolist() if cs.n_rows else []
        for key, value in zip(cs.keys, values):
            self.row_sums[key] = self.row_sums.get(key, 0.0) + n * value
        gap = max(values, default=0.0)
        self.batch_gap_sum += n * gap
        self.batch_violation_sum += n * max(0.0, gap - self.epsilon)
        atom, table, counts = atoms
        sums = np.bincount(atom, weights=y, minlength=len(table))
        for codes, total, count in zip(table, sums.tolist(), counts.tolist()):
            if count:
                acc = self.atom_sums.setdefault(codes, [0.0, 0])
                acc[0] += total
                acc[1] += int(count)

    def stats(self):
        N = max(self.n_samples, 1)
        means = self._group_stats()[0]
        drift = max((abs(total / self.reference_uses[pair] - means[(pair[0], pair[2])])
                     for pair, total in self.reference_sums.items()), default=0.0)
        table = torch.tensor(list(self.atom_sums), dtype=torch.long)
        totals, counts = (torch.tensor(c, dtype=torch.float64)
                          for c in zip(*self.atom_sums.values()))
        gaps = {a: constraint_gap(self.constraint, totals / counts, table[:, [a]],
                                  sample_weight=counts) for a in range(table.shape[1])}
        return {
            "weighted_avg_fairness_gap": max(s / N for s in self.row_sums.values()),
            "bound": self.lambda_max / (self.step_size * N),
            "epsilon": self.epsilon,
            "mean_batch_gap": self.batch_gap_sum / N,
            "mean_batch_violation": self.batch_violation_sum / N,
            "pooled_fairness_gap": max(gaps.values()),
            "per_attribute_gaps": gaps,
            "reference_drift": drift,
            "n_batches": self.n_batches,
            "n_steps": self.n_steps,
            "n_samples": self.n_samples,
            "lambda_max": self.lambda_max,
        }


class _FirstAttributeParity(AffineConstraint):
    """A custom (dense) constraint: the two groups of attribute 0 have means within epsilon."""

    def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
        one = (groups[:, 0] == 1).to(torch.float64)
        if not 0 < float(one.sum()) < len(one):
            return torch.zeros((0, len(one)), dtype=torch.float64), torch.zeros(0)
        G = one / one.sum() - (1 - one) / (1 - one).sum()
        return torch.stack([G, -G]), torch.full((2,), float(epsilon), dtype=torch.float64)


def _close(actual, expected):
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            _close(actual[key], expected[key])
    else:
        np.testing.assert_allclose(np.asarray(actual, dtype=float),
                                   np.asarray(expected, dtype=float), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("constraint", ["demographic_parity", "disparate_impact", "custom"])
@pytest.mark.parametrize("bounds, decisions", [((0.0, 1.0), False), (None, False),
                                               ((0.0, 1.0), True)])
def test_step_reproduces_the_plain_algorithm_on_a_long_stream(constraint, bounds, decisions):
    """Batches of 1 to b_tau - 1 rows (and a few projected exactly) over three attributes whose
    groups appear one after another, some rarely; a large eta0 now and then lets the stability
    cap bind; the state goes through pickle midway. Outputs, multipliers and every statistic
    equal those of :class:`_PlainStream`."""
    b_tau, epsilon = 12, 0.02
    constraint = (_FirstAttributeParity() if constraint == "custom"
                  else get_constraint(constraint))
    rng = np.random.default_rng(11)
    eta0 = 3.0 if constraint.__class__.__name__ == "DemographicParity" else DEFAULT_ETA0
    dual_init = {(0, 1, 0, None): 0.05, (1, 2, 0, None): 0.01} if not decisions else None
    if decisions:
        stream = DecisionStream(constraint, epsilon, eta0, b_tau)
        plain = _PlainStream(constraint, epsilon, (0.0, 1.0), eta0, b_tau,
                             threshold=DecisionStream.THRESHOLD)
    else:
        stream = PrimalDualStream(constraint, epsilon, bounds, eta0, b_tau, dual_init=dual_init)
        plain = _PlainStream(constraint, epsilon, bounds, eta0, b_tau, dual_init=dual_init)
    n_groups = np.array([2, 4, 3])
    for t in range(600):
        n = int(rng.integers(b_tau, 2 * b_tau)) if t % 97 == 50 else int(
            rng.choice([1, 1, 2, 3, 5, 8, b_tau - 1]))
        # group g of an attribute appears from batch 40 g on, the last one rarely
        reach = np.minimum(n_groups, 1 + t // 40)
        share = [np.r_[np.ones(k - 1), 0.1][:k] for k in reach]
        groups = np.stack([rng.choice(k, size=n, p=p / p.sum()) for k, p in zip(reach, share)],
                          axis=1)
        z = 0.4 + 0.2 * groups[:, 0] - 0.1 * groups[:, 1] + 0.15 * rng.standard_normal(n)
        low, high = (0.0, 1.0) if decisions else (-0.2, 1.2)
        z = torch.as_tensor(z if bounds is None else np.clip(z, low, high))
        groups = torch.as_tensor(groups)
        if t == 300:
            stream = pickle.loads(pickle.dumps(stream))
        y, expected = stream.step(z, groups), plain.step(z, groups)
        assert y.dtype == torch.float64
        _close(y.numpy(), expected)
    assert stream.stats()["n_steps"] > 500 and stream.stats()["lambda_max"] > 0
    _close(stream.stats(), plain.stats())
    for name in ("duals", "row_sums", "reference_sums", "reference_uses"):
        _close(getattr(stream, name), getattr(plain, name))
    _close({k: tuple(v) for k, v in stream.atom_sums.items()},
           {k: tuple(v) for k, v in plain.atom_sums.items()})


def test_single_rows_atoms_kept_by_their_codes_change_nothing(monkeypatch):
    """A single row's atoms are kept by its group codes (and dtype), at most MAX_STRUCTURES of
    them: the outputs and the statistics are those of atoms found anew every time."""
    from skfair import _rows, _streaming

    rng = np.random.default_rng(3)
    rows = [(torch.as_tensor(rng.uniform(size=1)), torch.as_tensor(rng.integers(0, 3, (1, 2))))
            for _ in range(300)]
    monkeypatch.setattr(_streaming, "MAX_STRUCTURES", 4)
    kept = new_stream()
    outputs = [kept.step(z, groups).numpy() for z, groups in rows]
    assert 0 < len(kept._row_atoms) <= 4
    # a row of four int32 codes with the bytes of a kept row of two int64 codes has its own
    wide = np.array([[1, 0]]).view(np.int32)
    assert kept._atoms(np.array([[1, 0]]))[1] != kept._atoms(wide)[1] == _rows.atoms(wide)[1]
    monkeypatch.setattr(_streaming.PrimalDualStream, "_atoms",
                        lambda self, codes: _rows.atoms(codes))
    anew = new_stream()
    np.testing.assert_array_equal(outputs, [anew.step(z, groups).numpy() for z, groups in rows])
    assert kept.stats() == anew.stats()
