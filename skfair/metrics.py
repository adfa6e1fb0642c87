"""Fairness metrics, scikit-learn scorers, a fair refit rule and a per-group report.

Every metric is the gap of the matching constraint of :mod:`skfair.constraints` (one definition,
:func:`skfair.constraints.constraint_gap`): the smallest ``epsilon`` the predictions satisfy.

Labels or scores? ``y_pred`` may be labels (0/1), probabilities or regression outputs; the metrics
compare **group means** of whatever they are given. On 0/1 labels demographic parity is then the
difference of selection rates (fairlearn's ``demographic_parity_difference``); on probabilities it
is mean-score parity, which is what skfair's layer constrains. fairlearn, given probabilities,
counts ``y_pred == 1`` and silently returns 0.0; these functions do not threshold anything.

Several sensitive columns: the functions named as fairlearn's compare the crossed groups by
default (``intersectional=True``, fairlearn's semantics); ``intersectional=False`` takes each
column on its own and the largest gap (what an estimator constrains by default). The scorers
use the estimator's own ``intersectional``, so a model is scored on the gap it constrains.
"""

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.pipeline import Pipeline
from sklearn.utils.metadata_routing import MetadataRequest

from ._validation import GroupEncoder, protected_frame
from .classifier import FairNeuralClassifier
from .constraints import constraint_gap, intersect_groups
from .layer import GUARANTEE_TOL

__all__ = [
    "demographic_parity_difference",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "false_positive_rate_difference",
    "error_rate_difference",
    "mean_residual_difference",
    "demographic_parity_ratio",
    "make_fairness_scorer",
    "demographic_parity_scorer",
    "equalized_odds_scorer",
    "equal_opportunity_scorer",
    "mean_residual_scorer",
    "false_positive_rate_scorer",
    "error_rate_scorer",
    "selection_rate_scorer",
    "four_fifths_scorer",
    "fair_refit",
    "fairness_report",
]


def demographic_parity_difference(y_true: ArrayLike | None, y_pred: ArrayLike, *,
                                  sensitive_features: ArrayLike,
                                  sample_weight: ArrayLike | None = None,
                                  intersectional: bool = True) -> float:
    """Largest difference of the groups' mean predictions.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or None
        Unused (accepted for a uniform signature).
    y_pred : array-like of shape (n_samples,)
        0/1 labels (selection-rate parity), probabilities (mean-score parity) or regression
        outputs (mean prediction parity).
    sensitive_features : array-like, Series or DataFrame of shape (n_samples,) or \
            (n_samples, n_attributes)
        Group of every sample for one or several protected attributes (any values).
    sample_weight : array-like of shape (n_samples,), default=None
        Weights in the group means.
    intersectional : bool, default=True
        With several sensitive columns, compare the groups of their crossed values (fairlearn's
        semantics for this name); ``False``: each column on its own, the largest gap over the
        columns (what an estimator with ``intersectional=False`` constrains). The scorers pass
        the estimator's own setting.

    Returns
    -------
    float
        ``max_u mean(y_pred | u) - min_v mean(y_pred | v)`` over the groups (crossed, or per
        column and the largest).

    Examples
    --------
    >>> from skfair.metrics import demographic_parity_difference
    >>> demographic_parity_difference(None, [1, 0, 1, 1], sensitive_features=["a", "a", "b", "b"])
    0.5
    """
    return _gap("demographic_parity", None, y_pred, sensitive_features, sample_weight,
                intersectional)


def equalized_odds_difference(y_true: ArrayLike, y_pred: ArrayLike, *,
                              sensitive_features: ArrayLike,
                              sample_weight: ArrayLike | None = None, pos_label: Any = None,
                              intersectional: bool = True) -> float:
    """Largest difference of the groups' mean predictions within a true class.

    On 0/1 labels this is ``max(TPR difference, FPR difference)`` (fairlearn's definition); on
    probabilities the same with mean scores.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True binary labels.
    y_pred : array-like of shape (n_samples,)
        Labels or probabilities of the positive class.
    sensitive_features : array-like, Series or DataFrame
        See :func:`demographic_parity_difference`.
    sample_weight : array-like of shape (n_samples,), default=None
    pos_label : label, default=None
        The positive class of ``y_true`` (and of ``y_pred`` when it holds labels); default: 1 for
        0/1 labels, else the greater of the two labels.
    intersectional : bool, default=True
        See :func:`demographic_parity_difference`.

    Returns
    -------
    float

    Examples
    --------
    >>> from skfair.metrics import equalized_odds_difference
    >>> equalized_odds_difference([1, 1, 0, 0], [1, 0, 0, 0],
    ...                           sensitive_features=["a", "b", "a", "b"])
    1.0
    """
    y_true, y_pred = _binary(y_true, y_pred, pos_label)
    return _gap("equalized_odds", y_true, y_pred, sensitive_features, sample_weight,
                intersectional)


def equal_opportunity_difference(y_true: ArrayLike, y_pred: ArrayLike, *,
                                 sensitive_features: ArrayLike,
                                 sample_weight: ArrayLike | None = None, pos_label: Any = None,
                                 intersectional: bool = True) -> float:
    """Largest difference of the groups' mean predictions among the positives (TPR difference).

    Parameters are those of :func:`equalized_odds_difference`.

    Returns
    -------
    float

    Examples
    --------
    >>> from skfair.metrics import equal_opportunity_difference
    >>> equal_opportunity_difference([1, 1, 0, 0], [1, 0, 1, 0],
    ...                              sensitive_features=["a", "b", "a", "b"])
    1.0
    """
    y_true, y_pred = _binary(y_true, y_pred, pos_label)
    return _gap("equal_opportunity", y_true, y_pred, sensitive_features, sample_weight,
                intersectional)


def false_positive_rate_difference(y_true: ArrayLike, y_pred: ArrayLike, *,
                                   sensitive_features: ArrayLike,
                                   sample_weight: ArrayLike | None = None, pos_label: Any = None,
                                   intersectional: bool = True) -> float:
    """Largest difference of the groups' mean predictions among the negatives (FPR difference).

    Parameters are those of :func:`equalized_odds_difference`.

    Returns
    -------
    float

    Examples
    --------
    >>> from skfair.metrics import false_positive_rate_difference
    >>> false_positive_rate_difference([0, 0, 1, 1], [1, 0, 1, 0],
    ...                                sensitive_features=["a", "b", "a", "b"])
    1.0
    """
    y_true, y_pred = _binary(y_true, y_pred, pos_label)
    return _gap("false_positive_rate_parity", y_true, y_pred, sensitive_features,
                sample_weight, intersectional)


def error_rate_difference(y_true: ArrayLike, y_pred: ArrayLike, *,
                          sensitive_features: ArrayLike,
                          sample_weight: ArrayLike | None = None, pos_label: Any = None,
                          intersectional: bool = True) -> float:
    """Largest difference of the groups' expected error rates, ``mean(y (1 - p) + (1 - y) p)``.

    On 0/1 labels this is the difference of the zero-one losses (fairlearn's
    ``zero_one_loss_difference``); on probabilities, of the expected errors.

    Parameters are those of :func:`equalized_odds_difference`.

    Returns
    -------
    float

    Examples
    --------
    >>> from skfair.metrics import error_rate_difference
    >>> error_rate_difference([1, 0, 1, 0], [1, 0, 0, 0], sensitive_features=["a", "a", "b", "b"])
    0.5
    """
    y_true, y_pred = _binary(y_true, y_pred, pos_label)
    return _gap("error_rate_parity", y_true, y_pred, sensitive_features, sample_weight,
                intersectional)


def mean_residual_difference(y_true: ArrayLike, y_pred: ArrayLike, *,
                             sensitive_features: ArrayLike,
                             sample_weight: ArrayLike | None = None,
                             intersectional: bool = False) -> float:
    """Largest absolute mean residual of a group: ``max_g |mean(y_pred - y_true | g)|``.

    This is the measure of the ``mean_residual`` constraint (every group's mean residual within
    epsilon of zero), not a difference between groups: a model that is equally biased for every
    group is not called fair.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True targets.
    y_pred : array-like of shape (n_samples,)
        Predictions.
    sensitive_features : array-like, Series or DataFrame
    sample_weight : array-like of shape (n_samples,), default=None
    intersectional : bool, default=False
        With several sensitive columns, the crossed groups instead of each column's (this is
        skfair's measure, not fairlearn's: its default is the constraint's).

    Returns
    -------
    float

    Examples
    --------
    >>> from skfair.metrics import mean_residual_difference
    >>> mean_residual_difference([1.0, 2.0, 3.0], [1.5, 2.5, 3.0],
    ...                          sensitive_features=["a", "a", "b"])
    0.5
    """
    y_true = _numeric(y_true, "y_true")
    return _gap("mean_residual", y_true, _numeric(y_pred, "y_pred"), sensitive_features,
                sample_weight, intersectional)


_METRICS: dict[str, Callable[..., float]] = {
    "demographic_parity": demographic_parity_difference,
    "equalized_odds": equalized_odds_difference,
    "equal_opportunity": equal_opportunity_difference,
    "false_positive_rate_parity": false_positive_rate_difference,
    "error_rate_parity": error_rate_difference,
    "mean_residual": mean_residual_difference,
}


def demographic_parity_ratio(y_true: ArrayLike | None, y_pred: ArrayLike, *,
                             sensitive_features: ArrayLike,
                             sample_weight: ArrayLike | None = None,
                             intersectional: bool = True) -> float:
    """Smallest ratio of two groups' mean predictions: on 0/1 labels, the lowest selection rate
    over the highest (the *four-fifths rule* asks for at least 0.8).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or None
        Unused (accepted for a uniform signature).
    y_pred : array-like of shape (n_samples,)
        0/1 labels, or non-negative scores.
    sensitive_features : array-like, Series or DataFrame of shape (n_samples,) or \
            (n_samples, n_attributes)
        Group of every sample for one or several protected attributes (any values).
    sample_weight : array-like of shape (n_samples,), default=None
        Weights in the group means.
    intersectional : bool, default=True
        See :func:`demographic_parity_difference`.

    Returns
    -------
    float
        ``min_v mean(y_pred | v) / max_u mean(y_pred | u)`` over the groups (crossed, or per
        column and the smallest); 1.0 when every mean is 0, and 1.0 with fewer than two
        groups.

    Examples
    --------
    >>> from skfair.metrics import demographic_parity_ratio
    >>> demographic_parity_ratio(None, [1, 0, 1, 1], sensitive_features=["a", "a", "b", "b"])
    0.5
    """
    scores = _numeric(y_pred, "y_pred")
    if (scores < 0).any():
        raise ValueError("y_pred must be non-negative for a ratio of group means.")
    codes = _encode_sensitive(sensitive_features, len(scores), intersectional).numpy()
    weight = np.ones(len(scores))
    if sample_weight is not None:
        weight = _numeric(sample_weight, "sample_weight")
        _check_length(weight, len(scores), "sample_weight")
    ratio = 1.0
    for column in codes.T:
        totals = np.bincount(column, weights=weight)
        present = totals > 0
        means = np.bincount(column, weights=weight * scores)[present] / totals[present]
        if means.max() > 0:
            ratio = min(ratio, float(means.min() / means.max()))
    return ratio


def _gap(constraint, y_true, y_pred, sensitive_features, sample_weight, intersectional):
    y_pred = _numeric(y_pred, "y_pred")
    codes = _encode_sensitive(sensitive_features, len(y_pred), intersectional)
    weight = None
    if sample_weight is not None:
        weight = _numeric(sample_weight, "sample_weight")
        _check_length(weight, len(y_pred), "sample_weight")
    if y_true is not None:
        _check_length(y_true, len(y_pred), "y_true")
        y_true = torch.as_tensor(y_true, dtype=torch.float64)
    return constraint_gap(constraint, torch.as_tensor(y_pred), codes, y_true=y_true,
                          sample_weight=None if weight is None else torch.as_tensor(weight))


def _numeric(values, name):
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {values.shape}.")
    try:
        values = values.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric; got values such as {values[:3]!r}.") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinity.")
    return values


def _binary(y_true, y_pred, pos_label):
    """0/1 true labels, and predictions as 0/1 when they are labels, else as given."""
    y_true = np.asarray(y_true)
    labels = pd.unique(pd.Series(y_true.ravel()))
    if pd.isna(labels).any():
        raise ValueError("y_true contains missing values.")
    if pos_label is None:
        numeric = np.issubdtype(y_true.dtype, np.number) or y_true.dtype == bool
        pos_label = 1 if numeric and set(labels.tolist()) <= {0, 1} else max(labels.tolist())
    if len(labels) > 2 or (len(labels) == 2 and pos_label not in labels):
        raise ValueError(
            f"y_true must hold binary labels with pos_label={pos_label!r}; got {list(labels)}."
        )
    y_pred = np.asarray(y_pred)
    if not (np.issubdtype(y_pred.dtype, np.number) or y_pred.dtype == bool):
        y_pred = (y_pred == pos_label)
    return (y_true == pos_label).astype(np.float64), y_pred


def _check_length(values, n, name):
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} samples but y_pred has {n}.")


def _encode_sensitive(sensitive_features, n, intersectional=False):
    """Group codes (n, n_attributes) of any Series / array / DataFrame of sensitive features;
    one column, the crossed cells, when ``intersectional``."""
    if sensitive_features is None:
        raise ValueError("sensitive_features is required.")
    frame = _sensitive_frame(sensitive_features, n, "y_pred")
    codes = GroupEncoder(list(frame.columns)).fit_transform(frame)
    if intersectional and codes.shape[1] > 1:
        codes = intersect_groups(codes)
    return codes


# ------------------------------------------------------------------------------------------------
# Scorers
class FairnessScorer:
    """A scorer ``scorer(estimator, X, y)`` for a fairness metric (see
    :func:`make_fairness_scorer`)."""

    def __init__(self, metric: Callable[..., float], sign: int, kwargs: dict[str, Any],
                 response: Literal["proba", "labels"] = "proba") -> None:
        self._metric = metric
        self._sign = sign
        self._kwargs = kwargs
        self._response = response
        self._metadata_request = MetadataRequest(owner=type(self).__name__)

    def __call__(self, estimator: BaseEstimator, X: ArrayLike, y_true: ArrayLike,
                 sample_weight: ArrayLike | None = None,
                 sensitive_features: ArrayLike | None = None) -> float:
        kwargs = self._kwargs
        if sensitive_features is None:
            sensitive_features = protected_columns(estimator, X)
            # the model's own groups: crossed or not, as it constrains them
            if "intersectional" in inspect.signature(self._metric).parameters:
                kwargs = {"intersectional": bool(_final(estimator).intersectional), **kwargs}
        y_pred = _predictions(estimator, X, self._response)
        value = self._metric(y_true, y_pred, sensitive_features=sensitive_features,
                             sample_weight=sample_weight, **kwargs)
        return self._sign * value

    def set_score_request(self, **requests: bool | str | None) -> "FairnessScorer":
        """Request metadata (``sensitive_features``, ``sample_weight``) for scoring.

        With ``sklearn.set_config(enable_metadata_routing=True)``, ``scorer.set_score_request(
        sensitive_features=True)`` lets ``cross_validate(..., params={"sensitive_features": A})``
        route the groups to the scorer, for estimators that are not skfair's (skfair's read their
        protected columns from ``X``).

        Returns
        -------
        self
        """
        for param, alias in requests.items():
            if param not in ("sensitive_features", "sample_weight"):
                raise ValueError(f"Unexpected metadata {param!r} for a fairness scorer.")
            self._metadata_request.score.add_request(param=param, alias=alias)
        return self

    def get_metadata_routing(self) -> MetadataRequest:
        return self._metadata_request

    def __repr__(self) -> str:
        sign = "" if self._sign > 0 else ", greater_is_better=False"
        return f"make_fairness_scorer({self._metric.__name__}{sign})"


def make_fairness_scorer(metric: str | Callable[..., float], greater_is_better: bool = False,
                         response: Literal["proba", "labels"] = "proba",
                         **kwargs: Any) -> FairnessScorer:
    """Make a scorer from a fairness metric.

    The scorer predicts with the estimator (for classifiers ``predict_proba[:, 1]``, the scores,
    or the fair logits, ``decision_function``, of a skfair classifier with
    ``constrain="logit"``, whose guarantee is on them; with ``response="labels"`` 0/1 for
    ``predict == classes_[1]``, the decisions; ``predict`` for regressors) and takes the
    protected groups from the raw ``X`` it is given, using the fitted skfair estimator's
    ``protected_attributes`` (also as the last step of a Pipeline), so that
    ``GridSearchCV(scoring={"dp": ...})`` needs no plumbing; it then compares them crossed or
    not as the estimator's ``intersectional`` says (the gap it constrains). For other
    estimators pass the groups through metadata routing
    (:meth:`FairnessScorer.set_score_request`); the metric's own default applies.

    Parameters
    ----------
    metric : str or callable
        ``"demographic_parity"``, ``"equalized_odds"``, ``"equal_opportunity"``,
        ``"mean_residual"`` or a function ``(y_true, y_pred, *, sensitive_features,
        sample_weight)``.
    greater_is_better : bool, default=False
        Gaps are better when smaller, so by default the scorer returns the **negative** gap, as
        scikit-learn's scorers of errors do: ``cv_results_["mean_test_dp"]`` holds ``-gap``.
    response : {"proba", "labels"}, default="proba"
        What a classifier's metric is computed on: its scores (probabilities, or logits where
        the model constrains logits) or its predicted labels.
    **kwargs
        Passed to the metric (e.g. ``pos_label``).

    Returns
    -------
    FairnessScorer

    Examples
    --------
    >>> from skfair.metrics import make_fairness_scorer
    >>> scorer = make_fairness_scorer("equalized_odds")
    """
    if isinstance(metric, str):
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {sorted(_METRICS)} or a callable; got "
                             f"{metric!r}.")
        metric = _METRICS[metric]
    if not callable(metric):
        raise ValueError(f"metric must be a name or a callable; got {metric!r}.")
    if response not in ("proba", "labels"):
        raise ValueError(f"response must be 'proba' or 'labels'; got {response!r}.")
    return FairnessScorer(metric, 1 if greater_is_better else -1, kwargs, response)


demographic_parity_scorer = make_fairness_scorer("demographic_parity")
equalized_odds_scorer = make_fairness_scorer("equalized_odds")
equal_opportunity_scorer = make_fairness_scorer("equal_opportunity")
mean_residual_scorer = make_fairness_scorer("mean_residual")
false_positive_rate_scorer = make_fairness_scorer("false_positive_rate_parity")
error_rate_scorer = make_fairness_scorer("error_rate_parity")
#: the selection-rate gap of the predicted labels (negative, like every gap scorer)
selection_rate_scorer = make_fairness_scorer("demographic_parity", response="labels")
#: the lowest selection rate over the highest, of the predicted labels (greater is better)
four_fifths_scorer = make_fairness_scorer(demographic_parity_ratio, greater_is_better=True,
                                          response="labels")


def _final(estimator):
    return estimator[-1] if isinstance(estimator, Pipeline) else estimator


def protected_columns(estimator: BaseEstimator, X: ArrayLike) -> pd.DataFrame:
    """The protected columns of raw ``X`` for a fitted skfair estimator (or Pipeline).

    Parameters
    ----------
    estimator : fitted FairNeuralClassifier, FairNeuralRegressor, or a Pipeline ending in one
    X : DataFrame or array-like
        The input the estimator (or Pipeline) receives. For a Pipeline, the protected columns
        are read from the last step's input (where ``protected_attributes`` point), so
        positions work as names do, also when the preprocessing outputs a numpy array.

    Returns
    -------
    DataFrame with one column per protected attribute
    """
    final = _final(estimator)
    attributes = getattr(final, "protected_attributes", None)
    if attributes is None:
        raise ValueError(
            f"{type(final).__name__} has no protected_attributes to read from X; pass "
            f"sensitive_features through metadata routing instead."
        )
    if isinstance(estimator, Pipeline):
        # the columns as the estimator sees them: positions and names refer to its input
        X = estimator[:-1].transform(X)
    return protected_frame(attributes, X)


def _predictions(estimator, X, response="proba"):
    if is_classifier(estimator):
        if response == "labels":
            return (estimator.predict(X) == _final(estimator).classes_[1]).astype(float)
        if _on_logits(_final(estimator)):
            return estimator.decision_function(X)  # the scale the guarantee is on
        return estimator.predict_proba(X)[:, 1]
    return estimator.predict(X)


def fair_refit(threshold: float, score: str = "accuracy",
               gap: str = "dp") -> Callable[[Mapping[str, Any]], int]:
    """A ``refit`` rule for multi-metric ``GridSearchCV``: the best ``score`` among fair candidates.

    Parameters
    ----------
    threshold : float
        Largest mean cross-validated gap a candidate may have (up to the layer's guarantee
        tolerance, 1e-7, so that candidates projected to exactly ``epsilon`` qualify).
    score : str, default="accuracy"
        Key of the performance scorer in the ``scoring`` dict (greater is better).
    gap : str, default="dp"
        Key of the fairness scorer in the ``scoring`` dict; it must be one of skfair's scorers
        (or any scorer returning the negative gap).

    Returns
    -------
    callable
        ``refit(cv_results) -> index`` of the chosen candidate. Raises ValueError when no
        candidate's mean gap is within the threshold.

    Examples
    --------
    >>> from sklearn.model_selection import GridSearchCV
    >>> from skfair import FairNeuralClassifier
    >>> from skfair.metrics import demographic_parity_scorer, fair_refit
    >>> search = GridSearchCV(
    ...     FairNeuralClassifier(protected_attributes=["sex"]),
    ...     {"epsilon": [0.01, 0.05, 0.1]},
    ...     scoring={"accuracy": "accuracy", "dp": demographic_parity_scorer},
    ...     refit=fair_refit(0.05, score="accuracy", gap="dp"))
    """

    def refit(cv_results):
        for key in (f"mean_test_{score}", f"mean_test_{gap}"):
            if key not in cv_results:
                raise ValueError(f"cv_results_ has no {key!r}: the scoring dict needs the keys "
                                 f"{score!r} and {gap!r}.")
        gaps = -np.asarray(cv_results[f"mean_test_{gap}"], dtype=float)
        scores = np.asarray(cv_results[f"mean_test_{score}"], dtype=float)
        # Gaps of exactly projected folds sit on epsilon up to rounding: allow the layer's
        # guarantee tolerance, so that threshold=epsilon keeps them.
        fair = np.flatnonzero(gaps <= threshold + GUARANTEE_TOL * max(1.0, abs(threshold)))
        if len(fair) == 0:
            raise ValueError(
                f"No candidate has a mean {gap!r} gap <= {threshold}; the smallest is "
                f"{np.nanmin(gaps):.4g}. Raise the threshold or search smaller epsilon."
            )
        return int(fair[np.argmax(scores[fair])])

    return refit


def fairness_report(estimator: BaseEstimator, X: ArrayLike, y: ArrayLike, *,
                    sensitive_features: ArrayLike | None = None) -> pd.DataFrame:
    """Per-group performance and fairness of a fitted estimator (or Pipeline).

    Parameters
    ----------
    estimator : fitted classifier or regressor, or Pipeline ending in one
        A skfair estimator reads its protected columns from ``X``; any other (e.g. a baseline
        to compare with) needs ``sensitive_features``.
    X : DataFrame or array-like
        Input of the estimator.
    y : array-like of shape (n_samples,)
        True targets.
    sensitive_features : Series, DataFrame or array-like, default=None
        The groups of every row, one column per attribute, instead of the estimator's
        protected columns of ``X``.

    Returns
    -------
    report : DataFrame
        Indexed by ``(attribute, kind, name)``. Rows of kind ``"group"`` are the groups of
        each attribute (``name`` is the group's value): ``count``, ``mean prediction`` (mean
        probability of the positive class, or mean prediction), for a
        :class:`~skfair.FairNeuralClassifier` fitted with ``constrain="logit"`` ``mean logit``
        (the mean of its fair logits, :meth:`~skfair.FairNeuralClassifier.decision_function`:
        the scale its guarantee is on, where ``mean prediction``'s gap is not bounded by
        ``epsilon``), then ``selection rate``,
        ``accuracy``, ``TPR``, ``FPR`` (classifier, from the predicted labels) or ``MSE``,
        ``mean residual`` (regressor). After each attribute's groups come its rows of kind
        ``"summary"``: ``gap`` holds ``max - min`` of every column over the groups (and the
        largest absolute mean residual); for a classifier ``ratio`` holds ``min / max`` of the
        mean prediction and the selection rate (the four-fifths rule asks for a
        selection-rate ratio of at least 0.8). The kind level keeps a group named like a
        summary row (a group ``"gap"``) apart from it. ``count`` is an integer column, empty
        on summary rows. ``report.xs("group", level="kind")`` is the per-group table,
        ``report.xs("summary", level="kind")`` the summaries. Printable as text.

    Examples
    --------
    >>> import pandas as pd
    >>> from sklearn.linear_model import LogisticRegression
    >>> from skfair.metrics import fairness_report
    >>> X = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]})
    >>> y = [0, 0, 1, 0, 1, 1]
    >>> sex = pd.Series(["F", "M", "F", "M", "F", "M"], name="sex")
    >>> report = fairness_report(LogisticRegression().fit(X, y), X, y, sensitive_features=sex)
    >>> report.index.names
    FrozenList(['attribute', 'kind', 'name'])
    >>> int(report.loc[("sex", "group", "F"), "count"])
    3
    >>> round(float(report.loc[("sex", "summary", "gap"), "selection rate"]), 3)
    0.333
    """
    if not (is_classifier(estimator) or is_regressor(estimator)):
        raise ValueError(f"{type(estimator).__name__} is neither a classifier nor a regressor.")
    sensitive = (protected_columns(estimator, X) if sensitive_features is None
                 else _sensitive_frame(sensitive_features, np.shape(y)[0], "y"))
    if is_classifier(estimator):
        group_row, summary = _classifier_group_row(estimator, X, y), _classifier_summary
    else:
        group_row, summary = _regressor_group_row(estimator, X, y), _regressor_summary
    rows = []
    for attribute in sensitive.columns:
        groups = sensitive[attribute].to_numpy()
        block = [{"attribute": attribute, "kind": "group", "name": value,
                  **group_row(groups == value)}
                 for value in sorted(pd.unique(groups), key=str)]
        rows += block + summary(attribute, block)
    report = pd.DataFrame(rows).set_index(["attribute", "kind", "name"])
    report["count"] = report["count"].astype("Int64")
    return report


def _sensitive_frame(sensitive_features, n, against):
    """``sensitive_features`` as a DataFrame of ``n`` rows (those of ``against``) with string
    column names."""
    if isinstance(sensitive_features, pd.Series):
        frame = sensitive_features.to_frame()
    elif isinstance(sensitive_features, pd.DataFrame):
        frame = sensitive_features
    else:
        values = np.asarray(sensitive_features, dtype=object)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2:
            raise ValueError(
                f"sensitive_features must be 1- or 2-dimensional; got shape {values.shape}."
            )
        frame = pd.DataFrame(values)
    if len(frame) != n:
        raise ValueError(f"sensitive_features has {len(frame)} samples but {against} has {n}.")
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _on_logits(final):
    """Whether ``final``, a fitted estimator, is a skfair classifier whose layer acts on its
    logits (as fitted: ``constrain`` set afterwards does not count)."""
    return isinstance(final, FairNeuralClassifier) and final._on_logits()


def _classifier_group_row(estimator, X, y):
    """The report's columns of a classifier for the rows of a group (a mask)."""
    final = _final(estimator)
    positive = (np.asarray(y) == final.classes_[1]).astype(float)
    proba = estimator.predict_proba(X)[:, 1]
    label = (estimator.predict(X) == final.classes_[1]).astype(float)
    # the fair logits themselves: logit(proba) would lose them where proba rounds to 0 or 1
    logits = estimator.decision_function(X) if _on_logits(final) else None

    def row(m):
        pos, neg = m & (positive == 1), m & (positive == 0)
        scores = {"mean prediction": proba[m].mean()}
        if logits is not None:
            scores["mean logit"] = logits[m].mean()
        return {"count": int(m.sum()), **scores, "selection rate": label[m].mean(),
                "accuracy": (label[m] == positive[m]).mean(),
                "TPR": label[pos].mean() if pos.any() else np.nan,
                "FPR": label[neg].mean() if neg.any() else np.nan}
    return row


def _regressor_group_row(estimator, X, y):
    """The report's columns of a regressor for the rows of a group (a mask)."""
    pred, y = estimator.predict(X), np.asarray(y).astype(float)

    def row(m):
        return {"count": int(m.sum()), "mean prediction": pred[m].mean(),
                "MSE": ((pred[m] - y[m]) ** 2).mean(), "mean residual": (pred[m] - y[m]).mean()}
    return row


def _classifier_summary(attribute, block):
    return [_gap_row(attribute, block), _ratio_row(attribute, block)]


def _regressor_summary(attribute, block):
    gap = _gap_row(attribute, block)
    gap["mean residual"] = max(abs(r["mean residual"]) for r in block)
    return [gap]


def _ratio_row(attribute, block):
    row = {"attribute": attribute, "kind": "summary", "name": "ratio", "count": np.nan}
    for column in ("mean prediction", "selection rate"):
        values = np.array([r[column] for r in block], dtype=float)
        row[column] = values.min() / values.max() if values.max() > 0 else 1.0
    return row


def _gap_row(attribute, block):
    row = {"attribute": attribute, "kind": "summary", "name": "gap", "count": np.nan}
    for column in block[0]:
        if column not in ("attribute", "kind", "name", "count"):
            values = np.array([r[column] for r in block], dtype=float)
            row[column] = np.nanmax(values) - np.nanmin(values)
    return row
