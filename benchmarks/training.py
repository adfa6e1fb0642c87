"""Training cost of the fairness layer: seconds per epoch with and without it, on Adult.

Run from the repository root:

    python benchmarks/training.py             # full run
    python benchmarks/training.py --quick     # smoke run

The same network (default MLP (64, 64), Adam) is trained on the Adult training split with
demographic parity on sex and race, through the layer (exact and qpth solvers) and without it (the
protected attributes one-hot encoded as plain inputs). Plain and fair fits alternate in rounds (5
rounds of 2 epochs by default; the order flips every round, so that a drift of the machine's speed
does not favour either); the ratio is the median over the rounds of each round's fair / plain
seconds per epoch, with the range over the rounds; qpth: one 1-epoch fit, small batches only.

Each batch size is measured with torch's default number of threads and with one thread
(``--threads``): with several threads, torch's OpenMP workers fall asleep while the layer's
host code runs, and waking them slows the network's own operations that follow.
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, preprocessor  # noqa: E402

from skfair import FairNeuralClassifier  # noqa: E402
from skfair.datasets import load_adult  # noqa: E402


def epoch_seconds(model, X, y):
    model.fit(X, y)
    return [r["seconds"] for r in model.history_]


def seconds_per_epoch(model, X, y):
    return statistics.median(epoch_seconds(model, X, y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", default=f"{torch.get_num_threads()},1",
                        help="comma-separated torch thread counts (default: torch's, then 1)")
    args = parser.parse_args()
    data = load_adult()
    X, y = data.data, data.target
    if args.quick:
        X, y = X.iloc[:8000], y.iloc[:8000]
    protected = data.protected
    X_fair = preprocessor(X, protected).fit_transform(X)
    # The plain network gets the protected attributes as one-hot inputs, like the fair one.
    X_plain = preprocessor(X, []).fit_transform(X)
    sizes = [64, 256] if args.quick else [64, 256, 1024, 4096]
    fits = [("plain", X_plain, {}), ("exact", X_fair, {"protected_attributes": protected})]
    # A small fit first: the first projection of a process loads the compiled solver.
    FairNeuralClassifier(protected_attributes=protected, max_epochs=1).fit(X_fair[:500], y[:500])
    rows = []
    for batch_size in sizes:
        for threads in map(int, args.threads.split(",")):
            torch.set_num_threads(threads)
            common = dict(batch_size=batch_size, max_epochs=args.epochs, random_state=0, tol=0.0)
            # Plain and fair fits alternate, so that both see the same machine load.
            plain, exact, ratios = [], [], []
            for round_ in range(args.rounds):
                seconds = {}
                for name, X_used, extra in fits[::-1] if round_ % 2 else fits:
                    seconds[name] = epoch_seconds(FairNeuralClassifier(**extra, **common),
                                                  X_used, y)
                plain += seconds["plain"]
                exact += seconds["exact"]
                ratios.append(statistics.median(seconds["exact"])
                              / statistics.median(seconds["plain"]))
            plain, exact = statistics.median(plain), statistics.median(exact)
            qpth = "-"
            if batch_size <= 256 and threads == int(args.threads.split(",")[0]):
                model = FairNeuralClassifier(protected_attributes=protected, solver="qpth",
                                             **dict(common, max_epochs=1))
                qpth_s = seconds_per_epoch(model, X_fair, y)
                qpth = f"{qpth_s:.2f} ({qpth_s / plain:.1f}x)"
            rows.append([batch_size, threads, f"{plain:.3f}", f"{exact:.3f}",
                         f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})",
                         qpth])
    print(f"## Training overhead (Adult, {len(X)} rows, DP on {protected}, {args.rounds} rounds "
          f"of alternating fits x {args.epochs} epochs)\n")
    print(markdown_table(["batch size", "torch threads", "no layer s/epoch", "exact s/epoch",
                          "exact / no layer: median of rounds (range)", "qpth s/epoch (ratio)"],
                         rows))


if __name__ == "__main__":
    main()
