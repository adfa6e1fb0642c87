"""Streaming inference: per-batch latency of partial_predict_proba and convergence of the stream.

Run from the repository root:

    python benchmarks/streaming.py            # full run (a few minutes)
    python benchmarks/streaming.py --quick    # smoke run
    python benchmarks/streaming.py --only-batch-sizes   # the table of fixed batch sizes only

Prints two markdown tables: latency (median and p99 milliseconds per call) for batch sizes 1, 8,
64 and b_tau; and, for a stream of batches of random size 1..32 drawn from the Adult test set, the
weighted-average gap (the guaranteed quantity), the finite-T bound, the pooled gap and the mean
per-batch violation at several T, cold and warm started, next to the raw network outputs.
A third table streams the whole Adult test set in batches of a fixed size (1, 8, 32, 64 and
b_tau - 1): accuracy and AUC next to the raw network and the exact projection of the whole test
set, the mean per-batch violation, the weighted-average gap against epsilon + bound, and the
share of outputs saturated at exactly 0 or 1 (medians over several fits and stream orders).
A fourth table streams the same batches through ``partial_predict`` with ``guarantee="labels"``:
accuracy of the streamed decisions next to the exact fair labels of the whole test set and to
``p > 0.5``, selection-rate gaps, and the decisions' weighted-average gap against epsilon + bound.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, split, print_header  # noqa: E402

from skfair import FairNeuralClassifier  # noqa: E402
from skfair.datasets import load_adult  # noqa: E402
from skfair.metrics import demographic_parity_difference  # noqa: E402


def latency_table(model, X, sizes, repeats, rng):
    rows = []
    for size in sizes:
        model.reset_stream()
        times = []
        for _ in range(repeats):
            start = int(rng.integers(0, len(X) - size))
            batch = X.iloc[start:start + size]
            t0 = time.perf_counter()
            model.partial_predict_proba(batch)
            times.append((time.perf_counter() - t0) * 1e3)
        regime = "exact projection" if size >= model.b_tau else "primal-dual step"
        rows.append([size, regime, f"{statistics.median(times):.3f}",
                     f"{np.percentile(times, 99):.3f}"])
    return markdown_table(["batch size", "regime", "median ms", "p99 ms"], rows)


def convergence_table(model, X, checkpoints, seed):
    rng = np.random.default_rng(seed)
    n_batches = max(checkpoints)
    sizes = rng.integers(1, 33, n_batches)
    starts = rng.integers(0, len(X) - 32, n_batches)
    results = {}
    for label, warm in (("cold", False), ("warm", True)):
        model.set_params(stream_warm_start=warm)
        model.reset_stream()
        for t, (start, size) in enumerate(zip(starts, sizes), 1):
            model.partial_predict_proba(X.iloc[start:start + size])
            if t in checkpoints:
                results[(label, t)] = model.stream_stats()
    rows = []
    for t in sorted(checkpoints):
        row = [t]
        for label in ("cold", "warm"):
            s = results[(label, t)]
            row += [f"{s['weighted_avg_fairness_gap']:.4f}", f"{s['bound']:.4f}",
                    f"{s['pooled_fairness_gap']:.4f}", f"{s['mean_batch_violation']:.4f}"]
        rows.append(row)
    header = ["T"] + [f"{label} {name}" for label in ("cold", "warm")
                      for name in ("weighted gap", "bound", "pooled gap", "batch violation")]
    return markdown_table(header, rows)


def raw_gaps(model, X, seed, n_batches):
    """The network's own (clipped) outputs on the same batches: mean per-batch gap (batches with
    a single group count 0) and the gap of all of them pooled."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 33, n_batches)
    starts = rng.integers(0, len(X) - 32, n_batches)
    proba = model._predict_unconstrained(X)
    sensitive = X[[f"remainder__{c}" for c in model.group_encoder_.names]]
    total, rows = 0.0, []
    for start, size in zip(starts, sizes):
        batch = np.arange(start, start + size)
        rows.append(batch)
        groups = sensitive.iloc[batch]
        if (groups.nunique() > 1).any():
            informative = groups.loc[:, groups.nunique() > 1]
            total += size * demographic_parity_difference(
                None, proba[batch], sensitive_features=informative, intersectional=False)
    pooled = np.concatenate(rows)
    return total / sizes.sum(), demographic_parity_difference(
        None, proba[pooled], sensitive_features=sensitive.iloc[pooled], intersectional=False)


def stream_orders(n, sizes, orders, seed):
    """``(size, order)`` for every batch size and each of ``orders`` random orders of ``n``
    rows (the same orders for every size)."""
    rng = np.random.default_rng(seed)
    for _ in range(orders):
        order = rng.permutation(n)
        for size in sizes:
            yield size, order


def stream_through(method, X, order, size, out):
    """``out`` filled with ``method`` (a stream call) on the rows of ``X`` in ``order``, in
    batches of ``size`` rows."""
    for start in range(0, len(X), size):
        rows = order[start:start + size]
        out[rows] = method(X.iloc[rows])
    return out


def batch_size_runs(model, X, y, sizes, orders, seed):
    """One row of measures per (batch size, stream order): the whole of ``X`` streamed through
    ``partial_predict_proba`` in batches of that size, in a random order (warm started)."""
    positive = np.asarray(y) == model.classes_[1]
    raw = model._predict_unconstrained(X)
    exact = model.predict_proba(X)[:, 1]  # >= b_tau

    def scores(p):
        return (accuracy_score(positive, p > 0.5), roc_auc_score(positive, p),
                float(np.mean((p == 0) | (p == 1))))

    reference = scores(raw) + scores(exact)
    runs = {}
    for size, order in stream_orders(len(X), sizes, orders, seed):
        model.reset_stream()
        p = stream_through(lambda batch: model.partial_predict_proba(batch)[:, 1], X, order,
                           size, np.empty(len(X)))
        s = model.stream_stats()
        stateless = stream_through(lambda batch: model.predict_proba(batch)[:, 1], X,
                                   np.arange(len(X)), size, np.empty(len(X)))
        runs.setdefault(size, []).append(
            scores(p) + reference + (s["mean_batch_violation"], s["weighted_avg_fairness_gap"],
                                     s["epsilon"] + s["bound"],
                                     accuracy_score(positive, stateless > 0.5)))
    return runs


def batch_size_table(runs):
    """Medians over the runs of :func:`batch_size_runs` (merged over fits)."""
    rows = []
    for size in sorted(runs):
        (acc, auc, sat, raw_acc, raw_auc, raw_sat, ex_acc, ex_auc, ex_sat, violation, gap, bound,
         stateless) = np.median(np.array(runs[size]), axis=0)
        rows.append([size, f"{acc:.4f}", f"{ex_acc:.4f}", f"{raw_acc:.4f}", f"{acc - ex_acc:+.4f}",
                     f"{auc:.4f}", f"{ex_auc:.4f}", f"{raw_auc:.4f}", f"{violation:.4f}",
                     f"{gap:.4f}", f"{bound:.4f}", f"{sat:.3f}", f"{ex_sat:.3f}", f"{raw_sat:.3f}",
                     f"{stateless:.4f}"])
    header = ["batch size", "acc stream", "acc exact", "acc raw", "stream - exact",
              "AUC stream", "AUC exact", "AUC raw", "mean batch violation", "weighted gap",
              "eps + bound", "saturated stream", "saturated exact", "saturated raw",
              "acc stateless (predict per batch)"]
    return markdown_table(header, rows)


def decision_runs(model, X, y, sizes, orders, seed):
    """One row of measures per (batch size, stream order) for decisions: the whole of ``X``
    streamed through ``partial_predict`` with ``guarantee="labels"`` in batches of that size."""
    model = model.set_params(guarantee="labels")
    truth = np.asarray(y)
    exact = model.predict(X)  # the whole test set: fair labels, exactly
    plain = model.set_params(guarantee="proba").predict(X)  # p > 0.5 of the fair probabilities
    model.set_params(guarantee="labels")
    protected = X[[f"remainder__{a}" for a in model.protected_attributes]]

    def measures(labels):
        selected = labels == model.classes_[1]
        gap = max(pd.Series(selected).groupby(protected[c].to_numpy()).mean().pipe(
            lambda r: r.max() - r.min()) for c in protected.columns)
        return accuracy_score(truth, labels), gap

    reference = measures(exact) + measures(plain)
    runs = {}
    for size, order in stream_orders(len(X), sizes, orders, seed):
        model.reset_stream()
        labels = stream_through(model.partial_predict, X, order, size,
                                np.empty(len(X), dtype=exact.dtype))
        s = model.stream_stats()["labels"]
        runs.setdefault(size, []).append(
            measures(labels) + reference + (s["mean_batch_violation"],
                                            s["weighted_avg_fairness_gap"],
                                            s["epsilon"] + s["bound"]))
    model.set_params(guarantee="proba")
    return runs


def decision_table(runs):
    """Medians over the runs of :func:`decision_runs` (merged over fits)."""
    rows = []
    for size in sorted(runs):
        (acc, gap, ex_acc, ex_gap, plain_acc, plain_gap, violation, weighted,
         bound) = np.median(np.array(runs[size]), axis=0)
        rows.append([size, f"{acc:.4f}", f"{ex_acc:.4f}", f"{plain_acc:.4f}",
                     f"{acc - ex_acc:+.4f}", f"{gap:.4f}", f"{ex_gap:.4f}", f"{plain_gap:.4f}",
                     f"{violation:.4f}", f"{weighted:.4f}", f"{bound:.4f}"])
    header = ["batch size", "acc stream", "acc exact labels", "acc p > 0.5", "stream - exact",
              "rate gap stream", "rate gap exact", "rate gap p > 0.5", "mean batch violation",
              "weighted gap", "eps + bound"]
    return markdown_table(header, rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only-batch-sizes", action="store_true",
                        help="print only the table of fixed batch sizes")
    args = parser.parse_args()
    print_header("streaming.py")
    data = load_adult()
    X_train, X_test, y_train, y_test = split(data, args.seed)
    model = FairNeuralClassifier(protected_attributes=["sex", "race"], epsilon=0.05,
                                 max_epochs=3 if args.quick else 10, random_state=args.seed)
    model.fit(X_train, y_train)
    if not args.only_batch_sizes:
        print_convergence(model, X_test, args)
    fits, orders = (1, 1) if args.quick else (3, 2)
    sizes = [1, 8, 32, 64, model.b_tau - 1]
    runs, decisions = {}, {}
    for seed in range(args.seed, args.seed + fits):
        if seed != args.seed:
            X_train, X_test, y_train, y_test = split(data, seed)
            model = FairNeuralClassifier(**model.get_params()).set_params(random_state=seed)
            model.fit(X_train, y_train)
        if args.quick:
            X_test, y_test = X_test.iloc[:3000], y_test.iloc[:3000]
        for size, rows in batch_size_runs(model, X_test, y_test, sizes, orders, seed).items():
            runs.setdefault(size, []).extend(rows)
        for size, rows in decision_runs(model, X_test, y_test, sizes, orders, seed).items():
            decisions.setdefault(size, []).extend(rows)
    print(f"\n## Fixed batch sizes (Adult test set streamed whole, warm start, epsilon="
          f"{model.epsilon}, eta0={model.eta0 or 'default'}, b_tau={model.b_tau}; medians over "
          f"{fits} fits x {orders} stream orders)\n")
    print(batch_size_table(runs))
    print(f"\n## Decisions: fixed batch sizes (guarantee='labels', partial_predict; the rate gap "
          f"is the largest selection-rate difference over {', '.join(model.protected_attributes)}"
          f" on the whole streamed test set; medians over {fits} fits x {orders} orders)\n")
    print(decision_table(decisions))


def print_convergence(model, X_test, args):
    rng = np.random.default_rng(args.seed)
    print(f"## Streaming latency (FairNeuralClassifier, default MLP {model.hidden_layer_sizes}, "
          f"b_tau={model.b_tau})\n")
    print(latency_table(model, X_test, [1, 8, 64, model.b_tau], 50 if args.quick else 500, rng))
    checkpoints = [100, 300, 1000] if args.quick else [100, 300, 1000, 3000, 10000]
    print(f"\n## Stream convergence (epsilon={model.epsilon}, eta0={model.eta0 or 'default'}, "
          f"batch sizes 1..32, Adult test rows)\n")
    print(convergence_table(model, X_test, checkpoints, args.seed))
    batch_gap, pooled = raw_gaps(model, X_test, args.seed, max(checkpoints))
    print(f"\nThe network's own outputs on the same {max(checkpoints)} batches, without the "
          f"algorithm: mean per-batch gap {batch_gap:.4f}, pooled gap {pooled:.4f}.")


if __name__ == "__main__":
    main()
