"""Training cost of the fairness layer: seconds per epoch with and without it, on Adult.

Run from the repository root:

    python benchmarks/training.py             # full run
    python benchmarks/training.py --quick     # smoke run

The same network (default MLP (64, 64), Adam) is trained on Adult (all rows) with demographic
parity on sex and race through the layer, and without it, on the same inputs (the protected
attributes as the fair estimator encodes them into its network's inputs). The two models train
epoch by epoch in alternation (``warm_start``, one epoch per call, the order flipping every
round: 15 rounds by default, after one epoch each not counted), so that both see the same
machine load; the ratio is the median over the rounds of each round's fair / plain epoch
seconds, with its quartiles. The machine's speed drifts on the scale of seconds, and a round's
two epochs are adjacent in time. qpth: one epoch of a 1-epoch fit, small batches only.

Each batch size is measured with the estimators' ``n_jobs`` (torch threads) at the machine's
processor count and at one (``--threads``); ``--load N`` runs N busy processes beside the
measurement, as a machine shared with other work is.
"""

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.preprocessing import OneHotEncoder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, preprocessor, print_header  # noqa: E402

from skfair import FairNeuralClassifier  # noqa: E402
from skfair.datasets import load_adult  # noqa: E402


def epoch_seconds(model, X, y):
    """Seconds of the epoch(s) trained by ``model.fit`` (setup and validation excluded)."""
    done = len(getattr(model, "history_", []))
    model.fit(X, y)
    return [r["seconds"] for r in model.history_[done:]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", default=f"{os.cpu_count()},1",
                        help="comma-separated n_jobs (torch threads) of the estimators "
                             "(default: the processor count, then 1)")
    parser.add_argument("--load", type=int, default=0,
                        help="busy processes running beside the measurement")
    args = parser.parse_args()
    print_header("training.py")
    data = load_adult()
    X, y = data.data, data.target
    if args.quick:
        X, y, args.rounds = X.iloc[:8000], y.iloc[:8000], min(args.rounds, 3)
    protected = data.protected
    X_fair = preprocessor(X, protected).fit_transform(X)
    # The plain network gets exactly the fair network's inputs: the protected attributes encoded
    # as the estimator encodes them (a 0/1 column for a binary one, else one-hot), after the
    # other columns. (Inputs of another width would make the matrix products differ.)
    codes = OneHotEncoder(drop="if_binary", sparse_output=False).fit_transform(X[protected])
    X_plain = np.hstack([X_fair.drop(columns=[f"remainder__{c}" for c in protected])
                         .to_numpy(dtype=np.float64), codes])
    sizes = [64, 256] if args.quick else [64, 256, 1024, 4096]
    # A small fit first: the first projection of a process loads the compiled solver.
    FairNeuralClassifier(protected_attributes=protected, max_epochs=1).fit(X_fair[:500], y[:500])
    thread_counts = [int(t) for t in args.threads.split(",")]
    rows = []
    with busy_processes(args.load):
        for batch_size in sizes:
            for threads in thread_counts:
                rows.append(measure(batch_size, threads, thread_counts[0], args.rounds, X_fair,
                                    X_plain, y, protected))
    load = f", {args.load} busy processes beside it" if args.load else ""
    print(f"## Training overhead (Adult, {len(X)} rows, DP on {protected}, {args.rounds} rounds "
          f"of one epoch each, alternating{load})\n")
    print(markdown_table(["batch size", "torch threads (n_jobs)", "no layer s/epoch",
                          "exact s/epoch", "exact / no layer: median of rounds (quartiles)",
                          "qpth s/epoch (ratio)"], rows))


@contextlib.contextmanager
def busy_processes(n):
    """``n`` processes spinning on a processor each for the duration."""
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for process in spinning:
            process.kill()
            process.wait()


def measure(batch_size, threads, first_threads, rounds, X_fair, X_plain, y, protected):
    """One row of the table: epoch seconds without and with the layer, their ratio, and qpth's
    (small batches, first thread count only)."""
    common = dict(batch_size=batch_size, max_epochs=1, random_state=0, tol=0.0,
                  warm_start=True, n_jobs=threads)
    models = {"plain": (FairNeuralClassifier(**common), X_plain),
              "exact": (FairNeuralClassifier(protected_attributes=protected, **common), X_fair)}
    for model, X_used in models.values():
        model.fit(X_used, y)  # the first epoch, not counted
    seconds = {name: [] for name in models}
    for round_ in range(rounds):
        for name in list(models)[::-1] if round_ % 2 else models:
            model, X_used = models[name]
            seconds[name] += epoch_seconds(model, X_used, y)
    ratios = np.array(seconds["exact"]) / np.array(seconds["plain"])
    plain, exact = statistics.median(seconds["plain"]), statistics.median(seconds["exact"])
    low, median, high = np.percentile(ratios, [25, 50, 75])
    qpth = "-"
    if batch_size <= 256 and threads == first_threads:
        model = FairNeuralClassifier(protected_attributes=protected, solver="qpth",
                                     **dict(common, warm_start=False))
        qpth_s = epoch_seconds(model, X_fair, y)[0]
        qpth = f"{qpth_s:.2f} ({qpth_s / plain:.1f}x)"
    return [batch_size, threads, f"{plain:.3f}", f"{exact:.3f}",
            f"{median:.2f}x ({low:.2f}-{high:.2f})", qpth]


if __name__ == "__main__":
    main()
