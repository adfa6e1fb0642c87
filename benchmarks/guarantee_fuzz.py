"""Long-run fuzzing of the projection's guarantee against an independent oracle.

Runs N seeded random instances (the instance space of ``tests/test_guarantee_properties.py``:
every built-in constraint, 1-4 attributes of 2-30 groups, marginal and intersectional, every
epsilon and bounds, z far outside the bounds, ties, float32/float64, weights up to a ratio of
1e12) through :class:`skfair.FairnessLayer` and judges each with ``tests/_oracle.py``. Prints a
markdown table per (constraint, bounds, dtype) family: instances tried, failures, worst
violation (relative to the output scale), worst distance excess over the Clarabel reference
(relative), exceptions by type and time. With ``--minimise``, one failure of every kind is
shrunk (samples dropped, values rounded) and printed as a snippet.

    python benchmarks/guarantee_fuzz.py [-n 3000] [--seed 0] [--max-n 2000] [--minimise]
"""

import argparse
import dataclasses
import os
import sys
import time
import warnings
from collections import Counter, defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from _oracle import MAX_PAIR_ROWS, check, pair_rows, random_instance  # noqa: E402

from _common import markdown_table, print_header  # noqa: E402


def kind(outcome):
    """A short name of what went wrong (the failure classes of the report)."""
    if outcome.ok:
        return None
    text = outcome.problems[0]
    for prefix in ("unfair output", "outputs outside the bounds", "not the projection",
                   "y differs", "InfeasibleConstraintError on a feasible", "returned outputs",
                   "non-finite output", "output dtype"):
        if text.startswith(prefix):
            return prefix
    return text.split(":")[0]


def minimise(inst, what, budget=400):
    """Drop samples and round values while the failure keeps its kind."""
    def fails(candidate):
        nonlocal budget
        budget -= 1
        try:
            return kind(check(candidate, with_reference=candidate.n <= 60)) == what
        except Exception:  # noqa: BLE001 - a broken candidate is not a reproduction
            return False

    def subset(inst, keep):
        pick = (lambda a: None if a is None else a[keep])
        return dataclasses.replace(inst, z=inst.z[keep], groups=inst.groups[keep],
                                   y_true=pick(inst.y_true), sample_weight=pick(inst.sample_weight))

    chunk = max(1, inst.n // 2)
    while chunk >= 1 and budget > 0:
        i, changed = 0, False
        while i < inst.n and budget > 0:
            keep = np.r_[0:i, min(inst.n, i + chunk):inst.n]
            if 0 < len(keep) < inst.n and fails(candidate := subset(inst, keep)):
                inst, changed = candidate, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    for field in ("z", "y_true", "sample_weight"):
        for digits in (0, 2, 6):
            values = getattr(inst, field)
            if values is None or budget <= 0:
                continue
            rounded = np.array([float(f"{v:.{digits}g}") if digits else float(f"{v:.1g}")
                                for v in values.astype(np.float64)], dtype=values.dtype)
            if fails(candidate := dataclasses.replace(inst, **{field: rounded})):
                inst = candidate
                break
    if inst.groups.shape[1] > 1 and budget > 0:  # drop attributes
        for a in reversed(range(inst.groups.shape[1])):
            if inst.groups.shape[1] > 1:
                candidate = dataclasses.replace(inst, groups=np.delete(inst.groups, a, axis=1))
                if fails(candidate):
                    inst = candidate
    return inst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--instances", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-n", type=int, default=2000, help="largest batch size drawn")
    parser.add_argument("--minimise", action="store_true",
                        help="shrink one failure of every kind and print it")
    args = parser.parse_args(argv)
    print_header("guarantee_fuzz.py")
    warnings.simplefilter("ignore")  # cvxpy's accuracy notes, fallback warnings
    rng = np.random.default_rng(args.seed)
    families = defaultdict(lambda: {"tried": 0, "failed": 0, "refused": 0, "violation": 0.0,
                                    "distance": 0.0,
                                    "exceptions": Counter(), "seconds": 0.0, "slowest": 0.0})
    kinds, first, refused = Counter(), {}, []
    by_z = defaultdict(lambda: [0, 0, 0])  # (z kind, magnitude) -> [tried, failed, refused]
    start = time.perf_counter()
    skipped = loud = 0
    for index in range(args.instances):
        inst = random_instance(rng, max_n=args.max_n)
        if pair_rows(inst) > MAX_PAIR_ROWS:
            skipped += 1
            continue
        outcome = check(inst)
        loud += outcome.loud
        if outcome.loud:
            refused.append((index, inst, outcome.seconds))
        row = families[inst.family()]
        row["tried"] += 1
        row["failed"] += not outcome.ok
        row["refused"] += outcome.loud
        z_row = by_z[inst.drawn["z_kind"], inst.drawn["magnitude"]]
        z_row[0] += 1
        z_row[1] += not outcome.ok
        z_row[2] += outcome.loud
        row["violation"] = max(row["violation"], outcome.violation)
        if outcome.distance is not None:
            row["distance"] = max(row["distance"], outcome.distance)
        if outcome.exception:
            row["exceptions"][outcome.exception] += 1
        row["seconds"] += outcome.seconds
        row["slowest"] = max(row["slowest"], outcome.seconds)
        if (k := kind(outcome)) is not None:
            kinds[k] += 1
            first.setdefault(k, (inst, outcome))
    elapsed = time.perf_counter() - start

    rows = []
    for family in sorted(families):
        r = families[family]
        rows.append([*family, r["tried"], r["failed"], r["refused"], f"{r['violation']:.3g}",
                     f"{r['distance']:.3g}",
                     ", ".join(f"{k} x{v}" for k, v in sorted(r["exceptions"].items())) or "-",
                     f"{r['seconds']:.2f}", f"{r['slowest']:.2f}"])
    print(f"## Guarantee fuzzing: {args.instances} instances, seed {args.seed}, "
          f"n <= {args.max_n}, {elapsed:.1f} s in all\n")
    print(f"Not run: {skipped} instances with more than {MAX_PAIR_ROWS:,} pair rows. Refused "
          f"with RuntimeError, as allowed beyond the exact range (raw outputs more than 100 "
          f"bound widths outside the bounds, or beyond 1e6 without bounds, or weight ratios "
          f"above 1e6): {loud}.\n")
    print(markdown_table(["constraint", "bounds", "dtype", "tried", "failed", "refused",
                          "worst violation / scale", "worst distance excess",
                          "exceptions", "layer s", "slowest s"], rows))
    print("\n### By raw outputs (kind, magnitude where the kind uses one)\n")
    print(markdown_table(["z kind", "magnitude", "tried", "failed", "refused"],
                         [[k, f"{m:g}", *counts] for (k, m), counts in sorted(by_z.items())]))
    print("\n### Refused instances (what they were drawn from)\n")
    print(markdown_table(
        ["#", "n", "constraint", "attributes", "intersectional", "epsilon", "bounds", "z kind",
         "magnitude", "weights", "dtype", "s"],
        [[index, inst.n, inst.constraint, inst.groups.shape[1], inst.intersectional,
          f"{inst.epsilon:g}", inst.family()[1], inst.drawn["z_kind"],
          f"{inst.drawn['magnitude']:g}", inst.drawn["weights"], str(inst.z.dtype),
          f"{seconds:.2f}"] for index, inst, seconds in refused]) if refused else "none")
    print("\n### Failures by kind\n")
    print(markdown_table(["kind", "count"], sorted(kinds.items(), key=lambda kv: -kv[1]))
          if kinds else "none")
    if args.minimise:
        for k, (inst, outcome) in first.items():
            small = minimise(inst, k)
            print(f"\n### {k}\n\n{check(small, with_reference=small.n <= 60).problems[0]}\n")
            print("```python\n" + small.snippet() + "\n```")
    return 1 if kinds else 0


if __name__ == "__main__":
    sys.exit(main())
