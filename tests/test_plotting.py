"""Plots run headless and draw what they say."""

import sys

import matplotlib
import numpy as np
import pytest
from conftest import biased_frame
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skfair import FairNeuralClassifier
from skfair.metrics import demographic_parity_scorer, fair_refit
from skfair.plotting import plot_group_distributions, plot_tradeoff, plot_training_history

matplotlib.use("Agg")
FAST = dict(hidden_layer_sizes=(8,), max_epochs=4, batch_size=128, learning_rate=0.01,
            random_state=0)


def legend_texts(ax):
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def test_plot_tradeoff_marks_the_pareto_front():
    cv_results = {
        "mean_test_accuracy": [0.80, 0.75, 0.70, 0.72],
        "mean_test_dp": [-0.20, -0.10, -0.02, -0.15],  # skfair scorers store -gap
        "param_epsilon": [0.2, 0.1, 0.02, 0.15],
    }
    ax = plot_tradeoff(cv_results)
    scatter, front = ax.collections[0], ax.lines[0]
    assert len(scatter.get_offsets()) == 4
    # (0.15, 0.72) is dominated by (0.10, 0.75): three points on the front.
    np.testing.assert_allclose(front.get_xdata(), [0.02, 0.10, 0.20])
    assert len(ax.texts) == 4 and ax.texts[0].get_text() == "epsilon=0.2"
    with pytest.raises(ValueError, match="mean_test_eo"):
        plot_tradeoff(cv_results, gap="eo")


def test_plot_tradeoff_from_a_search():
    X, y = biased_frame(400)
    search = GridSearchCV(FairNeuralClassifier(protected_attributes=["sex", "race"], **FAST),
                          {"epsilon": [0.02, 0.1, 0.3]}, cv=2, refit=False,
                          scoring={"accuracy": "accuracy", "dp": demographic_parity_scorer})
    ax = plot_tradeoff(search.fit(X, y))
    assert len(ax.collections[0].get_offsets()) == 3
    # refit=False: the search chose nothing, so nothing is marked
    assert "refit choice" not in legend_texts(ax)


def test_group_distributions_and_history():
    X, y = biased_frame(400)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], **FAST).fit(X, y)
    fig = plot_group_distributions(clf, X, attribute="race")
    before, after = fig.axes
    assert before.get_title() == "before the layer" and len(before.patches) == 2
    for outline in before.patches:  # one step outline per group over the 30 common bins
        assert len(np.unique(outline.get_xy()[:, 0])) == 30 + 1
    assert len(after.get_legend().get_texts()) == 2
    with pytest.raises(ValueError, match="attribute must be one of"):
        plot_group_distributions(clf, X, attribute="age")
    fig = plot_training_history(clf)
    loss_ax, gap_ax = fig.axes
    # the loss after the layer, and with the distortion penalty: 4 epochs each
    assert [len(line.get_xdata()) for line in loss_ax.lines] == [4, 4]
    np.testing.assert_allclose(loss_ax.lines[1].get_ydata(), clf.loss_curve_)
    assert len(gap_ax.lines) == 3  # gap before the layer, after it, and epsilon
    assert gap_ax.get_ylabel() == "demographic parity gap"


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"skfair\[plot\]"):
        plot_tradeoff({"mean_test_accuracy": [1.0], "mean_test_dp": [0.0]})


def test_no_text_is_cut_off_by_the_figure_edge():
    X, y = biased_frame(400)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], early_stopping=True,
                               **FAST).fit(X, y)
    cv_results = {"mean_test_accuracy": [0.80, 0.70], "mean_test_dp": [-0.20, -0.02],
                  "param_epsilon": [0.2, 0.02]}
    figures = [plot_tradeoff(cv_results, baseline=(0.3, 0.85)).figure,
               plot_group_distributions(clf, X), plot_training_history(clf)]
    for fig in figures:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        # everything drawn (labels, titles, tick labels, legends, annotations), in inches
        drawn, edge = fig.get_tightbbox(renderer), fig.bbox_inches
        assert edge.x0 <= drawn.x0 and drawn.x1 <= edge.x1, (drawn, edge)
        assert edge.y0 <= drawn.y0 and drawn.y1 <= edge.y1, (drawn, edge)
        labels = [label for ax in fig.axes for label in (ax.xaxis.label, ax.yaxis.label)
                  if label.get_text()]
        for label in labels:
            box = label.get_window_extent(renderer)
            assert fig.bbox.contains(*box.min) and fig.bbox.contains(*box.max), label


def test_plot_tradeoff_labels_points_with_a_pipeline_step_parameter():
    cv_results = {"mean_test_accuracy": [0.80, 0.70], "mean_test_dp": [-0.20, -0.02],
                  "param_fairneuralclassifier__epsilon": [0.2, 0.02]}
    ax = plot_tradeoff(cv_results)
    assert [t.get_text() for t in ax.texts] == ["epsilon=0.2", "epsilon=0.02"]
    ambiguous = dict(cv_results, param_smoother__epsilon=[1.0, 2.0])
    with pytest.raises(ValueError, match="fairneuralclassifier__epsilon.*smoother__epsilon"):
        plot_tradeoff(ambiguous)
    # the full name picks one of them
    ax = plot_tradeoff(ambiguous, param="smoother__epsilon")
    assert [t.get_text() for t in ax.texts] == ["epsilon=1", "epsilon=2"]


def test_plot_tradeoff_marks_the_refit_choice_of_a_search_over_a_pipeline():
    X, y = biased_frame(400)
    prep = ColumnTransformer([("num", StandardScaler(), ["x1", "x2"])],
                             remainder="passthrough").set_output(transform="pandas")
    pipe = make_pipeline(prep, FairNeuralClassifier(protected_attributes=["sex", "race"],
                                                    **FAST))
    search = GridSearchCV(pipe, {"fairneuralclassifier__epsilon": [0.02, 0.3]}, cv=2,
                          scoring={"accuracy": "accuracy", "dp": demographic_parity_scorer},
                          refit=fair_refit(0.3)).fit(X, y)
    ax = plot_tradeoff(search)
    assert [t.get_text() for t in ax.texts] == ["epsilon=0.02", "epsilon=0.3"]
    assert "refit choice" in legend_texts(ax)
    best = search.best_index_
    chosen = (-search.cv_results_["mean_test_dp"][best],
              search.cv_results_["mean_test_accuracy"][best])
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), [chosen])


def test_plot_tradeoff_draws_the_unconstrained_model():
    cv_results = {"mean_test_accuracy": [0.80, 0.70], "mean_test_dp": [-0.20, -0.02]}
    ax = plot_tradeoff(cv_results, baseline=(0.3, 0.85))
    assert "unconstrained model" in legend_texts(ax)
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), [[0.3, 0.85]])
    for bad in [(0.3,), ("high", 0.85), (0.3, np.nan)]:
        with pytest.raises(ValueError, match="baseline must be the unconstrained model"):
            plot_tradeoff(cv_results, baseline=bad)
    with pytest.raises(ValueError, match="not a fairness scorer's negative value"):
        plot_tradeoff(cv_results, baseline=(-0.3, 0.85))


def test_plots_of_an_estimator_without_protected_attributes():
    X, y = biased_frame(400)
    plain = FairNeuralClassifier(**FAST).fit(X[["x1", "x2"]], y)
    with pytest.raises(ValueError, match="protected_attributes=None: fit it with"):
        plot_group_distributions(plain, X[["x1", "x2"]])
    fig = plot_training_history(plain)  # the loss only: no empty gap panel
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "log loss"


@pytest.mark.parametrize("fairness, b_tau, legend, says, after", [
    # 400 rows: a validation split of 40 rows, under the default b_tau
    ("demographic_parity", 100, "validation: one stream step",
     ["under b_tau=100 rows", "one step of the stream"], "after the layer"),
    ("demographic_parity", 20, "validation: exact projection",
     ["at least b_tau=20 rows", "projected exactly"], "after the layer"),
    ("equalized_odds", 100, "validation: as predicted (no layer)",
     ["equalized odds needs labels", "skip the layer"],
     "as predicted (no layer: equalized odds needs labels)"),
])
def test_plots_say_what_the_predictions_went_through(fairness, b_tau, legend, says, after):
    X, y = biased_frame(400)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], fairness=fairness,
                               b_tau=b_tau, early_stopping=True, **FAST).fit(X, y)
    assert {r["val_regime"] for r in clf.history_} == (
        {"unconstrained"} if fairness == "equalized_odds" else
        {"stream" if b_tau > 40 else "exact"})
    loss_ax, gap_ax = plot_training_history(clf).axes
    assert legend in legend_texts(gap_ax)
    assert "train: after the layer" in legend_texts(gap_ax)
    assert all(part in gap_ax.get_title() for part in says)
    # the loss the history records (after the layer), and the objective with the penalty
    assert legend_texts(loss_ax)[:2] == ["train: loss after the layer",
                                         "train: + distortion penalty (minimised)"]
    assert plot_group_distributions(clf, X).axes[1].get_title() == after


def test_history_plot_names_the_regime_of_the_last_validated_epoch():
    """A warm start without a validation split appends epochs without one: the title still
    describes the split that was validated."""
    X, y = biased_frame(400)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], early_stopping=True,
                               warm_start=True, **FAST).fit(X, y)
    clf.set_params(early_stopping=False).fit(X, y)
    regimes = [r["val_regime"] for r in clf.history_]
    assert "stream" in regimes and regimes[-1] is None
    _, gap_ax = plot_training_history(clf).axes
    assert "one step of the stream" in gap_ax.get_title()
