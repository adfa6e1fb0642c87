"""Plots of the accuracy/fairness trade-off, group distributions and training history.

matplotlib is optional (``pip install "skfair[plot]"``). Every function returns its matplotlib
object and never calls ``plt.show()``. Figures the functions create use matplotlib's
constrained layout, so that no label is cut off.
"""

import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline

from .classifier import FairNeuralClassifier
from .metrics import protected_columns
from .regressor import FairNeuralRegressor

if TYPE_CHECKING:  # names of annotations only: matplotlib is optional, imported when drawing
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

__all__ = ["plot_tradeoff", "plot_group_distributions", "plot_training_history"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "skfair.plotting needs matplotlib: pip install \"skfair[plot]\""
        ) from None
    return plt


def plot_tradeoff(
        results: "GridSearchCV | RandomizedSearchCV | Mapping[str, ArrayLike] | pd.DataFrame",
        score: str = "accuracy", gap: str = "dp", param: str = "epsilon",
        baseline: tuple[float, float] | None = None, ax: "Axes | None" = None) -> "Axes":
    """Cross-validated score against fairness gap, one point per candidate.

    Parameters
    ----------
    results : fitted GridSearchCV / RandomizedSearchCV, its ``cv_results_``, or a DataFrame
        With columns ``mean_test_<score>`` and ``mean_test_<gap>`` (skfair's fairness scorers
        store the negative gap, which is turned back into the gap). A fitted search with a
        refit choice (``best_index_``, also from a callable ``refit`` such as
        :func:`skfair.metrics.fair_refit`) has that candidate marked.
    score, gap : str, default="accuracy", "dp"
        Keys of the scoring dict.
    param : str, default="epsilon"
        Parameter whose value labels each point: the column ``param_<param>``, or else the
        one column ``param_<step>__<param>`` of a search over a Pipeline. Points are not
        labelled when no column matches.
    baseline : tuple of two floats, default=None
        ``(gap, score)`` of the unconstrained model (the gap itself, not a scorer's negative
        value), drawn as its own point: how far it lies above the candidates is the price of
        fairness.
    ax : matplotlib Axes, default=None

    Returns
    -------
    ax : matplotlib Axes
        Points for all candidates and a line through the Pareto front (no other candidate is
        both fairer and more accurate).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from skfair.plotting import plot_tradeoff
    >>> cv_results = {"mean_test_accuracy": [0.80, 0.75], "mean_test_dp": [-0.10, -0.02],
    ...               "param_epsilon": [0.1, 0.02]}
    >>> ax = plot_tradeoff(cv_results, baseline=(0.25, 0.84))
    >>> [text.get_text() for text in ax.get_legend().get_texts()]
    ['candidates', 'Pareto front', 'unconstrained model']
    """
    plt = _pyplot()
    cv = getattr(results, "cv_results_", results)
    frame = pd.DataFrame(cv)
    for key in (f"mean_test_{score}", f"mean_test_{gap}"):
        if key not in frame:
            raise ValueError(f"results have no column {key!r}.")
    labels = _param_column(frame, param)
    if baseline is not None:
        baseline = _baseline_point(baseline)
    gaps = -frame[f"mean_test_{gap}"].to_numpy(dtype=float)
    scores = frame[f"mean_test_{score}"].to_numpy(dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.2), layout="constrained")
    ax.scatter(gaps, scores, color="tab:blue", label="candidates", zorder=2)
    front = _pareto_front(gaps, scores)
    ax.plot(gaps[front], scores[front], color="tab:red", marker="o", label="Pareto front",
            zorder=3)
    best = getattr(results, "best_index_", None)
    if best is not None:
        ax.scatter(gaps[best], scores[best], marker="*", s=260, facecolor="gold",
                   edgecolor="black", label="refit choice", zorder=4)
    if baseline is not None:
        ax.scatter(*baseline, marker="X", s=90, color="black", label="unconstrained model",
                   zorder=4)
    if labels is not None:
        # below and right of their points: away from the rising Pareto front
        name = param.rsplit("__", 1)[-1]
        for x, y, value in zip(gaps, scores, labels):
            if not pd.isna(value):
                ax.annotate(f"{name}={_format(value)}", (x, y), textcoords="offset points",
                            xytext=(8, -6), va="top", fontsize=8)
    ax.margins(0.15)  # room for the labels of the outermost points
    ax.set_xlabel(f"{gap} gap (lower is fairer)")
    ax.set_ylabel(f"{score} (higher is better)")
    ax.legend(fontsize=8)
    return ax


def _param_column(frame, param):
    """The ``param_`` column of ``param``, given whole or as the last part of a Pipeline step's
    parameter; None when there is none."""
    if f"param_{param}" in frame:
        return frame[f"param_{param}"]
    matches = [c for c in frame.columns if c.startswith("param_") and c.endswith(f"__{param}")]
    if len(matches) > 1:
        names = [c[len("param_"):] for c in matches]
        raise ValueError(f"param={param!r} is a parameter of several steps: {names}; pass the "
                         f"one to label the points with, e.g. param={names[0]!r}.")
    return frame[matches[0]] if matches else None


def _baseline_point(baseline):
    message = (f"baseline must be the unconstrained model's (gap, score), two finite numbers "
               f"with gap >= 0; got {baseline!r}.")
    try:
        point = np.asarray(baseline, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if point.shape != (2,) or not np.isfinite(point).all():
        raise ValueError(message)
    if point[0] < 0:
        raise ValueError(message + " Pass the gap itself, not a fairness scorer's negative "
                                   "value.")
    return point


def _format(value):
    return f"{value:g}" if isinstance(value, numbers.Real) else str(value)


def _pareto_front(gaps, scores):
    """Indices of the non-dominated points, by increasing gap."""
    order = np.lexsort((-scores, gaps))
    front, best = [], -np.inf
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return np.array(front, dtype=int)


def plot_group_distributions(estimator: FairNeuralClassifier | FairNeuralRegressor | Pipeline,
                             X: ArrayLike, attribute: str | None = None,
                             bins: int = 30) -> "Figure":
    """Per-group histograms of the predictions before and after the fairness layer.

    Parameters
    ----------
    estimator : fitted FairNeuralClassifier, FairNeuralRegressor or Pipeline ending in one
        Fitted with ``protected_attributes``: their groups are what the histograms compare.
    X : DataFrame or array-like
        Input of the estimator.
    attribute : str, default=None
        Protected attribute to split by; the first one by default.
    bins : int, default=30

    Returns
    -------
    fig : matplotlib Figure
        Two axes, "before" (the network's outputs) and "after" (the fair predictions), with one
        histogram per group and a dashed line at its mean, on the scale the layer acts on (a
        classifier's probabilities, or its logits with ``constrain="logit"``). A constraint
        that needs true labels is enforced in training only: the second axes then shows the
        predictions, which do not go through the layer.
    """
    plt = _pyplot()
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    if getattr(final, "protected_attributes", None) is None:
        raise ValueError(
            f"plot_group_distributions compares the groups of the protected attributes, and "
            f"this {type(final).__name__} has protected_attributes=None: fit it with "
            f"protected_attributes set to the columns of the groups.")
    sensitive = protected_columns(estimator, X)
    attribute = sensitive.columns[0] if attribute is None else attribute
    if attribute not in sensitive:
        raise ValueError(f"attribute must be one of {list(sensitive.columns)}; got "
                         f"{attribute!r}.")
    inputs = estimator[:-1].transform(X) if isinstance(estimator, Pipeline) else X
    before = final._predict_unconstrained(inputs)
    after = final._predict_values(inputs)  # on the scale of ``before``: the layer's
    scale = "prediction"
    if is_classifier(final):
        scale = (f"{'logit' if final._on_logits() else 'predicted probability'} of class "
                 f"{final.classes_[1]}")
    groups = sensitive[attribute].to_numpy()
    edges = np.histogram_bin_edges(np.concatenate([before, after]), bins=bins)
    after_title = "after the layer"
    if final.constraint_.requires_y_true:
        after_title = f"as predicted (no layer: {_constraint_name(final)} needs labels)"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="constrained")
    for ax, values, title in zip(axes, (before, after), ("before the layer", after_title)):
        for i, value in enumerate(sorted(pd.unique(groups), key=str)):
            m = groups == value
            mean = values[m].mean()
            ax.hist(values[m], bins=edges, density=True, histtype="step", linewidth=1.6,
                    color=f"C{i}", label=f"{attribute}={value} (mean {mean:.3f})")
            ax.axvline(mean, color=f"C{i}", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel(scale)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("density")
    fig.suptitle(f"Predictions by {attribute} (dashed: group means)")
    return fig


def _constraint_name(final):
    constraint = final.constraint_
    return getattr(constraint, "name", type(constraint).__name__).replace("_", " ")


def plot_training_history(
        estimator: FairNeuralClassifier | FairNeuralRegressor | Pipeline) -> "Figure":
    """Training loss and fairness gap per epoch.

    Parameters
    ----------
    estimator : fitted FairNeuralClassifier, FairNeuralRegressor or Pipeline ending in one

    Returns
    -------
    fig : matplotlib Figure
        Left: training (and validation) loss. Right, when the estimator has protected
        attributes: the gap of the network's outputs before the layer and of the training
        outputs after it (``train_fair_gap``), and with early stopping
        the gap of the validation split's predictions, which the title describes (its
        ``val_regime``): the split is predicted as one batch, projected exactly when it has at
        least ``b_tau`` rows and otherwise given one step of the stream (whose gap may exceed
        epsilon); a constraint that needs true labels does not apply at prediction at all.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    history = pd.DataFrame(final.history_)
    constrained = final.constraint_ is not None
    fig, axes = plt.subplots(1, 2 if constrained else 1, figsize=(11 if constrained else 5.5, 4),
                             layout="constrained", squeeze=False)
    loss_ax = axes[0, 0]
    loss_ax.plot(history["epoch"], history["train_loss"],
                 label="train: loss after the layer" if constrained else "train: loss")
    if constrained and final.distortion_penalty > 0:
        loss_ax.plot(history["epoch"], history["train_loss"] + history["train_penalty"],
                     linestyle=":", label="train: + distortion penalty (minimised)")
    if history["val_loss"].notna().any():
        loss_ax.plot(history["epoch"], history["val_loss"], label="validation: loss as predicted")
    loss_ax.set_ylabel("log loss" if is_classifier(final) else "squared error (scaled target)")
    panels = [loss_ax]
    if constrained:
        gap_ax = axes[0, 1]
        gap_ax.plot(history["epoch"], history["train_gap"],
                    label="train: network outputs before the layer")
        gap_ax.plot(history["epoch"], history["train_fair_gap"], linestyle=":",
                    label="train: after the layer")
        if history["val_gap"].notna().any():
            # (the last epoch that had a validation split: a later warm start may have none)
            regime = history["val_regime"].dropna().iloc[-1]
            label, regime = _validation_gap_regime(final, regime)
            gap_ax.plot(history["epoch"], history["val_gap"], label=label)
            gap_ax.set_title(regime, fontsize=9)
        gap_ax.axhline(final.epsilon, color="gray", linestyle="--",
                       label=f"epsilon = {final.epsilon:g}")
        gap_ax.set_ylabel(f"{_constraint_name(final)} gap")
        panels.append(gap_ax)
    for ax in panels:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    return fig


def _validation_gap_regime(final, regime):
    """The legend label of the validation gap of ``history_`` and the panel's title, which
    says how the split was predicted (``regime``, its ``val_regime``; see
    skfair._training.evaluate)."""
    if regime == "unconstrained":
        return ("validation: as predicted (no layer)",
                f"{_constraint_name(final)} needs labels: predictions skip the layer")
    if regime == "stream":
        return ("validation: one stream step",
                f"validation split under b_tau={final.b_tau} rows: one step of the stream,\n"
                f"whose gap may exceed epsilon (the stream bounds its average)")
    if regime == "exact":
        return ("validation: exact projection",
                f"validation split of at least b_tau={final.b_tau} rows: projected exactly")
    raise ValueError(f"history_ records an unknown validation regime {regime!r}.")
