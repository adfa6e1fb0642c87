"""Streams through a scikit-learn Pipeline: the steps before the estimator transform each batch.

A :class:`~sklearn.pipeline.Pipeline` has no ``partial_predict_proba``: its stream lives in its
final estimator, which must see every batch as the preprocessing steps transform it.
:func:`partial_predict_proba` and :func:`partial_predict` take the next batch of raw rows
through ``pipeline[:-1].transform`` and then the final estimator's stream; the stream itself is
the estimator's (``pipeline[-1].reset_stream()``, ``pipeline[-1].stream_stats()``).
"""

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline

__all__ = ["partial_predict", "partial_predict_proba"]


def partial_predict_proba(model: BaseEstimator, X: ArrayLike) -> np.ndarray:
    """Fair probabilities for the next batch of a stream, through a Pipeline's preprocessing.

    ``model[:-1].transform(X)``, then the final estimator's
    :meth:`~skfair.FairNeuralClassifier.partial_predict_proba` (a step of its stream).

    Parameters
    ----------
    model : Pipeline or FairNeuralClassifier
        A fitted Pipeline whose final step is a :class:`~skfair.FairNeuralClassifier`, or the
        classifier itself.
    X : {array-like, DataFrame} of shape (n_samples, n_features)
        The batch, as the Pipeline's first step takes it.

    Returns
    -------
    proba : ndarray of shape (n_samples, 2)

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklearn.compose import make_column_transformer
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skfair import FairNeuralClassifier, partial_predict_proba
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame({"x": rng.normal(size=300), "sex": rng.choice(["F", "M"], 300)})
    >>> y = (X["x"] > 0).astype(int)
    >>> prep = make_column_transformer((StandardScaler(), ["x"]), remainder="passthrough")
    >>> model = make_pipeline(prep.set_output(transform="pandas"), FairNeuralClassifier(
    ...     protected_attributes=["sex"], max_epochs=5, random_state=0)).fit(X, y)
    >>> for start in range(0, 30, 10):  # three batches of raw rows
    ...     proba = partial_predict_proba(model, X.iloc[start:start + 10])
    >>> model[-1].stream_stats()["n_batches"]
    3
    """
    return _stream_step(model, X, "partial_predict_proba", "a FairNeuralClassifier")


def partial_predict(model: BaseEstimator, X: ArrayLike) -> np.ndarray:
    """Fair predictions for the next batch of a stream, through a Pipeline's preprocessing.

    ``model[:-1].transform(X)``, then the final estimator's ``partial_predict``
    (:meth:`FairNeuralClassifier.partial_predict <skfair.FairNeuralClassifier.partial_predict>`:
    class labels; :meth:`FairNeuralRegressor.partial_predict
    <skfair.FairNeuralRegressor.partial_predict>`: predictions).

    Parameters
    ----------
    model : Pipeline, FairNeuralClassifier or FairNeuralRegressor
        A fitted Pipeline whose final step is a fair estimator, or the estimator itself.
    X : {array-like, DataFrame} of shape (n_samples, n_features)
        The batch, as the Pipeline's first step takes it.

    Returns
    -------
    y : ndarray of shape (n_samples,)

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklearn.compose import make_column_transformer
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skfair import FairNeuralRegressor, partial_predict
    >>> rng = np.random.default_rng(0)
    >>> X = np.column_stack([rng.normal(size=300), rng.integers(0, 2, 300)])
    >>> prep = make_column_transformer((StandardScaler(), [0]), remainder="passthrough")
    >>> model = make_pipeline(prep, FairNeuralRegressor(  # the group is column 1 of prep's output
    ...     protected_attributes=[1], max_epochs=5, random_state=0)).fit(X, X[:, 0])
    >>> partial_predict(model, X[:4]).shape
    (4,)
    """
    return _stream_step(model, X, "partial_predict",
                        "a FairNeuralClassifier or FairNeuralRegressor")


def _stream_step(model, X, method, needs):
    """``method`` of the final estimator (``needs``: which ones have it, for the error) on
    ``X`` transformed by the steps before it; checked before any step runs."""
    pipeline = isinstance(model, Pipeline)
    final = model[-1] if pipeline else model
    if not callable(getattr(final, method, None)):
        where = "The Pipeline's final step " if pipeline else ""
        raise TypeError(f"{where}{final!r} has no {method}: streaming needs {needs}, or a "
                        f"Pipeline that ends in one.")
    if pipeline and len(model) > 1:
        X = model[:-1].transform(X)
    return getattr(final, method)(X)
