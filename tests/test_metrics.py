"""Fairness metrics against hand computations and fairlearn; scorers in model selection."""

import numpy as np
import pandas as pd
import pytest
import sklearn
from conftest import biased_frame
from fairlearn import metrics as fl
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skfair import FairNeuralClassifier, FairNeuralRegressor
from skfair import metrics as skfair_metrics
from skfair.metrics import (
    demographic_parity_difference,
    demographic_parity_ratio,
    demographic_parity_scorer,
    equal_opportunity_difference,
    equalized_odds_difference,
    equalized_odds_scorer,
    fair_refit,
    fairness_report,
    false_positive_rate_difference,
    four_fifths_scorer,
    make_fairness_scorer,
    mean_residual_difference,
    mean_residual_scorer,
    selection_rate_scorer,
)

FAST = dict(hidden_layer_sizes=(8,), max_epochs=5, batch_size=128, learning_rate=0.01,
            random_state=0)


def test_hand_computed_values():
    groups = ["a", "a", "b", "b", "c", "c"]
    y_pred = [1, 1, 0, 1, 0, 0]
    assert demographic_parity_difference(None, y_pred, sensitive_features=groups) == 1.0
    y_true = [1, 0, 1, 0, 1, 0]
    # Within Y=1: a 1, b 0, c 0; within Y=0: a 1, b 1, c 0.
    assert equalized_odds_difference(y_true, y_pred, sensitive_features=groups) == 1.0
    assert equal_opportunity_difference(y_true, y_pred, sensitive_features=groups) == 1.0
    # Probabilities: mean-score parity, no thresholding.
    proba = [0.9, 0.7, 0.6, 0.6, 0.5, 0.3]
    assert demographic_parity_difference(None, proba, sensitive_features=groups) == \
        pytest.approx(0.4)
    resid = mean_residual_difference([1.0, 1.0, 2.0, 2.0, 0.0, 0.0],
                                     [1.5, 1.5, 2.0, 1.8, 0.0, 0.2], sensitive_features=groups)
    assert resid == pytest.approx(0.5)


@pytest.mark.parametrize("n_groups", [2, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_equal_to_fairlearn_on_labels(n_groups, weighted):
    rng = np.random.default_rng(n_groups)
    n = 500
    groups = rng.choice(list("abc")[:n_groups], n)
    y_true = rng.integers(0, 2, n)
    y_pred = (rng.uniform(size=n) < 0.3 + 0.3 * (groups == "a")).astype(int)
    w = rng.uniform(0.5, 2, n) if weighted else None
    kw = dict(sensitive_features=groups, sample_weight=w)
    assert demographic_parity_difference(y_true, y_pred, **kw) == pytest.approx(
        fl.demographic_parity_difference(y_true, y_pred, **kw))
    assert equalized_odds_difference(y_true, y_pred, **kw) == pytest.approx(
        fl.equalized_odds_difference(y_true, y_pred, **kw))
    assert equal_opportunity_difference(y_true, y_pred, **kw) == pytest.approx(
        fl.equal_opportunity_difference(y_true, y_pred, **kw))


def test_fairlearn_returns_zero_on_probabilities_we_do_not():
    groups = np.array(["a", "a", "b", "b"])
    proba = np.array([0.9, 0.8, 0.2, 0.1])
    y_true = np.zeros(4)
    assert fl.demographic_parity_difference(y_true, proba, sensitive_features=groups) == 0.0
    assert demographic_parity_difference(None, proba, sensitive_features=groups) == \
        pytest.approx(0.7)


def test_several_attributes_crossed_by_default_or_each_on_its_own():
    frame = pd.DataFrame({"sex": ["F", "F", "M", "M"], "race": ["x", "y", "x", "y"]})
    y_pred = [0.1, 0.2, 0.5, 0.9]
    # fairlearn's semantics by default: the crossed cells (here one sample each)
    assert demographic_parity_difference(None, y_pred, sensitive_features=frame) == \
        pytest.approx(0.8)
    # each attribute on its own, the largest gap (what a marginal model constrains)
    assert demographic_parity_difference(None, y_pred, sensitive_features=frame,
                                         intersectional=False) == pytest.approx(max(0.55, 0.25))
    assert demographic_parity_difference(None, y_pred, sensitive_features=frame.to_numpy(),
                                         intersectional=False) == pytest.approx(0.55)


@pytest.mark.parametrize("metric", ["demographic_parity_difference", "equalized_odds_difference",
                                    "false_positive_rate_difference",
                                    "demographic_parity_ratio"])
def test_two_sensitive_features_equal_fairlearn_on_labels(metric):
    rng = np.random.default_rng(7)
    y, labels = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    frame = pd.DataFrame({"a": rng.choice(["p", "q"], 400), "b": rng.choice(["r", "s", "t"], 400)})
    ours = getattr(skfair_metrics, metric)(y, labels, sensitive_features=frame)
    assert ours == pytest.approx(getattr(fl, metric)(y, labels, sensitive_features=frame))


def test_string_labels_with_pos_label():
    y_true = np.array(["no", "yes", "no", "yes"])
    y_pred = np.array(["yes", "yes", "no", "no"])
    groups = ["a", "a", "b", "b"]
    assert equalized_odds_difference(y_true, y_pred, sensitive_features=groups) == 1.0
    assert equalized_odds_difference(y_true, y_pred, sensitive_features=groups,
                                     pos_label="no") == 1.0
    with pytest.raises(ValueError, match="binary labels"):
        equalized_odds_difference(["a", "b", "c", "a"], [0, 1, 0, 1], sensitive_features=groups)


@pytest.mark.parametrize("call, match", [
    (lambda: demographic_parity_difference(None, [1, 0, 1], sensitive_features=["a", "b"]),
     "sensitive_features has 2 samples"),
    (lambda: demographic_parity_difference(None, [1, np.nan], sensitive_features=["a", "b"]),
     "NaN"),
    (lambda: demographic_parity_difference(None, [1, 0], sensitive_features=["a", "a"]),
     "single value"),
    (lambda: demographic_parity_difference(None, [1, 0], sensitive_features=["a", None]),
     "missing values"),
    (lambda: equalized_odds_difference([1, 0, 1], [1, 0], sensitive_features=["a", "b"]),
     "y_true has 3 samples"),
    (lambda: demographic_parity_difference(None, [1, 0], sensitive_features=["a", "b"],
                                           sample_weight=[1.0]), "sample_weight has 1"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_scorers_in_grid_search_with_fair_refit():
    X, y = biased_frame(800)
    search = GridSearchCV(
        FairNeuralClassifier(protected_attributes=["sex", "race"], **FAST),
        {"epsilon": [0.02, 0.3], "b_tau": [50, 1000]},
        scoring={"accuracy": "accuracy", "dp": demographic_parity_scorer,
                 "eo": equalized_odds_scorer},
        refit=fair_refit(0.05, score="accuracy", gap="dp"), cv=2)
    search.fit(X, y)
    gaps = -search.cv_results_["mean_test_dp"]
    assert (gaps >= 0).all()
    # Folds of 400 rows >= b_tau=50 are projected exactly: their gap is within epsilon.
    exact = (search.cv_results_["param_epsilon"] == 0.02) & \
        (search.cv_results_["param_b_tau"] == 50)
    assert gaps[exact].max() <= 0.02 + 1e-6
    assert gaps[search.best_index_] <= 0.05
    with pytest.raises(ValueError, match="No candidate"):
        fair_refit(-1.0)(search.cv_results_)


def test_scorer_on_a_pipeline_and_in_cross_validate():
    X, y = biased_frame(600)
    pipe = make_pipeline(FunctionTransformer(lambda d: d.assign(x1=2 * d["x1"])),
                         FairNeuralClassifier(protected_attributes=["sex", "race"], **FAST))
    scores = cross_validate(pipe, X, y, cv=2, scoring={"dp": demographic_parity_scorer})
    assert (-scores["test_dp"] <= 0.05 + 1e-6).all()
    pipe.fit(X, y)
    proba = pipe.predict_proba(X)[:, 1]
    # the scorer reads the model's setting (marginal): the gap it constrains
    expected = demographic_parity_difference(y, proba, sensitive_features=X[["sex", "race"]],
                                             intersectional=False)
    assert demographic_parity_scorer(pipe, X, y) == pytest.approx(-expected)
    assert demographic_parity_difference(y, proba, sensitive_features=X[["sex", "race"]]) > \
        expected  # the crossed groups, not constrained, differ more
    crossed = make_pipeline(FunctionTransformer(lambda d: d.assign(x1=2 * d["x1"])),
                            FairNeuralClassifier(protected_attributes=["sex", "race"],
                                                 intersectional=True, **FAST)).fit(X, y)
    assert demographic_parity_scorer(crossed, X, y) == pytest.approx(-demographic_parity_difference(
        y, crossed.predict_proba(X)[:, 1], sensitive_features=X[["sex", "race"]]))


def test_regressor_scorer():
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=300), "g": rng.choice(["a", "b"], 300)})
    y = X["x"] + (X["g"] == "b")
    reg = FairNeuralRegressor(protected_attributes=["g"], **FAST).fit(X, y)
    expected = mean_residual_difference(y, reg.predict(X), sensitive_features=X["g"])
    assert mean_residual_scorer(reg, X, y) == pytest.approx(-expected)
    assert make_fairness_scorer("demographic_parity", greater_is_better=True)(reg, X, y) >= 0


def test_metadata_routing_for_other_estimators():
    X, y = biased_frame(400)
    numeric = X[["x1", "x2"]]
    scorer = make_fairness_scorer("demographic_parity").set_score_request(
        sensitive_features=True)
    with sklearn.config_context(enable_metadata_routing=True):
        scores = cross_validate(LogisticRegression(), numeric, y, cv=2, scoring={"dp": scorer},
                                params={"sensitive_features": X["sex"]})
    assert (scores["test_dp"] < 0).all()
    with pytest.raises(ValueError, match="no protected_attributes"):
        demographic_parity_scorer(LogisticRegression().fit(numeric, y), numeric, y)


def test_fairness_report_classifier_and_regressor():
    X, y = biased_frame(500)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], **FAST).fit(X, y)
    report = fairness_report(clf, X, y)
    assert list(report.columns) == ["count", "mean prediction", "selection rate", "accuracy",
                                    "TPR", "FPR"]
    labels = (clf.predict(X) == clf.classes_[1]).astype(float)
    assert report.loc[("race", "summary", "ratio"), "selection rate"] == pytest.approx(
        fl.demographic_parity_ratio(y, labels, sensitive_features=X["race"]))
    assert report.loc[("sex", "summary", "gap"), "selection rate"] == pytest.approx(
        fl.demographic_parity_difference(y, labels, sensitive_features=X["sex"]))
    assert report.xs("group", level="kind").loc["sex", "count"].sum() == 500
    proba = clf.predict_proba(X)[:, 1]
    assert report.loc[("sex", "summary", "gap"), "mean prediction"] == pytest.approx(
        demographic_parity_difference(y, proba, sensitive_features=X["sex"]))
    assert "gap" in str(report)
    rng = np.random.default_rng(0)
    Xr = pd.DataFrame({"x": rng.normal(size=200), "g": rng.choice(["a", "b"], 200)})
    yr = Xr["x"] + (Xr["g"] == "b")
    reg = FairNeuralRegressor(protected_attributes=["g"], **FAST).fit(Xr, yr)
    rep = fairness_report(reg, Xr, yr)
    assert list(rep.columns) == ["count", "mean prediction", "MSE", "mean residual"]
    assert rep.loc[("g", "summary", "gap"), "mean residual"] == pytest.approx(
        mean_residual_difference(yr, reg.predict(Xr), sensitive_features=Xr["g"]))


@pytest.mark.parametrize("n_groups", [2, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_demographic_parity_ratio_equals_fairlearn_on_labels(n_groups, weighted):
    rng = np.random.default_rng(n_groups)
    labels = rng.integers(0, 2, 300)
    groups = rng.integers(0, n_groups, 300)
    weight = rng.uniform(0.5, 2.0, 300) if weighted else None
    assert demographic_parity_ratio(None, labels, sensitive_features=groups,
                                    sample_weight=weight) == pytest.approx(
        fl.demographic_parity_ratio(labels, labels, sensitive_features=groups,
                                    sample_weight=weight))


def test_demographic_parity_ratio_edge_cases():
    # several attributes: the smallest ratio of any attribute on its own
    frame = pd.DataFrame({"a": ["x", "x", "y", "y"], "b": ["u", "v", "u", "v"]})
    assert demographic_parity_ratio(None, [1, 1, 1, 0], sensitive_features=frame,
                                    intersectional=False) == 0.5
    assert demographic_parity_ratio(None, [1, 1, 1, 0], sensitive_features=frame) == 0.0
    assert demographic_parity_ratio(None, [0, 0, 0, 0], sensitive_features=frame) == 1.0
    with pytest.raises(ValueError, match="non-negative"):
        demographic_parity_ratio(None, [1, -1, 0, 0], sensitive_features=frame)


def test_label_scorers_read_the_decisions():
    """selection_rate_scorer and four_fifths_scorer score the predicted labels; with the label
    guarantee the selection-rate gap is within epsilon, unlike the scores' scorer's view."""
    X, y = biased_frame(600)
    clf = FairNeuralClassifier(protected_attributes=["sex"], epsilon=0.03, guarantee="labels",
                               **FAST).fit(X.drop(columns="race"), y)
    Xs = X.drop(columns="race")
    labels = (clf.predict(Xs) == clf.classes_[1]).astype(float)
    assert selection_rate_scorer(clf, Xs, y) == pytest.approx(
        -fl.demographic_parity_difference(y, labels, sensitive_features=X["sex"]))
    assert selection_rate_scorer(clf, Xs, y) >= -0.03
    assert four_fifths_scorer(clf, Xs, y) == pytest.approx(
        fl.demographic_parity_ratio(y, labels, sensitive_features=X["sex"]))
    with pytest.raises(ValueError, match="response"):
        make_fairness_scorer("demographic_parity", response="decisions")


@pytest.mark.parametrize("weighted", [False, True])
def test_false_positive_rate_difference_equals_fairlearn_on_labels(weighted):
    rng = np.random.default_rng(3)
    y, labels, groups = rng.integers(0, 2, 300), rng.integers(0, 2, 300), rng.integers(0, 3, 300)
    weight = rng.uniform(0.5, 2.0, 300) if weighted else None
    assert false_positive_rate_difference(y, labels, sensitive_features=groups,
                                          sample_weight=weight) == pytest.approx(
        fl.false_positive_rate_difference(y, labels, sensitive_features=groups,
                                          sample_weight=weight))


@pytest.mark.parametrize("n_features", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_error_rate_difference_equals_fairlearn_zero_one_loss(n_features, weighted):
    rng = np.random.default_rng(11)
    y, labels = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    frame = pd.DataFrame({"a": rng.choice(["p", "q", "r"], 300), "b": rng.choice(["s", "t"], 300)})
    sensitive = frame.iloc[:, :n_features]
    weight = rng.uniform(0.5, 2.0, 300) if weighted else None
    assert skfair_metrics.error_rate_difference(
        y, labels, sensitive_features=sensitive, sample_weight=weight) == pytest.approx(
        fl.zero_one_loss_difference(y, labels, sensitive_features=sensitive,
                                    sample_weight=weight))


def test_scorers_report_and_plots_through_a_pipeline_with_numpy_output():
    """Protected columns given by position in a Pipeline whose preprocessing outputs a numpy
    array: the scorers, the report and the group plot read them from the last step's input,
    as the estimator does, and agree with numpy group means."""
    from sklearn.compose import ColumnTransformer
    from sklearn.model_selection import cross_validate
    from sklearn.preprocessing import StandardScaler

    from skfair.metrics import fairness_report
    from skfair.plotting import plot_group_distributions

    X, y = biased_frame(600)
    prep = ColumnTransformer([("num", StandardScaler(), ["x1", "x2"])], remainder="passthrough")
    pipe = make_pipeline(prep, FairNeuralClassifier(protected_attributes=[2, 3], **FAST))
    scores = cross_validate(pipe, X, y, cv=2, scoring={"dp": demographic_parity_scorer})
    assert np.isfinite(scores["test_dp"]).all() and (-scores["test_dp"] <= 0.05 + 1e-6).all()
    pipe.fit(X, y)
    proba = pipe.predict_proba(X)[:, 1]
    sex = X["sex"].to_numpy()
    gap = abs(proba[sex == "M"].mean() - proba[sex == "F"].mean())
    report = fairness_report(pipe, X, y)
    assert report.loc[("2", "summary", "gap"), "mean prediction"] == pytest.approx(gap)
    assert set(report.index.get_level_values("attribute")) == {"2", "3"}
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    figure = plot_group_distributions(pipe, X)
    assert len(figure.axes) == 2


def test_fairness_report_of_any_model_with_sensitive_features():
    """A baseline that is not a skfair estimator is reported with sensitive_features; the
    figures are numpy group statistics; counts are integers."""
    X, y = biased_frame(600)
    baseline = LogisticRegression().fit(X[["x1", "x2"]], y)
    report = fairness_report(baseline, X[["x1", "x2"]], y, sensitive_features=X["sex"])
    proba = baseline.predict_proba(X[["x1", "x2"]])[:, 1]
    label = baseline.predict(X[["x1", "x2"]])
    for g in ("F", "M"):
        m = (X["sex"] == g).to_numpy()
        assert report.loc[("sex", "group", g), "count"] == m.sum()
        assert report.loc[("sex", "group", g), "mean prediction"] == pytest.approx(proba[m].mean())
        assert report.loc[("sex", "group", g), "selection rate"] == pytest.approx(label[m].mean())
    assert str(report["count"].dtype) == "Int64"
    assert pd.isna(report.loc[("sex", "summary", "gap"), "count"])
    with pytest.raises(ValueError, match="has neither|protected_attributes"):
        fairness_report(baseline, X[["x1", "x2"]], y)
    with pytest.raises(ValueError, match="sensitive_features has 5 samples but y has 600"):
        fairness_report(baseline, X[["x1", "x2"]], y, sensitive_features=X["sex"][:5])


@pytest.mark.parametrize("summary", ["gap", "ratio"])
def test_a_group_named_like_a_summary_row_keeps_its_own_row(summary):
    """The report's kind level keeps a group called "gap" or "ratio" apart from the summary rows
    of that name: both rows are there, each with its own figures."""
    X, y = biased_frame(600)
    baseline = LogisticRegression().fit(X[["x1", "x2"]], y)
    groups = X["sex"].map({"F": summary, "M": "other"}).rename("sex")
    report = fairness_report(baseline, X[["x1", "x2"]], y, sensitive_features=groups)
    assert report.index.names == ["attribute", "kind", "name"]
    assert report.index.is_unique
    proba = baseline.predict_proba(X[["x1", "x2"]])[:, 1]
    named = (groups == summary).to_numpy()
    group_row = report.loc[("sex", "group", summary)]
    assert group_row["count"] == named.sum()
    assert group_row["mean prediction"] == pytest.approx(proba[named].mean())
    assert pd.isna(report.loc[("sex", "summary", summary), "count"])
    gap = abs(proba[named].mean() - proba[~named].mean())
    assert report.loc[("sex", "summary", "gap"), "mean prediction"] == pytest.approx(gap)
    per_group = report.xs("group", level="kind")
    assert list(per_group.index) == sorted([("sex", summary), ("sex", "other")])
    assert list(report.xs("summary", level="kind").index) == [("sex", "gap"), ("sex", "ratio")]
