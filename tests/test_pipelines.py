"""Streaming a Pipeline's raw batches: skfair.partial_predict_proba and partial_predict."""

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from skfair import FairNeuralClassifier, FairNeuralRegressor, partial_predict, \
    partial_predict_proba

FAST = dict(hidden_layer_sizes=(8,), max_epochs=5, batch_size=128, learning_rate=0.01,
            random_state=0)


def _frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"age": rng.integers(18, 70, n).astype(float),
                      "job": rng.choice(["a", "b", "c"], n),
                      "sex": rng.choice(["F", "M"], n)})
    y = (X["age"] / 50 + (X["sex"] == "M") + rng.normal(size=n) > 1.4).astype(int)
    return X, y


def _pipeline(estimator):
    prep = make_column_transformer((StandardScaler(), ["age"]),
                                   (OneHotEncoder(sparse_output=False), ["job"]),
                                   remainder="passthrough").set_output(transform="pandas")
    return make_pipeline(prep, estimator)


def _stream(model, step, batches):
    model[-1].reset_stream()
    return [step(model, batch) for batch in batches]


@pytest.mark.parametrize("estimator, step, method", [
    (FairNeuralClassifier, partial_predict_proba, "partial_predict_proba"),
    (FairNeuralClassifier, partial_predict, "partial_predict"),
    (FairNeuralRegressor, partial_predict, "partial_predict"),
])
def test_streaming_a_pipeline_is_streaming_its_estimator_on_transformed_batches(
        estimator, step, method):
    X, y = _frame()
    model = _pipeline(estimator(protected_attributes=["sex"], b_tau=50, **FAST)).fit(X, y)
    batches = [X.iloc[:7], X.iloc[7:8], X.iloc[8:70]]  # two primal-dual steps, one exact
    streamed = _stream(model, step, batches)
    stats = model[-1].stream_stats()
    assert stats["n_batches"] == 3 and stats["n_steps"] == 2
    reference = _stream(model, lambda m, b: getattr(m[-1], method)(m[:-1].transform(b)),
                        batches)
    for ours, theirs in zip(streamed, reference):
        np.testing.assert_array_equal(ours, theirs)
    assert model[-1].stream_stats() == stats


def test_the_estimator_itself_streams_too():
    X, y = _frame()
    prep = _pipeline(None)[0].fit(X)
    clf = FairNeuralClassifier(protected_attributes=["sex"], **FAST).fit(prep.transform(X), y)
    np.testing.assert_array_equal(partial_predict_proba(clf, prep.transform(X.iloc[:5])),
                                  clf.reset_stream().partial_predict_proba(
                                      prep.transform(X.iloc[:5])))


def test_a_pipeline_whose_final_step_cannot_stream_is_refused_before_anything_runs():
    X, y = _frame()
    plain = _pipeline(LogisticRegression()).fit(X.assign(sex=X["sex"] == "M"), y)
    with pytest.raises(TypeError, match=r"final step LogisticRegression\(\) has no "
                                        r"partial_predict_proba: streaming needs a "
                                        r"FairNeuralClassifier"):
        partial_predict_proba(plain, X.iloc[:5])
    regressor = _pipeline(FairNeuralRegressor(protected_attributes=["sex"], **FAST)).fit(X, y)
    with pytest.raises(TypeError, match="has no partial_predict_proba"):
        partial_predict_proba(regressor, X.iloc[:5])
    assert not hasattr(regressor[-1], "stream_")
    with pytest.raises(TypeError, match=r"LogisticRegression\(\) has no partial_predict: "
                                        r"streaming needs a FairNeuralClassifier or "
                                        r"FairNeuralRegressor, or a Pipeline"):
        partial_predict(LogisticRegression(), X)
