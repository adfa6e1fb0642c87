"""The estimator boundary: predict_proba time and memory, validation's share of fit, one-row
stream calls and the first call of a fresh process.

Run from the repository root:

    python benchmarks/input_speed.py           # 1e4, 1e5 and 1e6 rows (a few minutes)
    python benchmarks/input_speed.py --quick   # 1e4 and 1e5 rows

Data: the preprocessed Adult schema (numeric columns scaled, categorical ones one-hot, the two
protected columns ``sex`` and ``race`` passed through as strings), rows resampled with
replacement to each size. skfair's FairNeuralClassifier (demographic parity on both protected
columns, default MLP (64, 64)) is compared with scikit-learn's MLPClassifier of the same
hidden layers on the same data, as a DataFrame and as an array (for the MLP the protected
columns one-hot, as skfair's network sees them; skfair gets them as strings in the DataFrame
and as codes in the array), both fitted briefly: the figures are about prediction, not
accuracy. Times are medians of 15 calls at 10,000 rows (a few milliseconds each, so that one
slow call moves nothing) and of 3 above; memory is the growth of the resident set of a fresh
process during one call (sampled every millisecond), next to the size of the input.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, print_header, split  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROTECTED = ["sex", "race"]
#: calls of predict_proba timed at 10,000 rows (their median is the figure)
SMALL_REPEATS = 15


def data(rows, seed=0):
    """The Adult training frame (preprocessed) resampled to ``rows`` rows, its labels, and the
    numeric matrix scikit-learn's MLP gets (protected columns one-hot)."""
    from skfair.datasets import load_adult

    X, _, y, _ = split(load_adult(), 0)
    index = np.random.default_rng(seed).integers(0, len(X), rows)
    X, y = X.iloc[index].reset_index(drop=True), y.iloc[index].reset_index(drop=True)
    numeric = pd.get_dummies(X, columns=[f"remainder__{a}" for a in PROTECTED], dtype=float)
    return X, y, numeric


def models(X, y, numeric):
    from sklearn.neural_network import MLPClassifier

    from skfair import FairNeuralClassifier

    fair = FairNeuralClassifier(protected_attributes=PROTECTED, max_epochs=1, random_state=0)
    fair.fit(X, y)
    mlp = MLPClassifier((64, 64), max_iter=1, random_state=0).fit(numeric.to_numpy(), y)
    return fair, mlp


def median_seconds(call, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def prediction_table(sizes):
    """predict_proba seconds: skfair on a DataFrame and on a numeric array (protected columns
    as codes), scikit-learn's MLP, and skfair's network alone."""
    X, y, numeric = data(10_000)
    fair, mlp = models(X, y, numeric)
    rows = []
    for size in sizes:
        X, _, numeric = data(size, seed=size)
        codes = X.copy()
        for attribute in PROTECTED:
            column = f"remainder__{attribute}"
            codes[column] = pd.Categorical(X[column]).codes
        array = codes.to_numpy(dtype=np.float64)
        positional = type(fair)(**{**fair.get_params(), "protected_attributes": [
            codes.columns.get_loc(f"remainder__{a}") for a in PROTECTED]})
        positional.fit(array[:10_000], y)
        features, _ = fair._validate_X(X, reset=False)

        def forward():  # as prediction runs it (in chunks, its threads), from validated features
            with fair._torch_threads():
                fair._network_outputs(features)

        matrix = numeric.to_numpy(dtype=np.float64)
        repeats = SMALL_REPEATS if size <= 10_000 else 3
        frame = median_seconds(lambda: fair.predict_proba(X), repeats)
        reference_frame = median_seconds(lambda: mlp.predict_proba(numeric), repeats)
        plain = median_seconds(lambda: positional.predict_proba(array), repeats)
        reference = median_seconds(lambda: mlp.predict_proba(matrix), repeats)
        network = median_seconds(forward, repeats)
        rows.append([f"{size:,}", f"{frame:.3f}", f"{reference_frame:.3f}",
                     f"{frame / reference_frame:.2f}x", f"{plain:.3f}", f"{reference:.3f}",
                     f"{plain / reference:.2f}x", f"{network:.3f}"])
    return markdown_table(["rows", "skfair, DataFrame s", "MLP, DataFrame s", "ratio",
                           "skfair, array s", "MLP, array s", "ratio",
                           "skfair's network alone s"], rows)


MEMORY_SCRIPT = """
import gc, os, sys, threading, time
sys.path.insert(0, {bench!r})
import input_speed as b
X, y, numeric = b.data(10_000)
fair, mlp = b.models(X, y, numeric)
X, _, numeric = b.data({rows}, seed=1)
numeric = numeric.to_numpy()
size = X.memory_usage(deep=True).sum() if {case!r} == "skfair" else numeric.nbytes
page = os.sysconf("SC_PAGE_SIZE")

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page

gc.collect()
before, peak, done = resident(), [0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], resident())
        time.sleep(0.001)

watcher = threading.Thread(target=sample)
watcher.start()
if {case!r} == "skfair":
    fair.predict_proba(X)
else:
    mlp.predict_proba(numeric)
done.set()
watcher.join()
print(size, max(peak[0], resident()) - before)
"""


def memory_table(rows):
    """Peak growth of a fresh process's resident set during one predict_proba call (sampled
    every millisecond, above the resident set before it)."""
    out = []
    for case in ("skfair", "sklearn"):
        script = MEMORY_SCRIPT.format(bench=str(ROOT / "benchmarks"), rows=rows, case=case)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                cwd=ROOT, check=True)
        size, extra = map(float, result.stdout.split()[-2:])
        out.append([case, f"{rows:,}", f"{size / 2**20:.0f}", f"{extra / 2**20:.0f}",
                    f"{extra / size:.2f}x"])
    return markdown_table(["predict_proba of", "rows", "input MiB", "peak growth MiB",
                           "growth / input"], out)


def validation_table():
    """The validation of X (fit's first step) against a ten-epoch fit on Adult."""
    from skfair import FairNeuralClassifier
    from skfair.datasets import load_adult

    X, _, y, _ = split(load_adult(), 0)
    model = FairNeuralClassifier(protected_attributes=PROTECTED, max_epochs=10,
                                 random_state=0)
    fit = median_seconds(lambda: model.fit(X, y), repeats=1)
    validate = median_seconds(lambda: model._validate_X(X, reset=True))
    return markdown_table(["rows", "fit s (10 epochs)", "validation of X s", "share"],
                          [[f"{len(X):,}", f"{fit:.2f}", f"{validate:.3f}",
                            f"{validate / fit:.1%}"]])


def stream_table(calls=2000):
    """One-row partial_predict_proba: the whole call, its validation and network pass, and the
    stream's step (medians over calls)."""
    X, y, numeric = data(10_000)
    fair, _ = models(X, y, numeric)
    fair.reset_stream()
    rows = [X.iloc[[i]] for i in range(calls)]
    whole, raw, step = [], [], []
    for row in rows:
        start = time.perf_counter()
        fair.partial_predict_proba(row)
        whole.append(time.perf_counter() - start)
    stream = fair.stream_
    for row in rows:
        start = time.perf_counter()
        out, groups = fair._raw_outputs(row)
        middle = time.perf_counter()
        stream.step(out, groups.to(out.device))
        end = time.perf_counter()
        raw.append(middle - start)
        step.append(end - middle)
    ms = [1e3 * statistics.median(v) for v in (whole, raw, step)]
    return markdown_table(["call", "median ms"],
                          [["partial_predict_proba, one row", f"{ms[0]:.3f}"],
                           ["  validation and network pass", f"{ms[1]:.3f}"],
                           ["  stream step", f"{ms[2]:.3f}"]])


FIRST_CALL = """
import time
start = time.perf_counter()
import numpy as np, torch, skfair
imported = time.perf_counter()
from skfair import FairNeuralClassifier, FairnessLayer
layer = FairnessLayer("demographic_parity", epsilon=0.05)
layer(torch.rand(500, dtype=torch.float64), torch.randint(0, 2, (500,)))
projected = time.perf_counter()
rng = np.random.default_rng(0)
X = np.c_[rng.normal(size=(2000, 4)), rng.integers(0, 2, 2000)]
y = (X[:, 0] + rng.normal(size=2000) > 0).astype(int)
FairNeuralClassifier(protected_attributes=[4], max_epochs=2).fit(X, y).predict_proba(X)
fitted = time.perf_counter()
print(imported - start, projected - imported, fitted - projected)
"""


def first_call_table():
    """A fresh process: import time, its first projection and its first fit (2,000 rows, two
    epochs, and a predict_proba), with numba's on-disk cache of compiled code as earlier runs
    left it (warm) and empty (a fresh installation: ``NUMBA_CACHE_DIR`` pointed at an empty
    directory)."""
    rows = []
    for cache in ("warm", "empty"):
        with tempfile.TemporaryDirectory() as empty:
            env = dict(os.environ, **({"NUMBA_CACHE_DIR": empty} if cache == "empty" else {}))
            result = subprocess.run([sys.executable, "-c", FIRST_CALL], capture_output=True,
                                    text=True, cwd=ROOT, check=True, env=env)
        imported, projected, fitted = map(float, result.stdout.split())
        rows.append([cache, f"{imported:.2f}", f"{projected:.2f}", f"{fitted:.2f}"])
    return markdown_table(["compile cache", "import torch and skfair s",
                           "first projection (500 rows) s", "then a first fit s"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_header("input_speed.py")
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    print(f"\n## predict_proba, Adult schema (medians of {SMALL_REPEATS} calls at 10,000 rows, "
          f"3 above)\n")
    print(prediction_table(sizes))
    print("\n## Peak memory of one predict_proba call (fresh process)\n")
    print(memory_table(sizes[-1]))
    print("\n## Validation's share of a ten-epoch fit (Adult training split)\n")
    print(validation_table())
    print("\n## One-row stream calls\n")
    print(stream_table())
    print("\n## First call of a fresh process\n")
    print(first_call_table())


if __name__ == "__main__":
    main()
