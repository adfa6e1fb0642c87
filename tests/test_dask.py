"""Hyper-parameter searches on a real ``distributed`` cluster (joblib's dask backend).

A ``LocalCluster`` of two worker processes (one thread each) is started and closed by this module.
The searches on it must give the same ``cv_results_`` as the same search run in-process.
"""

import os
import signal
import threading
import time

import numpy as np
import pytest
from joblib import parallel_backend
from scipy.stats import uniform
from sklearn.compose import make_column_transformer
from sklearn.model_selection import (GridSearchCV, RandomizedSearchCV, StratifiedKFold,
                                     train_test_split)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from skfair import FairNeuralClassifier
from skfair.datasets import load_adult
from skfair.metrics import demographic_parity_scorer, fair_refit

if os.environ.get("CI"):
    import distributed  # CI installs the dask extra: without it this module fails, not skips
else:
    distributed = pytest.importorskip("distributed")

FEATURES = ["age", "education_num", "hours_per_week", "capital_gain", "relationship", "sex"]
GRID = {"fairneuralclassifier__epsilon": [0.02, 0.1], "fairneuralclassifier__b_tau": [50, 100]}
SCORING = {"accuracy": "accuracy", "dp": demographic_parity_scorer}
THRESHOLD = 0.1  # fair_refit keeps candidates whose mean cross-validated gap is at most this


@pytest.fixture(scope="module")
def adult():
    """600 training and 600 held-out rows of Adult (protected: ``sex``), and the training
    rows' three stratified folds, as a list: the same splits for every search."""
    X, y = load_adult(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X[FEATURES], y, train_size=600, test_size=600, stratify=y, random_state=0)
    folds = list(StratifiedKFold(3).split(X_train, y_train))
    return X_train, X_test, y_train, y_test, folds


def pipeline():
    prep = make_column_transformer(
        (StandardScaler(), ["age", "education_num", "hours_per_week", "capital_gain"]),
        (OneHotEncoder(sparse_output=False, handle_unknown="ignore"), ["relationship"]),
        remainder="passthrough", verbose_feature_names_out=False,  # "sex" keeps its name
    ).set_output(transform="pandas")
    return make_pipeline(prep, FairNeuralClassifier(
        protected_attributes=["sex"], hidden_layer_sizes=(8,), max_epochs=5, batch_size=128,
        random_state=0))


def grid_search(folds):
    return GridSearchCV(pipeline(), GRID, scoring=SCORING, cv=folds,
                        refit=fair_refit(THRESHOLD, score="accuracy", gap="dp"))


def randomized_search(folds):
    distributions = {"fairneuralclassifier__epsilon": uniform(0.02, 0.1),
                     "fairneuralclassifier__b_tau": [50, 100]}
    return RandomizedSearchCV(pipeline(), distributions, n_iter=3, scoring=SCORING,
                              cv=folds[:2], random_state=0,
                              refit=fair_refit(THRESHOLD, score="accuracy", gap="dp"))


def assert_same_results(search, reference):
    """Equal ``cv_results_``, exactly, except the wall-clock columns; the same refit choice.

    Exactly, because every fit is a deterministic function of its data, parameters and
    ``random_state`` (its seed and its torch generator are derived from ``random_state`` in
    ``fit``, whatever process runs it), and the folds are fixed. Torch's thread count differs
    (one on the workers, whose nanny sets ``OMP_NUM_THREADS=1``; every core in-process), but the
    layers of this network are far below the size at which torch splits an operation between
    threads, so no sum is reordered.
    """
    results, expected = search.cv_results_, reference.cv_results_
    assert results.keys() == expected.keys()
    for key, value in expected.items():
        if key.endswith("_time"):
            continue
        if key == "params":
            assert results[key] == value
        else:
            np.testing.assert_array_equal(np.asarray(results[key]), np.asarray(value),
                                          err_msg=key)
    assert search.best_index_ == reference.best_index_
    assert search.best_params_ == reference.best_params_


def warm_compiled_solver():
    """One tiny fit in this process: numba's on-disk cache of the compiled solver is then full,
    and every worker loads it instead of compiling it again."""
    X, y = load_adult(return_X_y=True)
    FairNeuralClassifier(protected_attributes=["sex"], hidden_layer_sizes=(4,), max_epochs=1,
                         random_state=0).fit(X[["age", "sex"]][:200], y[:200])


@pytest.fixture(scope="module")
def client():
    warm_compiled_solver()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as client:
            client.wait_for_workers(2)
            yield client


@pytest.fixture(scope="module")
def reference_grid(adult):
    """The grid search in this process, with joblib's default backend and ``n_jobs=1``."""
    X_train, _, y_train, _, folds = adult
    return grid_search(folds).fit(X_train, y_train)


def fit_on_cluster(client, search, X, y, **backend):
    """Fit ``search`` with joblib's dask backend; the workers that ran its tasks."""
    with distributed.get_task_stream(client) as stream:
        with parallel_backend("dask", **backend):
            search.fit(X, y)
    return {task["worker"] for task in stream.data}


def test_grid_search_on_cluster_equals_in_process(client, adult, reference_grid):
    X_train, X_test, y_train, _, folds = adult
    search = grid_search(folds)
    workers = fit_on_cluster(client, search, X_train, y_train)
    assert workers == set(client.scheduler_info()["workers"])  # both workers fitted candidates
    assert len(search.cv_results_["params"]) == 4
    assert_same_results(search, reference_grid)

    # fair_refit's choice: the most accurate candidate whose mean cross-validated gap is within
    # the threshold; its held-out predictions (one batch >= b_tau) meet its epsilon exactly
    results = search.cv_results_
    fair = np.flatnonzero(-results["mean_test_dp"] <= THRESHOLD + 1e-7)
    assert search.best_index_ == fair[np.argmax(results["mean_test_accuracy"][fair])]
    best = search.best_estimator_
    epsilon = best[-1].epsilon
    proba = best.predict_proba(X_test)[:, 1]
    sex = X_test["sex"].to_numpy()
    means = [proba[sex == group].mean() for group in np.unique(sex)]
    assert len(means) == 2
    assert max(means) - min(means) <= epsilon + 1e-9


def test_randomized_search_on_cluster_equals_in_process(client, adult):
    X_train, _, y_train, _, folds = adult
    reference = randomized_search(folds).fit(X_train, y_train)
    search = randomized_search(folds)
    fit_on_cluster(client, search, X_train, y_train)
    assert len(search.cv_results_["params"]) == 3
    assert_same_results(search, reference)


def test_search_survives_a_worker_killed_mid_search(client, adult, reference_grid):
    """A worker process killed while it runs the search's tasks: its nanny starts a new one, the
    scheduler runs the lost tasks again, and the search ends with the same results.

    joblib's dask backend scatters every argument larger than 1 kB (X, y, the folds' index
    arrays) to *one* worker; if that worker dies, the data is lost for good and the search fails
    with ``FutureCancelledError``. To survive, the search broadcasts its inputs to every worker
    (``scatter=``; the folds given as a list so that its arrays are the ones scattered) and the
    active memory manager, which would drop the extra copies, is paused.
    """
    X_train, _, y_train, _, folds = adult
    scatter = [X_train, y_train] + [indices for fold in folds for indices in fold]
    pids = client.run(os.getpid)  # worker address -> process id
    victim, pid = sorted(pids.items())[0]
    finished = threading.Event()
    killed = []

    def kill_when_busy():
        while not finished.is_set():
            if client.processing(workers=[victim]).get(victim):  # tasks of the search on it
                os.kill(pid, signal.SIGKILL)
                killed.append(victim)
                return
            time.sleep(0.005)

    client.amm.stop()
    killer = threading.Thread(target=kill_when_busy)
    try:
        killer.start()
        search = grid_search(folds)
        fit_on_cluster(client, search, X_train, y_train, scatter=scatter)
    finally:
        finished.set()
        killer.join()
        client.amm.start()
    assert killed == [victim]  # killed while the search ran
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it, as a new process
    assert pid not in client.run(os.getpid).values()
    assert_same_results(search, reference_grid)


def test_dask_ml_incremental_and_parallel_post_fit(client, adult):
    """dask-ml's Incremental trains through partial_fit, one call per partition (classes
    repeated on every call, as it does), and ParallelPostFit predicts per partition: on the
    cluster, both equal the same calls made by hand."""
    dask_ml_wrappers = pytest.importorskip("dask_ml.wrappers")
    import dask.dataframe as dd
    import numpy as np

    X_train, X_test, y_train, _, _ = adult
    prep = pipeline()[:-1].fit(X_train)
    X, X_new = prep.transform(X_train), prep.transform(X_test)
    Xd, yd = dd.from_pandas(X, npartitions=3), dd.from_pandas(y_train, npartitions=3)
    params = dict(protected_attributes=["sex"], hidden_layer_sizes=(8,), batch_size=64,
                  random_state=0)
    classes = np.unique(y_train)
    incremental = dask_ml_wrappers.Incremental(
        FairNeuralClassifier(**params), predict_proba_meta=np.empty((0, 2)),
        shuffle_blocks=False)  # the partitions in order, as by hand
    incremental.fit(Xd, yd, classes=classes)
    by_hand = FairNeuralClassifier(**params)
    for part in range(3):
        by_hand.partial_fit(Xd.partitions[part].compute(), yd.partitions[part].compute(),
                            classes=classes)
    assert incremental.estimator_.n_iter_ == by_hand.n_iter_ == 3
    np.testing.assert_allclose(incremental.estimator_.predict_proba(X_new),
                               by_hand.predict_proba(X_new), atol=1e-12)
    post = dask_ml_wrappers.ParallelPostFit(by_hand, predict_proba_meta=np.empty((0, 2)))
    X_new_d = dd.from_pandas(X_new, npartitions=2)
    expected = np.vstack([by_hand.predict_proba(X_new_d.partitions[i].compute())
                          for i in range(2)])
    np.testing.assert_allclose(post.predict_proba(X_new_d).compute(), expected, atol=1e-12)
