"""Plots of the accuracy/fairness trade-off, group distributions and training history.

matplotlib is optional (``pip install "skfair[plot]"``). Every function returns its matplotlib
object and never calls ``plt.show()``.
"""

import numpy as np
import pandas as pd
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline

from .metrics import protected_columns

__all__ = ["plot_tradeoff", "plot_group_distributions", "plot_training_history"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "skfair.plotting needs matplotlib: pip install \"skfair[plot]\""
        ) from None
    return plt


def plot_tradeoff(results, score="accuracy", gap="dp", param="epsilon", ax=None):
    """Cross-validated score against fairness gap, one point per candidate.

    Parameters
    ----------
    results : fitted GridSearchCV / RandomizedSearchCV, its ``cv_results_``, or a DataFrame
        With columns ``mean_test_<score>`` and ``mean_test_<gap>`` (skfair's fairness scorers
        store the negative gap, which is turned back into the gap).
    score, gap : str, default="accuracy", "dp"
        Keys of the scoring dict.
    param : str, default="epsilon"
        Parameter whose value labels each point (``param_<param>``); ignored when absent.
    ax : matplotlib Axes, default=None

    Returns
    -------
    ax : matplotlib Axes
        Points for all candidates and a line through the Pareto front (no other candidate is
        both fairer and more accurate).
    """
    plt = _pyplot()
    cv = getattr(results, "cv_results_", results)
    frame = pd.DataFrame(cv)
    for key in (f"mean_test_{score}", f"mean_test_{gap}"):
        if key not in frame:
            raise ValueError(f"results have no column {key!r}.")
    gaps = -frame[f"mean_test_{gap}"].to_numpy(dtype=float)
    scores = frame[f"mean_test_{score}"].to_numpy(dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(gaps, scores, color="tab:blue", label="candidates", zorder=2)
    front = _pareto_front(gaps, scores)
    ax.plot(gaps[front], scores[front], color="tab:red", marker="o", label="Pareto front",
            zorder=3)
    labels = frame.get(f"param_{param}")
    if labels is not None:
        for x, y, value in zip(gaps, scores, labels):
            ax.annotate(f"{param}={value}", (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    ax.set_xlabel(f"fairness gap ({gap})")
    ax.set_ylabel(score)
    ax.legend()
    return ax


def _pareto_front(gaps, scores):
    """Indices of the non-dominated points, by increasing gap."""
    order = np.lexsort((-scores, gaps))
    front, best = [], -np.inf
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return np.array(front, dtype=int)


def plot_group_distributions(estimator, X, attribute=None, bins=30):
    """Per-group histograms of the predictions before and after the fairness layer.

    Parameters
    ----------
    estimator : fitted FairNeuralClassifier, FairNeuralRegressor or Pipeline ending in one
    X : DataFrame or array-like
        Input of the estimator.
    attribute : str, default=None
        Protected attribute to split by; the first one by default.
    bins : int, default=30

    Returns
    -------
    fig : matplotlib Figure
        Two axes, "before" (the network's outputs) and "after" (the fair predictions), with one
        histogram per group.
    """
    plt = _pyplot()
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    inputs = estimator[:-1].transform(X) if isinstance(estimator, Pipeline) else X
    before = final._predict_unconstrained(inputs)
    after = (estimator.predict_proba(X)[:, 1] if is_classifier(estimator)
             else estimator.predict(X))
    sensitive = protected_columns(estimator, X)
    attribute = sensitive.columns[0] if attribute is None else attribute
    if attribute not in sensitive:
        raise ValueError(f"attribute must be one of {list(sensitive.columns)}; got "
                         f"{attribute!r}.")
    groups = sensitive[attribute].to_numpy()
    edges = np.histogram_bin_edges(np.concatenate([before, after]), bins=bins)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, values, title in zip(axes, (before, after), ("before the layer", "after the layer")):
        for value in sorted(pd.unique(groups), key=str):
            m = groups == value
            ax.hist(values[m], bins=edges, alpha=0.5, density=True,
                    label=f"{attribute}={value} (mean {values[m].mean():.3f})")
        ax.set_title(title)
        ax.set_xlabel("prediction")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density")
    return fig


def plot_training_history(estimator):
    """Training loss and fairness gap per epoch.

    Parameters
    ----------
    estimator : fitted FairNeuralClassifier, FairNeuralRegressor or Pipeline ending in one

    Returns
    -------
    fig : matplotlib Figure
        Left: training (and validation) loss; right: the gap of the network's outputs before the
        layer (and the validation gap after it), when the estimator has protected attributes.
    """
    plt = _pyplot()
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    history = pd.DataFrame(final.history_)
    fig, (loss_ax, gap_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_ax.plot(history["epoch"], history["train_loss"], label="train loss")
    if history["val_loss"].notna().any():
        loss_ax.plot(history["epoch"], history["val_loss"], label="validation loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend()
    if history["train_gap"].notna().any():
        gap_ax.plot(history["epoch"], history["train_gap"], label="train gap (before layer)")
    if history["val_gap"].notna().any():
        gap_ax.plot(history["epoch"], history["val_gap"], label="validation gap")
    if getattr(final, "constraint_", None) is not None:
        gap_ax.axhline(final.epsilon, color="gray", linestyle="--", label="epsilon")
    gap_ax.set_xlabel("epoch")
    gap_ax.legend()
    return fig
