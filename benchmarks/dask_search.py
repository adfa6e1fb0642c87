"""Searches on a Dask cluster: the cluster's start, a fresh worker's first fit, a search's time.

Run from the repository root (needs the ``dask`` extra):

    python benchmarks/dask_search.py            # 2,000 Adult rows, 20 epochs
    python benchmarks/dask_search.py --quick    # 600 rows, 5 epochs

Three tables:

- the start of a ``distributed.LocalCluster`` of two worker processes (one thread each), until
  both workers are connected;
- a fresh worker's first ``fit`` of a small FairNeuralClassifier (importing torch and skfair,
  then the fit that loads or compiles the solver's numba code, then a second fit), with numba's
  on-disk cache in an empty ``NUMBA_CACHE_DIR`` (the worker compiles the solver), in the same
  directory afterwards (the worker loads it), and where numba keeps it by default (beside the
  installed package when it is writable, filled by this process's warm-up fit);
- a ``GridSearchCV`` over epsilon and b_tau (4 candidates, 3 folds, demographic parity on
  ``sex``, the fairness scorer and ``fair_refit``) run in this process (``n_jobs=1``, torch's
  default number of threads and one thread) and with ``joblib.parallel_backend("dask")`` on the
  two workers: on fresh workers (their first fits included) and again on the same workers.

Every time is one run, in seconds: other processes on the machine move them.
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, print_header  # noqa: E402

FEATURES = ["age", "education_num", "hours_per_week", "capital_gain", "relationship", "sex"]


def first_fits():
    """Run on a fresh worker: seconds to import torch and skfair, of a first fit and a second."""
    import time

    start = time.perf_counter()
    import numpy as np
    import pandas as pd
    import torch  # noqa: F401

    from skfair import FairNeuralClassifier
    imported = time.perf_counter()
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=400), "sex": rng.choice(["F", "M"], 400)})
    y = (X["x"] + rng.normal(size=400) > 0).astype(int)
    seconds = [imported - start]
    for _ in range(2):
        start = time.perf_counter()
        FairNeuralClassifier(protected_attributes=["sex"], hidden_layer_sizes=(8,), max_epochs=3,
                             random_state=0).fit(X, y).predict_proba(X)
        seconds.append(time.perf_counter() - start)
    return seconds


@contextlib.contextmanager
def local_cluster(n_workers=2, env=None):
    """A client of a new LocalCluster of ``n_workers`` processes (one thread each, environment
    ``env``), and the seconds until they were all connected."""
    import distributed

    start = time.perf_counter()
    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", env=env or {}) as cluster:
        with distributed.Client(cluster) as client:
            client.wait_for_workers(n_workers)
            yield client, time.perf_counter() - start


def fresh_worker(env):
    """:func:`first_fits` on the one worker of a new LocalCluster whose processes get ``env``."""
    with local_cluster(1, env) as (client, _):
        return client.submit(first_fits, pure=False).result()


def data(rows):
    from sklearn.model_selection import StratifiedKFold, train_test_split

    from skfair.datasets import load_adult

    X, y = load_adult(return_X_y=True)
    X, _, y, _ = train_test_split(X[FEATURES], y, train_size=rows, stratify=y, random_state=0)
    return X, y, list(StratifiedKFold(3).split(X, y))


def grid_search(folds, epochs):
    from sklearn.compose import make_column_transformer
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from skfair import FairNeuralClassifier
    from skfair.metrics import demographic_parity_scorer, fair_refit

    prep = make_column_transformer(
        (StandardScaler(), ["age", "education_num", "hours_per_week", "capital_gain"]),
        (OneHotEncoder(sparse_output=False, handle_unknown="ignore"), ["relationship"]),
        remainder="passthrough", verbose_feature_names_out=False,
    ).set_output(transform="pandas")
    model = make_pipeline(prep, FairNeuralClassifier(
        protected_attributes=["sex"], hidden_layer_sizes=(16,), max_epochs=epochs,
        batch_size=128, random_state=0))
    grid = {"fairneuralclassifier__epsilon": [0.02, 0.1],
            "fairneuralclassifier__b_tau": [50, 100]}
    return GridSearchCV(model, grid, cv=folds,
                        scoring={"accuracy": "accuracy", "dp": demographic_parity_scorer},
                        refit=fair_refit(0.1, score="accuracy", gap="dp"))


def timed_search(X, y, folds, epochs, backend=None):
    from joblib import parallel_backend

    search = grid_search(folds, epochs)
    start = time.perf_counter()
    if backend is None:
        search.fit(X, y)
    else:
        with parallel_backend(backend):
            search.fit(X, y)
    return time.perf_counter() - start


def main():
    import warnings

    import distributed
    import torch
    from sklearn.exceptions import ConvergenceWarning

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows, epochs = (600, 5) if args.quick else (2000, 20)
    warnings.simplefilter("ignore", ConvergenceWarning)
    print_header("dask_search.py")
    print(f"dask {__import__('dask').__version__}, distributed {distributed.__version__}\n")

    first_fits()  # this process: fills numba's default on-disk cache, if it was empty
    with local_cluster() as (_, started):
        pass
    print("## LocalCluster start (2 worker processes, 1 thread each)\n")
    print(markdown_table(["", "seconds"], [["start until both workers connect",
                                            f"{started:.2f}"]]))

    rows_fresh = []
    with tempfile.TemporaryDirectory() as cache:
        for label, env in [("empty NUMBA_CACHE_DIR", {"NUMBA_CACHE_DIR": cache}),
                           ("the same NUMBA_CACHE_DIR, filled", {"NUMBA_CACHE_DIR": cache}),
                           ("numba's default cache (filled)", {})]:
            seconds = fresh_worker(env)
            rows_fresh.append([label] + [f"{s:.2f}" for s in seconds])
    print("\n## A fresh worker's first fit (400 rows, MLP (8,), 3 epochs)\n")
    print(markdown_table(["numba cache", "import torch, skfair", "first fit", "second fit"],
                         rows_fresh))

    X, y, folds = data(rows)
    timed_search(X, y, folds, 1)  # warm this process (the first torch calls)
    rows_search = [["in-process, n_jobs=1, torch default threads "
                    f"({torch.get_num_threads()})", timed_search(X, y, folds, epochs)]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows_search.append(["in-process, n_jobs=1, 1 torch thread",
                        timed_search(X, y, folds, epochs)])
    torch.set_num_threads(threads)
    with local_cluster() as (_, started):
        rows_search.append(["dask, 2 fresh workers (first fits included)",
                            timed_search(X, y, folds, epochs, "dask")])
        rows_search.append(["dask, the same 2 workers again",
                            timed_search(X, y, folds, epochs, "dask")])
    rows_search.append(["(cluster start, not included above)", started])
    print(f"\n## GridSearchCV, 4 candidates x 3 folds ({rows} Adult rows, MLP (16,), {epochs} "
          f"epochs)\n")
    print(markdown_table(["run", "seconds"], [[r, f"{s:.2f}"] for r, s in rows_search]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the workers' convergence warnings
    main()
