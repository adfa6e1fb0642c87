"""Iterations of the exact solver over many random instances: how many passes over the data a
projection takes, and whether any instance fails.

Run from the repository root:

    python benchmarks/convergence.py           # full run (a few minutes)
    python benchmarks/convergence.py --quick   # smoke run

Every instance is a binding demographic parity problem (epsilon = 0.05, bounds [0, 1]): scores
``sigmoid(normal + offset of the group)``, so that the group means differ by far more than
epsilon. "far-out" instances also move 1% of the raw scores to +-1e8 (raw outputs far outside the
bounds). Each instance is projected once through ``FairnessLayer(solver="exact")``; the table
gives the iterations the layer reports (both solves, when the first result is polished), the
median time, the worst violation of the returned outputs relative to their scale
(``max(1, |y|, |h|)``), and the failures by exception type.
"""

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, print_header  # noqa: E402

from skfair import FairnessLayer  # noqa: E402

CONFIGS = {
    "1 attribute, 2 groups": ([2], False),
    "2 attributes, 2 and 5 groups": ([2, 5], False),
    "1 attribute, 10 groups": ([10], False),
    "2 attributes, far-out": ([2, 5], True),
}


def instance(n, cards, far_out, seed):
    rng = np.random.default_rng(seed)
    groups = np.stack([rng.integers(0, k, n) for k in cards], axis=1)
    offsets = [rng.normal(0, 1.5, k) for k in cards]
    logit = rng.normal(size=n) + sum(o[groups[:, a]] for a, o in enumerate(offsets))
    z = 1 / (1 + np.exp(-logit))
    if far_out:
        chosen = rng.random(n) < 0.01
        z[chosen] = rng.choice([-1e8, 1e8], chosen.sum())
    return torch.as_tensor(z), torch.as_tensor(groups)


def run(n, cards, far_out, seeds):
    layer = FairnessLayer("demographic_parity", epsilon=0.05, bounds=(0.0, 1.0), solver="exact")
    iterations, times, worst, failures = [], [], 0.0, Counter()
    for seed in seeds:
        z, groups = instance(n, cards, far_out, seed)
        start = time.perf_counter()
        try:
            y = layer(z, groups)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            failures[type(exc).__name__] += 1
            continue
        times.append(time.perf_counter() - start)
        iterations.append(layer.last_solve_["n_iter"])
        y = y.numpy()
        gap = max(np.ptp([y[groups[:, a].numpy() == g].mean()
                          for g in np.unique(groups[:, a].numpy())])
                  for a in range(groups.shape[1]))
        worst = max(worst, (gap - 0.05) / max(1.0, np.abs(y).max()))
    return iterations, times, worst, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = {10_000: 40, 100_000: 20, 1_000_000: 10}
    if args.quick:
        sizes = {10_000: 5, 100_000: 3}
    print_header("convergence.py")
    print("## Iterations of the exact solver (demographic parity, epsilon 0.05, bounds [0, 1])\n")
    rows = []
    for name, (cards, far_out) in CONFIGS.items():
        for n, count in sizes.items():
            iterations, times, worst, failures = run(n, cards, far_out, range(count))
            rows.append([name, f"{n:,}", count,
                         statistics.median(iterations) if iterations else "-",
                         max(iterations) if iterations else "-",
                         f"{1e3 * statistics.median(times):.1f}" if times else "-",
                         f"{worst:.1e}",
                         ", ".join(f"{k} {v}" for k, v in failures.items()) or "none"])
    print(markdown_table(["instances", "n", "seeds", "median iterations", "max iterations",
                          "median ms", "worst violation beyond epsilon (relative)", "failures"],
                         rows))


if __name__ == "__main__":
    main()
