"""Per-batch guarantee vs row-by-row predictions (inference="individual") on test data.

Run from the repository root:

    python benchmarks/individual.py            # Adult, COMPAS, German credit, 3 splits each
    python benchmarks/individual.py --quick    # German credit, 1 split

For each dataset and split one FairNeuralClassifier (demographic parity on sex and race, or sex
and age group, marginal; guarantee="labels", epsilon 0.05) is trained and predicts its test set
three ways: per batch (inference="batch", the test set cut into batches of 200 rows, each meeting
the constraint exactly), row by row with offsets calibrated on the training rows (what fit does),
and row by row calibrated on a held-out fifth of the training rows (the network trained on the
rest). Reported: accuracy, the selection-rate gap and the mean-score gap on the whole test set,
the median and largest gaps over its batches of 200 rows, and the row-by-row mode's
``individual_gap_bound(0.05)`` (mean and spread over splits).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, print_header, split  # noqa: E402

from skfair import FairNeuralClassifier  # noqa: E402
from skfair.datasets import load_adult, load_compas, load_german_credit  # noqa: E402

EPSILON = 0.05
BATCH = 200


def gaps(model, labels, proba, X):
    """Largest selection-rate gap and mean-score gap over the protected attributes."""
    rate = score = 0.0
    for attribute in model.protected_attributes:
        codes = X[f"remainder__{attribute}"].to_numpy()
        selected = pd.Series(labels == model.classes_[1]).groupby(codes).mean()
        means = pd.Series(proba).groupby(codes).mean()
        rate = max(rate, selected.max() - selected.min())
        score = max(score, means.max() - means.min())
    return rate, score


def measure(model, X, y):
    """Accuracy, whole-test gaps, and the median and largest label gap over batches of BATCH
    rows: X is predicted batch by batch (each batch on its own, the last one shorter)."""
    parts = [X.iloc[start:start + BATCH] for start in range(0, len(X), BATCH)]
    labels = np.concatenate([model.predict(part) for part in parts])
    proba = np.concatenate([model.predict_proba(part)[:, 1] for part in parts])
    batch_gaps = [gaps(model, labels[start:start + BATCH], proba[start:start + BATCH], part)[0]
                  for start, part in zip(range(0, len(X), BATCH), parts) if len(part) == BATCH]
    return (accuracy_score(y, labels), *gaps(model, labels, proba, X),
            float(np.median(batch_gaps)), float(np.max(batch_gaps)))


def run(bunch, seeds, epochs):
    results = {}
    for seed in seeds:
        X_train, X_test, y_train, y_test = split(bunch, seed)
        params = dict(protected_attributes=list(bunch.protected), epsilon=EPSILON,
                      guarantee="labels", max_epochs=epochs, random_state=seed)
        batch = FairNeuralClassifier(b_tau=BATCH, **params)
        batch.fit(X_train, y_train)
        results.setdefault("per batch (200 rows)", []).append(measure(batch, X_test, y_test)
                                                              + (np.nan,))
        fitted = FairNeuralClassifier(inference="individual", **params).fit(X_train, y_train)
        results.setdefault("row by row, calibrated on fit rows", []).append(
            row_by_row(fitted, X_test, y_test))
        rng = np.random.default_rng(seed)
        held = rng.uniform(size=len(X_train)) < 0.2
        model = FairNeuralClassifier(inference="individual", **params)
        model.fit(X_train[~held], y_train[~held]).calibrate(X_train[held])
        results.setdefault("row by row, calibrated on held-out fifth", []).append(
            row_by_row(model, X_test, y_test))
    return results


def row_by_row(model, X, y):
    """:func:`measure` and the bound, or the message when a combination of groups of the test
    set was not in the calibration rows (it has no offset)."""
    try:
        return measure(model, X, y) + (model.individual_gap_bound(0.05),)
    except ValueError as exc:
        return str(exc).split(" was not")[0]


def table(name, results):
    rows = []
    for mode, runs in results.items():
        failed = [r for r in runs if isinstance(r, str)]
        if failed:
            rows.append([name, mode, f"failed on {len(failed)}/{len(runs)} splits: "
                         f"{failed[0]} of the test set was not in the calibration rows",
                         *["-"] * 5])
            continue
        runs = np.array(runs)
        mean, spread = runs.mean(axis=0), runs.std(axis=0)
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[:-1], spread[:-1])]
        bound = "-" if np.isnan(mean[-1]) else f"{mean[-1]:.3f}"
        rows.append([name, mode, *cells, bound])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    print_header("individual.py")
    datasets = ({"German credit": load_german_credit} if args.quick else
                {"Adult": load_adult, "COMPAS": load_compas, "German credit": load_german_credit})
    seeds = range(1 if args.quick else args.splits)
    rows = []
    for name, load in datasets.items():
        rows += table(name, run(load(), seeds, args.epochs))
    print(f"\n## Per-batch guarantee vs row by row (guarantee='labels', epsilon={EPSILON}, "
          f"marginal over both protected attributes; mean ± std over {len(seeds)} splits)\n")
    print(markdown_table(
        ["dataset", "predictions", "accuracy", "test rate gap", "test score gap",
         f"median rate gap, batches of {BATCH}", f"largest rate gap, batches of {BATCH}",
         "bound (delta 0.05)"], rows))


if __name__ == "__main__":
    main()
