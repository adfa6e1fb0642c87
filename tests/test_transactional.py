"""A call that fails changes nothing: fit, refits, warm starts and streams are transactional, and
what would put NaN into the estimator's state is refused at its boundary."""

import pickle

import numpy as np
import pytest
import torch
from conftest import biased_frame
from sklearn.exceptions import NotFittedError

from skfair import FairNeuralClassifier, FairNeuralRegressor, _training

FAST = dict(hidden_layer_sizes=(8,), max_epochs=3, batch_size=128, learning_rate=0.01,
            random_state=0)
PROTECTED = ["sex", "race"]


@pytest.fixture(scope="module")
def data():
    return biased_frame(400)


def fitted_state(estimator):
    """The estimator's attributes that are not parameters, in comparable form: pickled, and a
    network as its tensors (a pickled tensor names its storage by its memory address)."""
    params = estimator.get_params(deep=False)
    state = []
    for name, value in vars(estimator).items():
        if name in params:
            continue
        if isinstance(value, torch.nn.Module):
            value = (type(value), value.training,
                     [(k, t.device.type, t.cpu().numpy().tobytes())
                      for k, t in value.state_dict().items()])
        state.append((name, pickle.dumps(value)))
    return state


def streaming(data, **params):
    """A fitted classifier with a stream under way."""
    X, y = data
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, **dict(FAST, **params)).fit(X, y)
    for start in range(0, 20, 5):
        clf.partial_predict_proba(X.iloc[start:start + 5])
    return clf


def assert_unchanged(clf, before, X, proba, stats):
    assert fitted_state(clf) == before
    np.testing.assert_array_equal(clf.predict_proba(X), proba)
    assert clf.stream_stats() == stats


def negative_weight(X, y):
    w = np.ones(len(y))
    w[3] = -1.0
    return dict(X=X, y=y, sample_weight=w)


def weight_of(value):
    def change(X, y):
        w = np.ones(len(y))
        w[7] = value
        return dict(X=X, y=y, sample_weight=w)
    return change


FAILED_REFITS = {
    "negative sample_weight": (negative_weight, {}, r"Negative .*sample_weight"),
    "infinite sample_weight": (weight_of(np.inf), {}, r"sample_weight contains infinity"),
    "NaN sample_weight": (weight_of(np.nan), {}, r"sample_weight contains NaN"),
    "all-zero sample_weight": (lambda X, y: dict(X=X, y=y, sample_weight=np.zeros(len(y))), {},
                               "at least one non-zero"),
    "one class in y": (lambda X, y: dict(X=X, y=np.zeros(len(y))), {}, "exactly 2 classes"),
    "feature beyond float32": (lambda X, y: dict(X=X.assign(x2=1e39), y=y), {}, r"\['x2'\]"),
    "unavailable device": (lambda X, y: dict(X=X, y=y), dict(device="cuda:99"),
                           r"device='cuda:99' is not available"),
    "boolean epsilon": (lambda X, y: dict(X=X, y=y), dict(epsilon=True), "not a bool"),
    "diverging training": (lambda X, y: dict(X=X, y=y), dict(distortion_penalty=1e308),
                           "Training diverged at epoch"),
}


@pytest.mark.parametrize("warm_start", [False, True])
@pytest.mark.parametrize("case", list(FAILED_REFITS))
def test_failed_refit_changes_nothing(data, case, warm_start):
    change, params, match = FAILED_REFITS[case]
    X, y = data
    clf = streaming(data, warm_start=warm_start)
    before, proba, stats = fitted_state(clf), clf.predict_proba(X), clf.stream_stats()
    clf.set_params(**params)
    with pytest.raises(ValueError, match=match):
        clf.fit(**change(X, y))
    clf.set_params(**{k: FairNeuralClassifier().get_params()[k] for k in params})
    assert_unchanged(clf, before, X, proba, stats)


@pytest.mark.parametrize("warm_start", [False, True])
def test_error_during_training_restores_the_fitted_state(data, monkeypatch, warm_start):
    """An exception in the middle of training (here, the third training step) puts back the
    previous network, history, multipliers and stream, also when a warm start was training the
    previous network in place."""
    X, y = data
    clf = streaming(data, warm_start=warm_start)
    before, proba, stats = fitted_state(clf), clf.predict_proba(X), clf.stream_stats()
    calls = []
    original = _training.fair_objective

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return original(*args)

    monkeypatch.setattr(_training, "fair_objective", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        clf.fit(X.assign(x1=X["x1"] * 2), y)
    assert len(calls) == 3
    assert_unchanged(clf, before, X, proba, stats)


def test_warm_start_refit_with_another_number_of_inputs_changes_nothing(data):
    X, y = data
    clf = streaming(data, warm_start=True)
    before, proba, stats = fitted_state(clf), clf.predict_proba(X), clf.stream_stats()
    with pytest.raises(ValueError, match=r"takes 4 inputs; this X gives 5 .*warm_start=False"):
        clf.fit(X.assign(x3=1.0), y)
    assert_unchanged(clf, before, X, proba, stats)
    X3, _ = biased_frame(400, categorical=True)  # a third race: two more one-hot inputs
    with pytest.raises(ValueError, match="takes 4 inputs; this X gives 6"):
        clf.fit(X3, y)
    assert_unchanged(clf, before, X, proba, stats)
    clf.set_params(warm_start=False).fit(X3, y)  # a new network is fine
    assert clf.n_features_in_ == 4


def test_failed_first_fit_leaves_the_estimator_unfitted(data):
    X, y = data
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, **FAST)
    unfitted = dict(vars(clf))
    with pytest.raises(ValueError, match="exactly 2 classes"):
        clf.fit(X, np.zeros(len(y)))
    assert vars(clf) == unfitted
    with pytest.raises(NotFittedError):
        clf.predict(X)
    with pytest.raises(NotFittedError):
        clf.partial_predict(X)


def test_successful_refit_ends_the_stream(data):
    """The stream's multipliers are keyed by group codes, which a refit may give other groups."""
    X, y = data
    clf = streaming(data)
    clf.fit(X, y)
    assert not hasattr(clf, "stream_")
    clf.partial_predict(X.iloc[:3])
    assert clf.stream_stats()["n_samples"] == 3


def test_sample_weight_must_be_finite_non_negative_and_not_all_zero(data):
    """An infinite weight makes every weighted group mean NaN, which switched the constraint
    off; a negative one was reported with the shape of a training batch."""
    X, y = data
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, **FAST)
    for change, match in [(weight_of(np.inf), "infinity"), (weight_of(-np.inf), "infinity"),
                          (weight_of(np.nan), "NaN"), (weight_of(-0.5), "Negative values")]:
        with pytest.raises(ValueError, match=f"{match}.*sample_weight|sample_weight.*{match}"):
            clf.fit(**change(X, y))
    with pytest.raises(ValueError, match="[Ss]ample weights must contain at least one non-zero"):
        clf.fit(X, y, sample_weight=np.zeros(len(y)))
    zero = weight_of(0.0)(X, y)  # zero weights among others are fine
    assert np.isfinite(clf.fit(**zero).predict_proba(X)).all()


@pytest.mark.parametrize("sizes", [(-3,), (0,), (16, 0), (2.5,), (True,), ("8",)])
def test_hidden_layer_sizes_must_be_positive_integers(data, sizes):
    X, y = data
    with pytest.raises(ValueError, match=r"hidden_layer_sizes must hold positive integers"):
        FairNeuralClassifier(**dict(FAST, hidden_layer_sizes=sizes)).fit(X[["x1"]], y)


def test_hidden_layer_sizes_accepts_numpy_integers_and_no_hidden_layer(data):
    X, y = data
    clf = FairNeuralClassifier(**dict(FAST, hidden_layer_sizes=(np.int64(4),))).fit(X[["x1"]], y)
    assert clf.module_[0].out_features == 4
    linear = FairNeuralClassifier(**dict(FAST, hidden_layer_sizes=())).fit(X[["x1"]], y)
    assert len(linear.module_) == 1


@pytest.mark.parametrize("param", ["epsilon", "b_tau", "eta0", "distortion_penalty",
                                   "batch_size", "max_epochs",
                                   "learning_rate", "validation_fraction", "tol"])
def test_booleans_are_refused_for_numbers(data, param):
    X, y = data
    clf = FairNeuralClassifier(protected_attributes=["sex"], **FAST).set_params(**{param: True})
    # (sklearn's own check refuses True for validation_fraction: it is 1, out of its range)
    with pytest.raises(ValueError, match=f"'{param}' parameter of FairNeuralClassifier must be"):
        clf.fit(X.drop(columns="race"), y)


def test_boolean_protected_attribute_is_refused(data):
    X, y = data
    with pytest.raises(ValueError, match="'protected_attributes' parameter .* not a bool"):
        FairNeuralClassifier(protected_attributes=True, **FAST).fit(X, y)


@pytest.mark.parametrize("bounds", [(np.inf, np.inf), (-np.inf, np.inf), (0.0, np.inf),
                                    (np.nan, 1.0), (1.0, 0.0), (1.0, 1.0), (True, 2.0),
                                    (0.0, 1.0, 2.0), ("a", "b"), []])
def test_regressor_bounds_must_be_finite_and_ordered(data, bounds):
    X, _ = data
    reg = FairNeuralRegressor(protected_attributes=["sex"], bounds=bounds, **FAST)
    with pytest.raises(ValueError, match=r"bounds must be None, False or a pair of finite"):
        reg.fit(X.drop(columns="race"), X["x1"])


def test_regressor_accepts_finite_bounds_as_any_pair_of_numbers(data):
    X, _ = data
    reg = FairNeuralRegressor(protected_attributes=["sex"], bounds=[np.int64(-3), 3.5], **FAST)
    assert reg.fit(X.drop(columns="race"), X["x1"]).bounds_ == (-3.0, 3.5)


@pytest.mark.parametrize("device", ["cuda:99", "no-such-device"])
def test_unavailable_device_is_refused_before_training(data, device):
    X, y = data
    clf = FairNeuralClassifier(device=device, **FAST)
    with pytest.raises(ValueError, match=f"device='{device}' is not"):
        clf.fit(X[["x1"]], y)
    assert not hasattr(clf, "module_")


@pytest.mark.parametrize("protected", [None, PROTECTED])
def test_features_beyond_float32_name_their_columns(data, protected):
    """1e39 is finite in float64 but infinite in the network's float32 inputs."""
    X, y = data
    columns = ["x1", "x2"] + (protected or [])
    clf = FairNeuralClassifier(protected_attributes=protected, **FAST)
    with pytest.raises(ValueError, match=r"float32's range .* column\(s\) \['x2'\]"):
        clf.fit(X[columns].assign(x2=1e39), y)
    values = X[columns].assign(x1=-1e39, x2=1e39).to_numpy(dtype=object)
    positional = clf.set_params(protected_attributes=protected and [2, 3])
    with pytest.raises(ValueError, match=r"column\(s\) \[0, 1\]"):
        positional.fit(values, y)
    clf.set_params(protected_attributes=protected)
    clf.fit(X[columns], y)
    with pytest.raises(ValueError, match=r"column\(s\) \['x1'\]"):
        clf.predict(X[columns].assign(x1=1e39))
    # The largest float32 is still a float32.
    largest = float(np.finfo(np.float32).max)
    assert clf.predict(X[columns].assign(x1=largest)).shape == (len(X),)


def test_non_finite_network_outputs_raise_before_the_stream_steps(data):
    X, y = data
    clf = streaming(data)
    with torch.no_grad():
        clf.module_[0].bias.fill_(float("inf"))  # as from weights that overflowed
    before, stats = fitted_state(clf), clf.stream_stats()
    for method in (clf.predict, clf.predict_proba, clf.partial_predict,
                   clf.partial_predict_proba):
        with pytest.raises(ValueError, match="network's outputs are NaN or infinite"):
            method(X.iloc[:5])
        assert fitted_state(clf) == before and clf.stream_stats() == stats
    clf.reset_stream()
    del clf.stream_
    with pytest.raises(ValueError, match="NaN or infinite"):
        clf.partial_predict(X.iloc[:5])
    assert not hasattr(clf, "stream_")


def test_infinite_logits_raise_for_the_classifier(data):
    """The sigmoid would turn an infinite logit into a probability of exactly 0 or 1."""
    X, y = data
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, **FAST).fit(X, y)
    with torch.no_grad():
        clf.module_[-1].bias.fill_(float("inf"))
    with pytest.raises(ValueError, match="NaN or infinite for 400 of the 400 rows"):
        clf.predict_proba(X)


def test_first_stream_is_kept_only_when_its_first_step_succeeds(data, monkeypatch):
    from skfair import _streaming

    X, y = data
    clf = FairNeuralClassifier(protected_attributes=PROTECTED, **FAST).fit(X, y)

    def failing(self, z, groups):
        raise RuntimeError("step failed")

    monkeypatch.setattr(_streaming.PrimalDualStream, "step", failing)
    with pytest.raises(RuntimeError, match="step failed"):
        clf.partial_predict(X.iloc[:3])
    assert not hasattr(clf, "stream_")


def test_reset_stream_refuses_parameters_set_after_fit(data):
    X, y = data
    clf = streaming(data)
    stats = clf.stream_stats()
    clf.set_params(epsilon=True)
    with pytest.raises(ValueError, match="'epsilon' parameter"):
        clf.reset_stream()
    assert clf.stream_stats() == stats


def test_training_that_diverges_names_the_parameters_to_lower(data):
    X, y = data
    with pytest.raises(ValueError, match="Training diverged at epoch .* Lower learning_rate or "
                                         "distortion_penalty"):
        FairNeuralRegressor(protected_attributes=["sex"], **dict(FAST, learning_rate=1e30)).fit(
            X.drop(columns="race"), X["x1"])


def test_regressor_bounds_true_is_refused(data):
    """bounds accepts None (inferred), False (unbounded) or a pair; True has no meaning."""
    from sklearn.utils._param_validation import InvalidParameterError

    X, y = data
    reg = FairNeuralRegressor(protected_attributes=["sex"], bounds=True, **FAST)
    with pytest.raises(InvalidParameterError, match="'bounds' parameter"):
        reg.fit(X, X["x1"])
    assert not hasattr(reg, "module_")
