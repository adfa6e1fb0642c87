"""Plots run headless and draw what they say."""

import sys

import matplotlib
import numpy as np
import pytest
from conftest import biased_frame
from sklearn.model_selection import GridSearchCV

from skfair import FairNeuralClassifier
from skfair.metrics import demographic_parity_scorer
from skfair.plotting import plot_group_distributions, plot_tradeoff, plot_training_history

matplotlib.use("Agg")
FAST = dict(hidden_layer_sizes=(8,), max_epochs=4, batch_size=128, learning_rate=0.01,
            random_state=0)


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


def test_group_distributions_and_history():
    X, y = biased_frame(400)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], **FAST).fit(X, y)
    fig = plot_group_distributions(clf, X, attribute="race")
    before, after = fig.axes
    assert before.get_title() == "before the layer" and len(before.patches) == 2 * 30
    assert len(after.get_legend().get_texts()) == 2
    with pytest.raises(ValueError, match="attribute must be one of"):
        plot_group_distributions(clf, X, attribute="age")
    fig = plot_training_history(clf)
    loss_ax, gap_ax = fig.axes
    assert len(loss_ax.lines) == 1 and len(loss_ax.lines[0].get_xdata()) == 4
    assert len(gap_ax.lines) == 2  # gap before the layer and epsilon


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"skfair\[plot\]"):
        plot_tradeoff({"mean_test_accuracy": [1.0], "mean_test_dp": [0.0]})
