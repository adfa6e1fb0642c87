"""Speed and accuracy of the fairness projection: the exact dual Newton solver against qpth,
a cvxpylayers layer rebuilt per call, and a plain sigmoid.

Run from the repository root (needs the `bench` extra and qpth, see the README):

    python benchmarks/projection.py            # full run (about 5 minutes)
    python benchmarks/projection.py --quick    # smoke run
    python benchmarks/projection.py --million  # only the 1,000,000-sample table, in a fresh process
    python benchmarks/projection.py --groups   # only the tables of many groups and cells
    python benchmarks/projection.py --labels   # only the cost of fair labels

Demographic parity (epsilon = 0.05) between two groups with biased scores. Times are medians of
several runs in milliseconds, measured side by side in one run (the compared calls alternate;
against cvxpylayers both call by call and in blocks of calls);
"fwd+bwd" adds the backward pass of sum(w * y) for random w. The exact solver is timed through
the public path (`layer.project`, so the feasibility check users pay for is included); qpth through
the same dense QP the layer builds (Q = 2I, p = -2z, box rows appended, float64, deliberate
iteration limits), without the check, and its worst constraint violation is reported as returned.
"""

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, print_header  # noqa: E402

from skfair.constraints import get_constraint  # noqa: E402
from skfair._qpth import qpth_project  # noqa: E402
from skfair.layer import project  # noqa: E402

EPS = 0.05


def problem(n, n_attributes=1, seed=0):
    rng = np.random.default_rng(seed)
    cards = [2, 5][:n_attributes]
    groups = torch.as_tensor(np.stack([rng.integers(0, k, n) for k in cards], axis=1))
    z = torch.as_tensor(np.clip(rng.beta(2, 5, n) + 0.3 * (groups[:, 0].numpy() == 1), 0, 1))
    return z, groups


def median_ms(fn, repeats):
    return paired_ms([fn], repeats)[0]


def paired_ms(fns, repeats, block=1):
    """Median milliseconds of every function, called in turn in each round.

    Interleaving keeps the ratios fair on a shared machine whose speed drifts during a run. In
    each round every function runs ``block`` times in a row: with ``block=1`` each call follows
    the other function's (cold caches), with larger blocks most calls follow their own.
    """
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            for _ in range(block):
                start = time.perf_counter()
                fn()
                record.append(time.perf_counter() - start)
    return [1e3 * statistics.median(record) for record in times]


def exact(z, groups, bounds, backward):
    z = z.clone().requires_grad_(backward)
    cs = get_constraint("demographic_parity").build(groups, epsilon=EPS)
    y, _ = project(z, cs, bounds, "exact")
    if backward:
        (y * torch.linspace(-1, 1, len(y), dtype=y.dtype)).sum().backward()
    return y.detach()


def qpth(z, groups, bounds, backward):
    z = z.clone().requires_grad_(backward)
    cs = get_constraint("demographic_parity").build(groups, epsilon=EPS)
    lo, hi = bounds if bounds is not None else (None, None)
    y = qpth_project(z, cs, lo, hi)
    if backward:
        (y * torch.linspace(-1, 1, len(y), dtype=y.dtype)).sum().backward()
    return y.detach(), float(cs.violation(y.detach()))


def cvxpylayers_rebuilt(z, groups, bounds):
    """What a naive implementation does: define the problem and build the layer at every call."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    n = len(z)
    G = get_constraint("demographic_parity").build(groups, epsilon=EPS).dense().numpy()
    y, z_param = cp.Variable(n), cp.Parameter(n)
    cons = [G @ y <= EPS, y >= bounds[0], y <= bounds[1]]
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(y - z_param)), cons),
                       parameters=[z_param], variables=[y])
    zz = z.clone().requires_grad_(True)
    (out,) = layer(zz)
    (out * torch.linspace(-1, 1, n, dtype=out.dtype)).sum().backward()
    return out.detach()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--million", action="store_true",
                        help="only the 1,000,000-sample table (before anything else has run in "
                             "the process: the full run measures it after qpth's large matrices)")
    parser.add_argument("--groups", action="store_true",
                        help="only the tables of many groups and intersectional cells")
    parser.add_argument("--labels", action="store_true", help="only the cost of fair labels")
    args = parser.parse_args()
    print_header("projection.py")
    repeats = 3 if args.quick else 15
    if args.groups:
        many_groups(repeats)
        intersectional_adult()
        return
    if args.labels:
        label_cost(3 if args.quick else 5)
        return
    if not args.million:
        small_problems(args, repeats)
    million(repeats)


def small_problems(args, repeats):
    sizes = [64, 256, 1024] if args.quick else [64, 256, 1024, 4096, 16384, 65536]
    qpth_max = 256 if args.quick else 1024
    for bounds in [(0.0, 1.0), None]:
        rows = []
        for n in sizes if bounds is not None else sizes[:4]:
            z, groups = problem(n)
            fns = [lambda: exact(z, groups, bounds, False), lambda: exact(z, groups, bounds, True)]
            if n <= qpth_max:
                fns += [lambda: qpth(z, groups, bounds, False),
                        lambda: qpth(z, groups, bounds, True)]
                timed = paired_ms(fns, max(1, repeats // (3 if n >= 1024 else 1)))
            else:
                timed = paired_ms(fns, repeats)
            fwd, both = timed[:2]
            row = [n, f"{fwd:.2f}", f"{both:.2f}"]
            if n <= qpth_max:
                q_fwd, q_both = timed[2:]
                y_q, violation = qpth(z, groups, bounds, False)
                diff = float((exact(z, groups, bounds, False) - y_q).abs().max())
                row += [f"{q_fwd:.1f}", f"{q_both:.1f}", f"{q_both / both:.0f}x",
                        f"{diff:.1e}", f"{violation:.1e}"]
            else:
                row += ["-"] * 5
            rows.append(row)
        title = "bounds [0, 1]" if bounds is not None else "no bounds"
        print(f"## Exact vs qpth, demographic parity, two groups, {title}\n")
        print(markdown_table(["n", "exact fwd ms", "exact fwd+bwd ms", "qpth fwd ms",
                              "qpth fwd+bwd ms", "qpth/exact (fwd+bwd)", "max |y_exact - y_qpth|",
                              "qpth max violation"], rows))
        print()

    n = 512
    z, groups = problem(n)
    fns = [lambda: exact(z, groups, (0.0, 1.0), True),
           lambda: cvxpylayers_rebuilt(z, groups, (0.0, 1.0))]
    diff = float((exact(z, groups, (0.0, 1.0), False)
                  - cvxpylayers_rebuilt(z, groups, (0.0, 1.0))).abs().max())
    rows = []
    # Call by call, each of our calls follows a 60 ms cvxpylayers call that evicts our code and
    # data from the caches; in blocks, most calls run as they would in a loop of their own.
    for label, rounds, block in [("alternating calls", repeats, 1),
                                 ("alternating blocks of 20 calls", max(1, repeats // 5), 20)]:
        ours, theirs = paired_ms(fns, rounds, block)
        rows.append([label, f"{ours:.2f}", f"{theirs:.1f}", f"{theirs / ours:.0f}x",
                     f"{diff:.1e}"])
    print("## Exact vs a cvxpylayers layer rebuilt per call (n = 512, fwd+bwd, bounds [0, 1])\n")
    print(markdown_table(["order", "exact ms", "cvxpylayers ms", "ratio", "max |difference|"],
                         rows))
    print()


def million(repeats):
    n = 1_000_000
    z, groups = problem(n, n_attributes=2)
    raw32, raw64 = torch.randn(n, dtype=torch.float32), torch.randn(n, dtype=torch.float64)
    # The sigmoids run in loops of their own (their outputs reuse freed memory: their fastest
    # case), before and after the projection; the faster of the two medians is reported.
    sig32 = median_ms(lambda: torch.sigmoid(raw32), repeats)
    sig64 = median_ms(lambda: torch.sigmoid(raw64), repeats)
    proj = median_ms(lambda: exact(z, groups, (0.0, 1.0), False), repeats)
    sig32 = min(sig32, median_ms(lambda: torch.sigmoid(raw32), repeats))
    sig64 = min(sig64, median_ms(lambda: torch.sigmoid(raw64), repeats))
    print("## 1,000,000 samples, two attributes (2 and 5 groups, 22 rows), bounds [0, 1]\n")
    print(markdown_table(
        ["exact fwd ms", "sigmoid float32 ms", "sigmoid float64 ms", "exact / sigmoid float64",
         "exact / sigmoid float32"],
        [[f"{proj:.1f}", f"{sig32:.2f}", f"{sig64:.2f}", f"{proj / sig64:.0f}x",
          f"{proj / sig32:.0f}x"]]))


def many_groups(repeats):
    """One attribute of k groups at n = 1e6: the build of the rows and the exact projection,
    against a float64 sigmoid over the same outputs (both timed alternately)."""
    n = 1_000_000
    rows = []
    raw = torch.randn(n, dtype=torch.float64)
    for k in [2, 10, 30, 100, 300, 1000]:
        rng = np.random.default_rng(k)
        groups = torch.as_tensor(rng.integers(0, k, n))
        bias = rng.uniform(0, 0.5, k)  # every group its own bias: most groups move
        z = torch.as_tensor(np.clip(rng.beta(2, 5, n) + bias[groups.numpy()], 0, 1))
        constraint = get_constraint("demographic_parity")

        def projected():
            cs = constraint.build(groups, epsilon=EPS)
            return project(z, cs, (0.0, 1.0), "exact")

        proj, sig = paired_ms([projected, lambda: torch.sigmoid(raw)], repeats)
        y, info = projected()
        means = np.bincount(groups.numpy(), y.numpy()) / np.bincount(groups.numpy())
        rows.append([k, f"{k * (k - 1):,}", f"{proj:.1f}", f"{proj / sig:.0f}x", info["n_iter"],
                     f"{means.max() - means.min() - EPS:.1e}"])
    print("## Many groups: one attribute, n = 1,000,000, demographic parity, bounds [0, 1]\n")
    print(markdown_table(["groups k", "pair rows k(k-1)", "build + exact ms",
                          "/ sigmoid float64", "iterations", "gap - epsilon (numpy means)"],
                         rows))
    print()


def intersectional_adult():
    """Every row of Adult through ``predict_proba`` of a classifier fitted for one epoch with
    intersectional protected attributes: three (sex x race x native_country) and four (and
    relationship)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from skfair import FairNeuralClassifier
    from skfair.datasets import load_adult

    data = load_adult()
    X, y = data.data, data.target
    numeric = ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
    rows = []
    for protected in [["sex", "race", "native_country"],
                      ["sex", "race", "native_country", "relationship"]]:
        categorical = [c for c in ["workclass", "education", "marital_status", "occupation",
                                   "relationship", "native_country"] if c not in protected]
        prep = ColumnTransformer(
            [("num", StandardScaler(), numeric),
             ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)],
            remainder="passthrough", verbose_feature_names_out=False)
        Xt = prep.set_output(transform="pandas").fit_transform(X)
        clf = FairNeuralClassifier(protected_attributes=protected, intersectional=True,
                                   epsilon=EPS, max_epochs=1, random_state=0)
        clf.fit(Xt, y)  # the first fit loads the compiled training step
        start = time.perf_counter()
        clf.fit(Xt, y)
        fit = time.perf_counter() - start
        times = []
        for _ in range(3):
            start = time.perf_counter()
            proba = clf.predict_proba(Xt)[:, 1]
            times.append(time.perf_counter() - start)
        cells = Xt[protected].astype(str).agg("|".join, axis=1).to_numpy()
        _, codes = np.unique(cells, return_inverse=True)
        means = np.bincount(codes, proba) / np.bincount(codes)
        k = int(means.size)
        rows.append([" x ".join(protected), k, f"{k * (k - 1):,}", f"{fit:.1f}",
                     f"{statistics.median(times):.2f}", f"{means.max() - means.min():.4f}"])
    print(f"## Intersectional cells on all of Adult ({len(X):,} rows), predict_proba, "
          f"epsilon {EPS}\n")
    print(markdown_table(["protected (crossed)", "cells", "pair rows", "fit 1 epoch s",
                          "predict_proba s (median of 3)", "max cell gap"], rows))
    print()


def label_cost(repeats):
    """The label step (:func:`skfair.decisions.fair_labels`) against the exact projection of the
    same probabilities, demographic parity at epsilon 0.02, timed alternately."""
    from skfair.decisions import fair_labels

    rows = []
    settings = [("one attribute, 2 groups", (2,), False),
                ("one attribute, 10 groups", (10,), False),
                ("2 x 5 crossed (10 cells)", (2, 5), True),
                ("2 and 5 groups, marginal (integer program)", (2, 5), False)]
    for label, cards, intersectional in settings:
        sizes = [1_000, 10_000, 100_000] + ([1_000_000] if len(cards) == 1 or intersectional
                                            else [])
        for n in sizes:
            rng = np.random.default_rng(n)
            codes = np.stack([rng.integers(0, k, n) for k in cards], axis=1)
            proba = np.clip(rng.beta(2, 5, n) + 0.2 * (codes[:, 0] == 1), 0, 1)
            groups = torch.as_tensor(codes)
            if intersectional:
                from skfair.constraints import intersect_groups
                groups = intersect_groups(groups)
            z = torch.as_tensor(proba)
            constraint = get_constraint("demographic_parity")

            def projected():
                return project(z, constraint.build(groups, epsilon=0.02), (0.0, 1.0), "exact")

            def labelled():
                return fair_labels(proba, codes, 0.02, intersectional=intersectional)

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)
                proj, lab = paired_ms([projected, labelled], repeats)
            limited = any("time limit" in str(w.message) for w in caught)
            rows.append([label, f"{n:,}", f"{proj:.1f}", f"{lab:.1f}", f"{lab / proj:.1f}x",
                         "yes" if limited else "no"])
    print("## Cost of fair labels (demographic parity of selection rates, epsilon 0.02)\n")
    print(markdown_table(["groups", "n", "projection ms", "labels ms", "labels / projection",
                          "integer program at its time limit"], rows))
    print()


if __name__ == "__main__":
    main()
