"""Conventions of the PyTorch and scikit-learn ecosystems: torch.compile, skops persistence."""

import numpy as np
import pytest
import torch

from skfair import FairnessLayer


class _FairHeads(torch.nn.Module):
    """A network with a fairness layer inside: two heads projected as a batch of problems,
    then torch operators after the layer."""

    def __init__(self, n_features):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(n_features, 8), torch.nn.ReLU(),
                                        torch.nn.Linear(8, 2))
        self.fair = FairnessLayer("demographic_parity", epsilon=0.02)

    def forward(self, x, groups, target):
        scores = torch.sigmoid(self.body(x)).T  # (2 heads, n)
        fair = self.fair(scores, groups)
        return torch.nn.functional.binary_cross_entropy(fair.clamp(1e-6, 1 - 1e-6),
                                                        target.expand_as(fair))


def _step(model, x, groups, target):
    model.zero_grad()
    loss = model(x, groups, target)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


# "aot_eager" traces the forward and backward graphs as inductor would, and runs them with
# torch's eager kernels: no C compiler needed, and the autograd across the graph break is real.
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_runs_a_model_with_the_layer_like_eager_mode(backend):
    rng = np.random.default_rng(0)
    n = 64
    groups = torch.as_tensor(rng.integers(0, 2, n))
    x = torch.as_tensor(rng.normal(size=(n, 4)), dtype=torch.float32) + groups[:, None]
    target = torch.as_tensor(rng.integers(0, 2, n), dtype=torch.float32)
    model = _FairHeads(4)
    eager_loss, eager_grads = _step(model, x, groups, target)
    assert model.fair.last_solve_[0]["n_iter"] > 0  # the projection moved the outputs
    compiled = torch.compile(model, backend=backend)
    for _ in range(2):  # the second call runs the cached graphs
        loss, grads = _step(compiled, x, groups, target)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=0)
        for grad, want in zip(grads, eager_grads):
            torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7)
    assert len(model.fair.last_solve_) == 2
    assert all(info["max_violation"] <= 1e-9 for info in model.fair.last_solve_)


def test_full_graph_compilation_names_the_layer_as_a_graph_break():
    layer = FairnessLayer(epsilon=0.05)
    compiled = torch.compile(lambda z, groups: 2 * layer(z, groups), backend="eager",
                             fullgraph=True)
    with pytest.raises(RuntimeError, match="FairnessLayer is a graph break"):
        compiled(torch.rand(10, dtype=torch.float64), torch.randint(0, 2, (10,)))


# ------------------------------------------------------------------------------------------------
# Persistence with skops
FAST = dict(hidden_layer_sizes=(8,), max_epochs=5, batch_size=64, random_state=0)


def _skops_copy(estimator):
    """``estimator`` dumped with skops and loaded back, trusting the types the file lists;
    those are skfair's own (no torch type, nothing to unpickle)."""
    sio = pytest.importorskip("skops.io")
    data = sio.dumps(estimator)
    untrusted = sio.get_untrusted_types(data=data)
    assert untrusted and all(name.startswith("skfair.") for name in untrusted), untrusted
    return sio.loads(data, trusted=untrusted)


def _classifier_pipeline():
    from conftest import biased_frame
    from sklearn.compose import make_column_transformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skfair import FairNeuralClassifier

    X, y = biased_frame(400, categorical=True)
    prep = make_column_transformer((StandardScaler(), ["x1", "x2"]), remainder="passthrough",
                                   verbose_feature_names_out=False).set_output(transform="pandas")
    model = make_pipeline(prep, FairNeuralClassifier(protected_attributes=["sex", "race"],
                                                     epsilon=0.01, **FAST))
    return model.fit(X, y), X, y


def test_skops_round_trips_a_fitted_classifier_pipeline_with_its_stream_and_optimizer():
    """Everything a fitted classifier holds: the network, the groups' encoder, the multipliers
    keyed by the rows' tuples, partial_fit's optimizer state and a prediction stream. The
    loaded copy predicts the same, continues the stream the same and trains on the same."""
    pipe, X, y = _classifier_pipeline()
    clf = pipe[-1]
    assert clf.dual_init_ and all(isinstance(key, tuple) for key in clf.dual_init_)
    clf.partial_fit(pipe[0].transform(X), y)
    clf.partial_predict_proba(pipe[0].transform(X[:30]))
    loaded = _skops_copy(pipe)
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), pipe.predict(X))
    assert loaded[-1].dual_init_ == clf.dual_init_
    assert loaded[-1].stream_stats() == clf.stream_stats()
    batch = pipe[0].transform(X[30:50])
    np.testing.assert_array_equal(loaded[-1].partial_predict_proba(batch),
                                  clf.partial_predict_proba(batch))
    assert loaded[-1].stream_stats() == clf.stream_stats()
    features = pipe[0].transform(X)
    loaded[-1].partial_fit(features, y)
    clf.partial_fit(features, y)
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))


def test_skops_round_trips_a_regressor_pipeline():
    import pandas as pd
    from sklearn.compose import make_column_transformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from skfair import FairNeuralRegressor

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=300), "c": rng.choice(["u", "v", "w"], 300),
                      "g": rng.choice(["a", "b"], 300)})
    y = X["x"] + (X["g"] == "b") + 0.3 * (X["c"] == "u")
    prep = make_column_transformer(
        (StandardScaler(), ["x"]), (OneHotEncoder(sparse_output=False), ["c"]),
        remainder="passthrough", verbose_feature_names_out=False).set_output(transform="pandas")
    pipe = make_pipeline(prep, FairNeuralRegressor(protected_attributes=["g"], **FAST)).fit(X, y)
    loaded = _skops_copy(pipe)
    np.testing.assert_array_equal(loaded.predict(X), pipe.predict(X))
    assert loaded[-1].get_params() == pipe[-1].get_params()


def test_skops_round_trips_individual_inference_with_label_decisions():
    from conftest import biased_frame

    from skfair import FairNeuralClassifier

    X, y = biased_frame(400)
    X = X.drop(columns="race")
    clf = FairNeuralClassifier(protected_attributes=["sex"], inference="individual",
                               guarantee="labels", **FAST).fit(X, y)
    loaded = _skops_copy(clf)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))


class _Linear(torch.nn.Module):
    def __init__(self, n_inputs):
        super().__init__()
        self.linear = torch.nn.Linear(n_inputs, 1)

    def forward(self, x):
        return self.linear(x)


@pytest.mark.parametrize("as_instance", [False, True])
def test_a_custom_network_is_stored_by_pickle_and_joblib_and_refused_clearly_by_skops(
        as_instance, tmp_path):
    """A network given as ``module`` is torch code: pickle and joblib store it; skops, which
    loads without running code, cannot, and says what to use instead."""
    import pickle

    import joblib
    from conftest import biased_frame

    from skfair import FairNeuralClassifier

    sio = pytest.importorskip("skops.io")
    X, y = biased_frame(300)
    module = _Linear(4) if as_instance else _Linear
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], module=module,
                               **FAST).fit(X, y)
    want = clf.predict_proba(X)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X), want)
    joblib.dump(clf, tmp_path / "model.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "model.joblib").predict_proba(X), want)
    with pytest.raises(TypeError, match="skops cannot store the network _Linear.*pickle or "
                                        "joblib"):
        sio.dumps(clf)
    np.testing.assert_array_equal(clf.predict_proba(X), want)  # the failed dump changed nothing


def test_the_default_network_round_trips_through_pickle_as_plain_arrays():
    """pickle stores the state skops does: the default network as arrays, rebuilt on load."""
    import pickle

    from conftest import biased_frame

    from skfair import FairNeuralClassifier

    X, y = biased_frame(300)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], **FAST).fit(X, y)
    loaded = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert repr(loaded.module_) == repr(clf.module_)
    for (name, value), (_, original) in zip(loaded.module_.state_dict().items(),
                                            clf.module_.state_dict().items()):
        torch.testing.assert_close(value, original, rtol=0, atol=0, msg=name)


def test_saving_and_loading_leave_torch_random_numbers_alone():
    import copy
    import pickle

    from conftest import biased_frame

    from skfair import FairNeuralClassifier

    X, y = biased_frame(300)
    clf = FairNeuralClassifier(protected_attributes=["sex", "race"], **FAST).fit(X, y)
    torch.manual_seed(0)
    expected = torch.rand(3)
    for save_and_load in (lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy):
        torch.manual_seed(0)
        save_and_load(clf)
        torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_the_package_declares_its_annotations():
    """PEP 561: the py.typed marker ships with the package, and the public API is annotated."""
    import typing
    from pathlib import Path

    import skfair
    from skfair import metrics
    from skfair.layer import project

    assert (Path(skfair.__file__).parent / "py.typed").is_file()
    for function in (FairnessLayer.__init__, FairnessLayer.forward, project,
                     metrics.fairness_report, metrics.make_fairness_scorer, metrics.fair_refit,
                     *(getattr(metrics, name) for name in metrics.__all__
                       if name.endswith(("_difference", "_ratio")))):
        hints = typing.get_type_hints(function)
        assert "return" in hints, function.__qualname__
    assert typing.get_type_hints(FairnessLayer.forward)["return"] is torch.Tensor


def _public_callables(module):
    """Every function and class in ``module.__all__`` with the public methods, ``__init__`` and
    property getters that skfair defines on the classes (inherited ones included)."""
    import inspect

    for name in module.__all__:
        value = getattr(module, name)
        if not inspect.isclass(value):
            yield name, value
            continue
        for attribute, member in inspect.getmembers(value):
            if attribute.startswith("_") and attribute != "__init__":
                continue
            function = member.fget if isinstance(member, property) else member
            if (inspect.isfunction(function)
                    and function.__module__.split(".")[0] == "skfair"):
                yield f"{name}.{attribute}", function


def _annotation_only_names(module):
    """The names ``module`` imports under ``if TYPE_CHECKING:``, which its string annotations
    refer to (matplotlib and dask.dataframe stay optional at run time)."""
    import ast
    import inspect

    names = {}
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            exec(compile(ast.Module(node.body, type_ignores=[]), module.__file__, "exec"), names)
    return names


@pytest.mark.parametrize("module_name", ["skfair.classifier", "skfair.constraints", "skfair.dask",
                                         "skfair.datasets", "skfair.decisions", "skfair.layer",
                                         "skfair.pipeline", "skfair.plotting",
                                         "skfair.regressor"])
def test_the_public_functions_and_methods_of_every_module_are_annotated(module_name):
    """Every parameter (but self) and every return is annotated, and every annotation names
    something that exists: :func:`typing.get_type_hints` resolves it."""
    import importlib
    import inspect
    import typing

    if module_name in ("skfair.dask", "skfair.plotting"):
        pytest.importorskip("dask.dataframe" if module_name == "skfair.dask" else "matplotlib")
    module = importlib.import_module(module_name)
    names = _annotation_only_names(module)
    callables = list(_public_callables(module))
    assert {name.split(".")[0] for name, _ in callables} == set(module.__all__)
    for name, function in callables:
        hints = typing.get_type_hints(function, localns=names)
        parameters = [p for p in inspect.signature(function).parameters if p != "self"]
        assert [p for p in parameters if p not in hints] == [], name
        assert "return" in hints, name


@pytest.mark.parametrize("estimator, own_options", [
    ("FairNeuralClassifier", {"constrain", "guarantee", "class_weight"}),
    ("FairNeuralRegressor", set()),
])
def test_the_string_options_an_estimator_annotates_are_those_its_fit_accepts(estimator,
                                                                               own_options):
    """A parameter's ``Literal`` strings are the options of its ``_parameter_constraints``, so
    that a type checker and ``fit`` accept the same values (``fairness``, typed ``str``, names
    a constraint that ``fit`` looks up)."""
    import typing

    from sklearn.utils._param_validation import StrOptions

    import skfair

    cls = getattr(skfair, estimator)
    hints = typing.get_type_hints(cls.__init__)
    with_options = set()
    for name, constraints in cls._parameter_constraints.items():
        hint = hints[name]
        parts = [hint] if typing.get_origin(hint) is typing.Literal else typing.get_args(hint)
        if str in parts:
            continue
        annotated = {value for part in parts if typing.get_origin(part) is typing.Literal
                     for value in typing.get_args(part) if isinstance(value, str)}
        accepted = {option for c in constraints if isinstance(c, StrOptions)
                    for option in c.options}
        assert annotated == accepted, name
        if accepted:
            with_options.add(name)
    assert with_options == {"handle_unknown", "solver", "inference", "activation",
                            "learning_rate_schedule", "optimizer"} | own_options


def test_importing_skfair_and_its_modules_imports_neither_matplotlib_nor_dask():
    """The annotations that name matplotlib and dask.dataframe types keep them optional."""
    import subprocess
    import sys

    code = ("import sys, skfair, skfair.constraints, skfair.datasets, skfair.decisions, "
            "skfair.metrics, skfair.plotting; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'dask'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
