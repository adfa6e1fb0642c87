"""Fair predictions over a Dask collection: one exact projection of every row (skfair.dask).

Run from the repository root (needs the ``dask`` extra):

    python benchmarks/dask_scale.py                 # 1e6 and 1e7 rows, 1 and 2 workers
    python benchmarks/dask_scale.py --rows 1e6      # one size
    python benchmarks/dask_scale.py --huge          # adds 1e8 rows (2 workers only)

Data: the preprocessed Adult schema (numeric columns scaled, categorical ones one-hot, the two
protected columns ``sex`` and ``race`` passed through as strings), rows resampled with
replacement, generated per partition on the workers from a seed (each worker loads the
bundled Adult data once): the collection is never materialised on the client. Partitions have
262,144 rows (32 of the network's 8,192-row chunks, so that its float32 outputs are the same
bits as for one batch). Model: FairNeuralClassifier (demographic parity on both protected
columns, epsilon 0.02, hidden layers (32,)), fitted for two epochs on 5,000 rows.

``skfair.dask.predict_proba(clf, X)`` (``mode="global"``) on a ``distributed.LocalCluster``
of 1 or 2 worker processes with one thread each. Wall time: from the call to the fair
probabilities' per-group sums (computed on the workers from the lazy result: the outputs are
not collected), i.e. generating the rows, the network, persisting its outputs, the scan,
the solver's passes and one more pass to make the outputs. Passes: the solver's passes over
the persisted outputs (the scan of the atoms is one more). Client memory: peak growth of the
resident set of this process during the call (sampled every 5 ms). Worker memory: peak of
the workers' total resident memory (``distributed.diagnostics.MemorySampler``). Each cluster
first loads the Adult data on its workers and makes one small call (imports, the model's
transfer): not timed. The gap is
the largest difference of the groups' mean probabilities per attribute, computed
independently from those per-group sums. ``mode="partition"`` (every partition fair on its own,
one pass) is timed the same way for reference, and single-machine ``clf.predict_proba`` on
the concatenated rows where it fits in this process (1e6), with the largest difference from
the global result.
"""

import argparse
import gc
import os
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# the worker processes import this module (the partitions' generator) and _common
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(HERE), str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
from _common import markdown_table, print_header, split  # noqa: E402

PROTECTED = ["sex", "race"]
COLUMNS = [f"remainder__{a}" for a in PROTECTED]
PARTITION_ROWS = 32 * 8192
EPSILON = 0.02


@lru_cache(maxsize=1)
def adult():
    """The preprocessed Adult training frame and labels (once per process)."""
    from skfair.datasets import load_adult

    X, _, y, _ = split(load_adult(), 0)
    return X.reset_index(drop=True), y.reset_index(drop=True)


def partition(seed, rows):
    """``rows`` rows of the Adult schema resampled with the seed ``seed`` (on a worker)."""
    X, _ = adult()
    index = np.random.default_rng(seed).integers(0, len(X), rows)
    out = X.iloc[index]
    out.index = pd.RangeIndex(seed * PARTITION_ROWS, seed * PARTITION_ROWS + rows)
    return out


def collection(rows):
    """A dask DataFrame of ``rows`` rows, generated per partition where it is computed."""
    import dask.dataframe as dd

    sizes = [min(PARTITION_ROWS, rows - start) for start in range(0, rows, PARTITION_ROWS)]
    return dd.from_map(partition, range(len(sizes)), sizes, meta=adult()[0].iloc[:0],
                       enforce_metadata=False)


def model():
    from skfair import FairNeuralClassifier

    X, y = adult()
    index = np.random.default_rng(0).choice(len(X), 5000, replace=False)
    return FairNeuralClassifier(protected_attributes=PROTECTED, hidden_layer_sizes=(32,),
                                max_epochs=2, epsilon=EPSILON,
                                random_state=0).fit(X.iloc[index], y.iloc[index])


def group_sums(X, proba):
    """Per (attribute, group): the sum of the fair probabilities and the count (a partition)."""
    frame = pd.DataFrame({c: X[c].to_numpy() for c in COLUMNS})
    frame["p"] = proba[:, 1]
    return {c: frame.groupby(c)["p"].agg(["sum", "count"]) for c in COLUMNS}


def add_sums(*parts):
    return {c: pd.concat([p[c] for p in parts]).groupby(level=0).sum() for c in COLUMNS}


def gap(sums):
    return max(float((s["sum"] / s["count"]).max() - (s["sum"] / s["count"]).min())
               for s in sums.values())


class PeakRSS:
    """Peak growth of this process's resident set while in the block (sampled every 5 ms)."""

    def __enter__(self):
        import psutil

        self.process, self.stop = psutil.Process(), threading.Event()
        gc.collect()
        self.start = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.growth = (self.peak - self.start) / 2**20


def run_dask(clf, rows, mode):
    """``(seconds, info, gap, client MiB, workers' peak MiB)`` of one prediction."""
    import dask
    from distributed.diagnostics import MemorySampler

    import skfair.dask as sd

    X = collection(rows)
    sampler = MemorySampler()
    with sampler.sample("run", measure="process", interval=0.1), PeakRSS() as rss:
        start = time.perf_counter()
        out = sd.predict_proba(clf, X, mode=mode, return_info=True)
        proba, info = out
        parts = [dask.delayed(group_sums)(x, p)
                 for x, p in zip(X.to_delayed(), proba.to_delayed().ravel())]
        sums = dask.compute(dask.delayed(add_sums)(*parts))[0]
        seconds = time.perf_counter() - start
    workers = float(sampler.to_pandas()["run"].max()) / 2**20
    del proba
    return seconds, info, gap(sums), rss.growth, workers


def single_machine(clf, rows):
    """``(seconds, client MiB, proba)`` of ``clf.predict_proba`` on the concatenated rows."""
    sizes = [min(PARTITION_ROWS, rows - start) for start in range(0, rows, PARTITION_ROWS)]
    X = pd.concat([partition(i, n) for i, n in enumerate(sizes)])
    with PeakRSS() as rss:
        start = time.perf_counter()
        proba = clf.predict_proba(X)
        seconds = time.perf_counter() - start
    return seconds, rss.growth, proba, X


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=float, nargs="*", default=[1e6, 1e7])
    parser.add_argument("--huge", action="store_true", help="also 1e8 rows (2 workers)")
    args = parser.parse_args()
    import dask
    import distributed

    print_header("dask_scale.py")
    print(f"dask {dask.__version__}, distributed {distributed.__version__}\n")
    sizes = [int(r) for r in args.rows] + ([10**8] if args.huge else [])
    clf = model()
    table, local = [], []
    for workers in (1, 2):
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None, memory_limit=0) as cluster, \
                distributed.Client(cluster) as client:
            client.run(adult)  # load the Adult data once per worker (not timed)
            run_dask(clf, 20_000, "global")  # and a first call (imports, the model's transfer)
            for rows in sizes:
                if rows > 10**7 and workers == 1:
                    continue
                for mode in ("global", "partition"):
                    seconds, info, found, client_mib, worker_mib = run_dask(clf, rows, mode)
                    passes = "-" if info is None else f"{info['n_passes']} + 1"
                    table.append([f"{rows:.0e}", workers, mode, f"{seconds:.1f}", passes,
                                  f"{client_mib:.0f}", f"{worker_mib:.0f}", f"{found:.6f}"])
                    print("|", " | ".join(map(str, table[-1])), "|", file=sys.stderr)
                if rows <= 10**6 and workers == 2:
                    seconds, client_mib, proba, X = single_machine(clf, rows)
                    sums = group_sums(X, proba)
                    dask_proba = __import__("skfair.dask").dask.predict_proba(
                        clf, collection(rows)).compute()
                    local.append([f"{rows:.0e}", f"{seconds:.1f}", f"{client_mib:.0f}",
                                  f"{gap(sums):.6f}",
                                  f"{np.abs(dask_proba - proba).max():.1e}"])
                    del proba, X, dask_proba
    print(markdown_table(["rows", "workers", "mode", "wall s", "passes (solver + scan)",
                          "client MiB (peak growth)", "workers MiB (peak, total)",
                          "largest gap"], table))
    print()
    print(markdown_table(["rows", "single-machine predict_proba s", "process MiB (peak growth)",
                          "largest gap", "max difference from global"], local))


if __name__ == "__main__":
    main()
