"""Shared setup of the benchmark scripts: bundled data, split and preprocessing."""

import time

from sklearn.compose import ColumnTransformer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def preprocessor(X, protected):
    """One-hot the categorical features, scale the numeric ones, pass protected columns through.

    The output is a DataFrame whose protected columns keep their values (as ``remainder__<name>``),
    which is what skfair's estimators and scorers look for.
    """
    protected = list(protected)
    categorical = [c for c in X.columns
                   if c not in protected and X[c].dtype.kind not in "biuf"]
    numeric = [c for c in X.columns if c not in protected and c not in categorical]
    return ColumnTransformer(
        [("num", StandardScaler(), numeric),
         ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)],
        remainder="passthrough",
    ).set_output(transform="pandas")


def split(bunch, seed, test_size=0.3):
    """Stratified train/test split of a dataset bunch, preprocessed (fit on the train part)."""
    stratify = bunch.target if bunch.target.dtype.kind not in "fc" else None
    X_train, X_test, y_train, y_test = train_test_split(
        bunch.data, bunch.target, test_size=test_size, random_state=seed, stratify=stratify)
    prep = preprocessor(bunch.data, bunch.protected).fit(X_train)
    return prep.transform(X_train), prep.transform(X_test), y_train, y_test


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_header(script):
    """The header of a section of RESULTS.md: the command, date, commit and machine."""
    import datetime
    import os
    import platform
    import subprocess

    import torch

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True,
                              text=True).stdout.strip()

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--", "skfair") else ""
    command = " ".join(["python", f"benchmarks/{script}", *__import__("sys").argv[1:]])
    print(f"Command: `{command}`  ")
    print(f"Date: {datetime.date.today().isoformat()}; commit {git('rev-parse', '--short', 'HEAD')}"
          f"{dirty}  ")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), numpy {__import__('numpy').__version__}\n")
