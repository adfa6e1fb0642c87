"""FairNeuralClassifier(constrain="logit"): the layer acts on the network's logits, unbounded.

The guarantees hold on the logit scale: group means of the fair logits (``decision_function``,
and ``logit(predict_proba)``) recomputed with numpy, streams and their reported bound, labels,
calibration, the training objective, and what the report and the plots show.
"""

import numpy as np
import pytest
import torch
from conftest import biased_frame
from scipy.special import expit, logit
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks
from test_estimator_checks import EXPECTED

from skfair import FairNeuralClassifier, _kernels
from skfair.constraints import get_constraint
from skfair.layer import TrainingLoss, project, training_objective
from skfair.metrics import fairness_report

FAST = dict(hidden_layer_sizes=(16,), max_epochs=15, batch_size=128, learning_rate=0.01,
            random_state=0)
PROTECTED = ["sex", "race"]
EPSILON = 0.05


@pytest.fixture(scope="module")
def data():
    return biased_frame(600)


@pytest.fixture(scope="module")
def on_logits(data):
    """Without the distortion penalty the network stays unfair by itself: the layer acts."""
    X, y = data
    return FairNeuralClassifier(protected_attributes=PROTECTED, constrain="logit",
                                epsilon=EPSILON, distortion_penalty=0.0, **FAST).fit(X, y)


def group_gaps(values, X):
    """Per protected attribute, the largest difference of the groups' means of ``values``."""
    return {a: np.ptp([values[(X[a] == g).to_numpy()].mean() for g in X[a].unique()])
            for a in PROTECTED}


@parametrize_with_checks([FairNeuralClassifier(constrain="logit")],
                         expected_failed_checks=lambda est: EXPECTED)
def test_sklearn_compatible_on_logits(estimator, check):
    check(estimator)


def test_the_parameter_is_declared_and_round_trips():
    assert "constrain" in FairNeuralClassifier._parameter_constraints
    assert FairNeuralClassifier().get_params()["constrain"] == "proba"
    clf = FairNeuralClassifier(constrain="logit")
    assert clf.get_params()["constrain"] == "logit"
    assert clone(clf).get_params() == clf.get_params()
    assert clone(clf.set_params(constrain="proba")).constrain == "proba"


@pytest.mark.parametrize("value", ["logits", "probability", None, 1])
def test_invalid_values_raise_at_fit_and_fit_nothing(data, value):
    X, y = data
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, constrain=value, **FAST)
    with pytest.raises(InvalidParameterError, match="'constrain' parameter"):
        clf.fit(X, y)
    assert not hasattr(clf, "module_")


def test_a_module_giving_probabilities_is_refused(data):
    X, y = data
    module = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Sigmoid())
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, constrain="logit", module=module,
                               **FAST)
    with pytest.raises(ValueError, match=r"constrain='logit'.*nn\.Sigmoid.*constrain='proba'"):
        clf.fit(X, y)
    assert not hasattr(clf, "module_")
    clf.set_params(module=module[:1]).fit(X, y)  # the same network without its sigmoid
    assert clf.bounds_ is None


def test_group_means_of_the_logits_differ_by_at_most_epsilon(data, on_logits):
    """A batch of at least b_tau rows: the fair logits meet the constraint (numpy group means),
    also recomputed from the probabilities; the raw logits did not, and neither do the
    probabilities' means, which the constraint does not bound."""
    X, _ = data
    assert on_logits.bounds_ is None
    for batch in (X, X.iloc[:on_logits.b_tau]):
        z = on_logits.decision_function(batch)
        p = on_logits.predict_proba(batch)[:, 1]
        np.testing.assert_allclose(p, expit(z), rtol=1e-15, atol=0)
        for gap in group_gaps(z, batch).values():
            assert gap <= EPSILON + 1e-9
        for gap in group_gaps(logit(p), batch).values():
            assert gap <= EPSILON + 1e-9
    raw = on_logits._predict_unconstrained(X)
    assert max(group_gaps(raw, X).values()) > 2 * EPSILON
    assert max(group_gaps(on_logits.predict_proba(X)[:, 1], X).values()) != pytest.approx(
        max(group_gaps(on_logits.decision_function(X), X).values()))
    np.testing.assert_array_equal(on_logits.predict(X), on_logits.predict_proba(X).argmax(1))
    assert np.all((on_logits.decision_function(X) > 0) == on_logits.predict(X).astype(bool))


def test_audit_projects_the_logits(data, on_logits):
    X, y = data
    p = on_logits.audit_predict_proba(X.iloc[:40], y.iloc[:40])[:, 1]
    for gap in group_gaps(logit(p), X.iloc[:40]).values():
        assert gap <= EPSILON + 1e-9


def test_training_through_the_logit_layer_reduces_the_loss(on_logits):
    curve = on_logits.loss_curve_
    assert curve[-1] < 0.9 * curve[0]
    record = on_logits.history_[-1]
    assert record["train_gap"] > EPSILON  # the layer corrected the logits of every epoch
    # (each batch meets epsilon on its own; pooled over the epoch, nearly)
    assert record["train_fair_gap"] < record["train_gap"] / 2


@pytest.mark.parametrize("weighted", [False, True])
def test_fused_objective_is_the_log_loss_of_the_fair_logits(on_logits, weighted):
    """The compiled training step on logits (one call: projection, log loss of sigmoid of the
    fair logits, penalty) equals the projection followed by the classifier's torch losses, in
    value and gradient."""
    rng = np.random.default_rng(1)
    n = 300
    groups = torch.as_tensor(rng.integers(0, 3, n))
    target = torch.as_tensor((rng.uniform(size=n) < 0.4).astype(np.float64))
    weight = torch.as_tensor(rng.uniform(0.5, 2.0, n) if weighted else np.ones(n))
    z0 = torch.as_tensor(rng.normal(0.0, 3.0, n) + 1.5 * groups.numpy())
    cs = get_constraint("demographic_parity").build(groups, epsilon=0.1)
    assert on_logits._compiled_loss == _kernels.LOGIT_LOG_LOSS
    loss = TrainingLoss(on_logits._sample_losses, on_logits._compiled_loss, 1.0, 10.0)
    z = z0.clone().requires_grad_(True)
    value, _, fair = training_objective(z, cs, None, "exact", target, weight, loss)
    value.backward()

    reference = z0.clone().requires_grad_(True)
    y, _ = project(reference, cs, None)
    losses = torch.nn.functional.binary_cross_entropy(torch.sigmoid(y), target,
                                                      reduction="none")
    want = (weight * (losses + 10.0 * (reference - y) ** 2)).sum() / weight.sum()
    want.backward()
    assert float(value.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    torch.testing.assert_close(z.grad, reference.grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(fair, y.detach(), atol=0, rtol=0)


def test_streaming_on_logits_keeps_its_reported_bound(data, on_logits):
    """Batches shorter than b_tau stream on the logits: the reported average gap is within
    epsilon plus the reported bound, and the pooled gap is that of the streamed logits."""
    X, _ = data
    clf = clone(on_logits).set_params(b_tau=50).fit(*data)
    streamed = [clf.partial_predict_proba(X.iloc[start:start + 10])[:, 1]
                for start in range(0, 400, 10)]
    stats = clf.stream_stats()
    assert stats["scale"] == "logit" and stats["n_steps"] == 40
    assert stats["weighted_avg_fairness_gap"] <= stats["epsilon"] + stats["bound"] + 1e-9
    pooled = group_gaps(logit(np.concatenate(streamed)), X.iloc[:400])
    assert stats["pooled_fairness_gap"] == pytest.approx(max(pooled.values()), abs=1e-6)
    clf.partial_predict_proba(X.iloc[:60])  # at least b_tau rows: projected exactly
    z = logit(clf.partial_predict_proba(X.iloc[:60])[:, 1])
    assert max(group_gaps(z, X.iloc[:60]).values()) <= EPSILON + 1e-9


def test_labels_on_logits_keep_the_exact_selection_rates(data):
    """guarantee="labels" combines with logits: the labels are decided from sigmoid of the
    fair logits, and their selection rates meet the constraint in a batch of b_tau rows."""
    X, y = data
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, constrain="logit",
                               guarantee="labels", epsilon=EPSILON, **FAST).fit(X, y)
    labels = (clf.predict(X) == clf.classes_[1]).astype(float)
    for gap in group_gaps(labels, X).values():
        assert gap <= EPSILON
    for start in range(0, 60, 6):
        clf.partial_predict(X.iloc[start:start + 6])
    stats = clf.stream_stats()
    assert stats["scale"] == "logit"
    assert (stats["labels"]["weighted_avg_fairness_gap"]
            <= EPSILON + stats["labels"]["bound"] + 1e-12)


def test_calibrated_offsets_act_on_the_logits(data):
    """inference="individual": offsets and thresholds on the logit scale; on the calibration
    set the fair logits and the labels meet the constraint."""
    X, y = data
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, constrain="logit",
                               guarantee="labels", inference="individual", epsilon=EPSILON,
                               **FAST).fit(X, y)
    for gap in group_gaps(clf.decision_function(X), X).values():
        assert gap <= EPSILON + 1e-9
    labels = (clf.predict(X) == clf.classes_[1]).astype(float)
    assert max(group_gaps(labels, X).values()) == pytest.approx(clf.calibration_.label_gap)
    assert clf.calibration_.label_gap <= EPSILON
    assert np.isfinite(clf.individual_gap_bound())  # of the labels' selection rates
    assert clf.set_params(guarantee="proba").calibrate(X).individual_gap_bound() == np.inf
    np.testing.assert_array_equal(clf.predict(X.iloc[:1]), clf.predict(X)[:1])


def test_grid_search_over_the_parameter(data):
    X, y = data
    search = GridSearchCV(
        FairNeuralClassifier(protected_attributes=PROTECTED, **dict(FAST, max_epochs=3)),
        {"constrain": ["proba", "logit"]}, cv=2).fit(X, y)
    assert [p["constrain"] for p in search.cv_results_["params"]] == ["proba", "logit"]
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    best = search.best_estimator_
    assert (best.bounds_ is None) == (best.constrain == "logit")


def test_default_constrains_probabilities(data):
    X, y = data
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, **dict(FAST, max_epochs=3))
    clf.fit(X, y)
    assert clf.bounds_ == (0.0, 1.0) and clf._compiled_loss == _kernels.LOG_LOSS
    for gap in group_gaps(clf.predict_proba(X)[:, 1], X).values():
        assert gap <= EPSILON + 1e-9
    clf.partial_predict_proba(X.iloc[:5])
    assert clf.stream_stats()["scale"] == "proba"
    assert "mean logit" not in fairness_report(clf, X, y).columns


def test_partial_fit_on_logits(data):
    X, y = data
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, constrain="logit", **FAST)
    clf.partial_fit(X.iloc[:300], y.iloc[:300], classes=[0, 1])
    clf.partial_fit(X.iloc[300:], y.iloc[300:])
    assert clf.bounds_ is None and len(clf.history_) == 2
    for gap in group_gaps(clf.decision_function(X), X).values():
        assert gap <= EPSILON + 1e-9


def test_fairness_report_shows_the_constrained_scale(data, on_logits):
    X, y = data
    report = fairness_report(on_logits, X, y)
    assert list(report.columns[:3]) == ["count", "mean prediction", "mean logit"]
    z = on_logits.decision_function(X)
    for attribute, gap in group_gaps(z, X).items():
        assert report.loc[(attribute, "summary", "gap"), "mean logit"] == pytest.approx(
            gap, abs=1e-12)
        assert gap <= EPSILON + 1e-9
        assert report.loc[(attribute, "group", "F" if attribute == "sex" else "a"),
                          "mean logit"] == pytest.approx(
            z[(X[attribute] == ("F" if attribute == "sex" else "a")).to_numpy()].mean())


def test_plot_shows_the_logits(data, on_logits):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skfair.plotting import plot_group_distributions

    X, _ = data
    fig = plot_group_distributions(on_logits, X, attribute="sex")
    xlabel, means = fig.axes[1].get_xlabel(), [line.get_xdata()[0]
                                               for line in fig.axes[1].get_lines()]
    plt.close(fig)  # (pyplot warns past 20 open figures)
    assert xlabel == "logit of class 1"
    assert np.ptp(means) <= EPSILON + 1e-9


def test_dask_global_prediction_on_logits(data, on_logits):
    pytest.importorskip("dask.dataframe")
    import dask
    import dask.dataframe as dd

    import skfair.dask as sd

    X, _ = data
    with dask.config.set(scheduler="synchronous"):
        ddf = dd.from_pandas(X, npartitions=3)
        proba = sd.predict_proba(on_logits, ddf).compute()
        labels = sd.predict(on_logits, ddf).compute()
    np.testing.assert_allclose(proba, on_logits.predict_proba(X), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(labels, on_logits.predict(X))


def test_fairness_scorers_measure_the_logits_the_model_constrains(data, on_logits):
    from skfair.metrics import demographic_parity_scorer

    X, _ = data
    batch = X.iloc[:200]  # one batch of at least b_tau rows: projected exactly
    logits = on_logits.decision_function(batch)
    gap = max(group_gaps(logits, batch).values())
    assert -demographic_parity_scorer(on_logits, batch, None) == pytest.approx(gap, abs=1e-12)
    assert gap <= EPSILON + 1e-9
    # the probabilities' gap, which the guarantee does not bound, is another figure
    probabilities = max(group_gaps(on_logits.predict_proba(batch)[:, 1], batch).values())
    assert probabilities != pytest.approx(gap, abs=1e-6)


def test_scorers_read_the_scale_the_model_was_fitted_with(data):
    from skfair.metrics import demographic_parity_scorer

    X, y = data
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, epsilon=EPSILON, **FAST)
    clf.fit(X, y)
    batch = X.iloc[:200]
    probabilities = max(group_gaps(clf.predict_proba(batch)[:, 1], batch).values())
    clf.set_params(constrain="logit")  # not refitted: its layer still acts on probabilities
    assert -demographic_parity_scorer(clf, batch, None) == pytest.approx(probabilities,
                                                                         abs=1e-12)
