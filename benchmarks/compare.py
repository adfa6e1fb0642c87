"""skfair against what users would pick instead, on every bundled dataset.

Run from the repository root (needs the `bench` extra):

    python benchmarks/compare.py              # 3 random splits per dataset, all tables
    python benchmarks/compare.py --quick      # 1 split, small datasets only
    python benchmarks/compare.py --labels     # the label-level tables only

Classification (Adult, COMPAS, German credit; demographic parity on both protected attributes):
skfair unconstrained and fair at several epsilon; fairlearn's ExponentiatedGradient (on
LogisticRegression; its bound 0.05 keeps each group's selection rate within 0.05 of the overall
rate) and ThresholdOptimizer (on LogisticRegression and on sklearn's MLPClassifier; asked for
exact demographic parity of its training labels, its default tolerance); and a soft-penalty
network (the same MLP trained on BCE + lambda * batch gap, no layer). Regression (Law
School): skfair unconstrained and with mean prediction parity, and the soft penalty.

Reported per method: mean and standard deviation over splits of test accuracy (R2 for regression),
ROC AUC, the test-set demographic parity gap of the scores (mean predicted probability; mean
prediction for regression) and of the labels (selection rates), whether the gap the method
targets met its epsilon on every split (skfair: scores, projected exactly on the test set;
fairlearn: labels), and fit seconds.

Label level (the same datasets and splits): decisions compared with decisions.
skfair with ``guarantee="labels"`` (demographic parity of the predicted labels' selection rates
on both protected attributes, each on its own, at several epsilon; and the four-fifths rule,
``DisparateImpact(ratio=0.8)`` with epsilon 0, on a single attribute: race, or age group on German
credit, which has no race column), against fairlearn's ThresholdOptimizer (demographic parity
with ``tol=0.05``, on the same two base models) and ExponentiatedGradient (DemographicParity
within 0.05, on LogisticRegression); both fairlearn methods get the two protected columns as
``sensitive_features``, which they cross. Every test set is predicted in one chunk. Reported per
method, on the test sets: accuracy, balanced accuracy, the selection-rate gap of the labels (each
attribute on its own, the largest over the two: marginal), the selection-rate ratio (lowest rate
over highest, the smallest over the two attributes), on how many splits the method's own
constraint held on the test labels, each attribute on its own, in exact fractions (skfair:
every gap at most epsilon; four-fifths: the ratio of the constrained attribute at least 0.8;
ThresholdOptimizer: the gap at most its tol; ExponentiatedGradient: every group's rate within
0.05 of the overall rate, its definition of the bound, which allows a gap of up to 0.1; fairlearn
is asked for this on the crossed groups of the training set, which implies it for each attribute
on its own), fit and predict seconds.

A second table gives the cost of the label step: predict seconds of one fitted skfair model with
``guarantee="labels"`` and with ``guarantee="proba"`` on Adult rows resampled with replacement to
1e3, 1e4 and 1e5 rows (medians of 3 runs), for both attributes (marginal: an integer program
with a time limit) and for race alone (a window search).
"""

import argparse
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, r2_score, roc_auc_score
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, split, print_header  # noqa: E402

from skfair import FairNeuralClassifier, FairNeuralRegressor  # noqa: E402
from skfair._validation import GroupEncoder  # noqa: E402
from skfair.constraints import DisparateImpact, get_constraint  # noqa: E402
from skfair.datasets import (  # noqa: E402
    load_adult,
    load_compas,
    load_german_credit,
    load_law_school,
)
from skfair.decisions import selection_rate_gap  # noqa: E402
from skfair.metrics import demographic_parity_difference, demographic_parity_ratio  # noqa: E402

EPSILONS = (0.02, 0.05, 0.1)
TARGET = 0.05  # epsilon asked of the baselines
RATIO = 0.8  # the four-fifths rule
LABEL_SIZES = (1_000, 10_000, 100_000)


class SoftPenalty:
    """The same MLP trained on loss + lam * (demographic parity gap of the batch): no guarantee."""

    def __init__(self, protected, lam=5.0, regression=False, epochs=10, seed=0):
        self.protected, self.lam, self.regression = protected, lam, regression
        self.epochs, self.seed = epochs, seed

    def _inputs(self, X):
        codes = self.encoder_.transform(X[self.cols_])
        onehot = [np.eye(len(c))[codes[:, j].numpy()]
                  for j, c in enumerate(self.encoder_.categories_)]
        rest = X.drop(columns=self.cols_).to_numpy(dtype=np.float32)
        return torch.tensor(np.hstack([rest] + onehot), dtype=torch.float32), codes

    def fit(self, X, y):
        torch.manual_seed(self.seed)
        self.cols_ = [c for c in X.columns if c.split("__")[-1] in self.protected]
        self.encoder_ = GroupEncoder(self.cols_).fit(X[self.cols_])
        inputs, codes = self._inputs(X)
        target = torch.tensor(np.asarray(y, dtype=np.float64))
        if self.regression:
            self.loc_, self.scale_ = float(target.mean()), float(target.std())
        self.net_ = torch.nn.Sequential(torch.nn.Linear(inputs.shape[1], 64), torch.nn.ReLU(),
                                        torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                        torch.nn.Linear(64, 1))
        optimizer = torch.optim.Adam(self.net_.parameters(), lr=1e-3)
        dp = get_constraint("demographic_parity")
        for _ in range(self.epochs):
            for idx in torch.randperm(len(inputs)).split(256):
                out = self._output(self.net_(inputs[idx])[:, 0].double())
                if self.regression:
                    loss = (((out - target[idx]) / self.scale_) ** 2).mean()
                    spread = self.scale_
                else:
                    p = out.clamp(1e-7, 1 - 1e-7)
                    loss = -(target[idx] * p.log() + (1 - target[idx]) * (1 - p).log()).mean()
                    spread = 1.0
                rows = dp.build(codes[idx], epsilon=0.0)
                if rows.n_rows:
                    loss = loss + self.lam * ((rows.matvec(out) - rows.h).max() / spread) ** 2
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return self

    def _output(self, raw):
        return self.loc_ + self.scale_ * raw if self.regression else torch.sigmoid(raw)

    def scores(self, X):
        with torch.no_grad():
            return self._output(self.net_(self._inputs(X)[0])[:, 0].double()).numpy()


def plain_inputs(X_train, X_test, protected):
    """Train and test frames with the ``protected`` columns one-hot (the test frame on the
    training frame's columns), for estimators that need numbers only."""
    def one_hot(X):
        cols = [c for c in X.columns if c.split("__")[-1] in protected]
        return pd.get_dummies(X, columns=cols, dtype=float)

    train = one_hot(X_train)
    return train, one_hot(X_test).reindex(columns=train.columns, fill_value=0.0)


def classification_split(bunch, seed, protected):
    """One split of a classification dataset as the comparisons use it: ``(X_train, X_test,
    y_train, y_test, sensitive_train, sensitive_test, plain_train, plain_test)`` with 0/1
    targets, the protected columns alone, and :func:`plain_inputs`."""
    X_train, X_test, y_train, y_test = split(bunch, seed)
    positive = bunch.target_names[1]
    columns = [f"remainder__{c}" for c in protected]
    return (X_train, X_test, (y_train == positive).astype(int).to_numpy(),
            (y_test == positive).astype(int).to_numpy(), X_train[columns], X_test[columns],
            *plain_inputs(X_train, X_test, protected))


def classification_methods(protected, epochs):
    def skfair_model(eps):
        return lambda seed: FairNeuralClassifier(protected_attributes=protected, epsilon=eps,
                                                 max_epochs=epochs, random_state=seed)

    methods = {"skfair unconstrained": (skfair_model(1.0), "skfair", None)}
    for eps in EPSILONS:
        methods[f"skfair eps={eps}"] = (skfair_model(eps), "skfair", eps)
    methods["fairlearn ExpGrad (LR)"] = ("expgrad", "fairlearn", TARGET)
    methods["fairlearn ThresholdOpt (LR)"] = ("thresh_lr", "fairlearn", TARGET)
    methods["fairlearn ThresholdOpt (MLP)"] = ("thresh_mlp", "fairlearn", TARGET)
    methods["soft penalty MLP"] = (lambda seed: SoftPenalty(protected, epochs=epochs, seed=seed),
                                   "soft", None)
    return methods


def run_classification(bunch, seeds, epochs):
    from fairlearn.postprocessing import ThresholdOptimizer
    from fairlearn.reductions import DemographicParity, ExponentiatedGradient

    protected = bunch.protected
    results = {}
    for seed in seeds:
        (X_train, X_test, yb_train, yb_test, sens_train, sens_test, plain_train,
         plain_test) = classification_split(bunch, seed, protected)
        for name, (make, kind, eps) in classification_methods(protected, epochs).items():
            start = time.perf_counter()
            scores = None
            if kind == "skfair":
                model = make(seed).fit(X_train, yb_train)
                seconds = time.perf_counter() - start
                scores = model.predict_proba(X_test)[:, 1]
                labels = (scores > 0.5).astype(int)
            elif kind == "soft":
                model = make(seed).fit(X_train, yb_train)
                seconds = time.perf_counter() - start
                scores = model.scores(X_test)
                labels = (scores > 0.5).astype(int)
            elif make == "expgrad":
                model = ExponentiatedGradient(LogisticRegression(max_iter=1000),
                                              DemographicParity(difference_bound=eps))
                model.fit(plain_train, yb_train, sensitive_features=sens_train)
                seconds = time.perf_counter() - start
                scores = model._pmf_predict(plain_test)[:, 1]
                labels = model.predict(plain_test, random_state=seed)
            else:
                base = (LogisticRegression(max_iter=1000) if make == "thresh_lr"
                        else MLPClassifier((64, 64), max_iter=epochs * 3, random_state=seed))
                model = ThresholdOptimizer(estimator=base, constraints="demographic_parity",
                                           predict_method="predict_proba")
                try:
                    model.fit(plain_train, yb_train, sensitive_features=sens_train)
                except ValueError as exc:  # e.g. a group (combination) with a single label
                    results.setdefault(name, []).append({"failed": str(exc)})
                    continue
                seconds = time.perf_counter() - start
                labels = model.predict(plain_test, sensitive_features=sens_test,
                                       random_state=seed)
            # each attribute on its own, the largest gap (what the skfair models constrain)
            gap_labels = demographic_parity_difference(None, labels, sensitive_features=sens_test,
                                                       intersectional=False)
            gap_scores = (None if scores is None else demographic_parity_difference(
                None, scores, sensitive_features=sens_test, intersectional=False))
            targeted = gap_scores if kind == "skfair" else gap_labels
            results.setdefault(name, []).append({
                "score": accuracy_score(yb_test, labels),
                "auc": None if scores is None else roc_auc_score(yb_test, scores),
                "gap_scores": gap_scores, "gap_labels": gap_labels,
                "met": None if eps is None else targeted <= eps + 1e-6, "seconds": seconds})
    return results


def run_regression(bunch, seeds, epochs):
    protected = bunch.protected
    results = {}
    for seed in seeds:
        X_train, X_test, y_train, y_test = split(bunch, seed)
        sens_test = X_test[[f"remainder__{c}" for c in protected]]
        methods = {"skfair unconstrained": (None, 100.0)}
        methods.update({f"skfair eps={eps}": (None, eps) for eps in EPSILONS})
        methods["soft penalty MLP"] = ("soft", None)
        for name, (kind, eps) in methods.items():
            start = time.perf_counter()
            if kind == "soft":
                model = SoftPenalty(protected, regression=True, epochs=epochs, seed=seed)
                pred = model.fit(X_train, y_train).scores(X_test)
            else:
                model = FairNeuralRegressor(protected_attributes=protected, epsilon=eps,
                                            max_epochs=epochs, random_state=seed)
                pred = model.fit(X_train, y_train).predict(X_test)
            seconds = time.perf_counter() - start
            gap = demographic_parity_difference(None, pred, sensitive_features=sens_test,
                                                intersectional=False)
            results.setdefault(name, []).append({
                "score": r2_score(y_test, pred), "auc": None, "gap_scores": gap,
                "gap_labels": None, "met": None if kind == "soft" or eps == 100.0 else
                gap <= eps + 1e-6, "seconds": seconds})
    return results


def stat(runs, key, fmt="{:.3f}"):
    """Mean ± standard deviation of ``key`` over the runs that have it ("-" if none)."""
    values = [r[key] for r in runs if r[key] is not None]
    if not values:
        return "-"
    return (fmt + " ± " + fmt).format(np.mean(values), np.std(values))


def summarise(results):
    rows = []
    for name, runs in results.items():
        failed = [r["failed"] for r in runs if "failed" in r]
        if failed:
            rows.append([name, f"failed on {len(failed)}/{len(runs)} splits: {failed[0]}"]
                        + ["-"] * 5)
            continue
        met = [r["met"] for r in runs]
        rows.append([name, stat(runs, "score"), stat(runs, "auc"), stat(runs, "gap_scores"),
                     stat(runs, "gap_labels"),
                     "-" if met[0] is None else f"{sum(met)}/{len(met)}",
                     stat(runs, "seconds", "{:.1f}")])
    return rows


def group_codes(sens):
    """Integer codes of every protected column (one column per attribute)."""
    return np.column_stack([np.unique(sens[c].astype(str), return_inverse=True)[1].ravel()
                            for c in sens.columns])


def ratio_holds(labels, codes, ratio):
    """Whether every group's selection rate is at least ``ratio`` times every other's, as
    exact fractions (``ratio`` at its binary value, as skfair's labels use it)."""
    labels = np.asarray(labels).astype(np.int64)
    sizes = np.bincount(codes)
    selected = np.bincount(codes, weights=labels).astype(np.int64)
    rates = [Fraction(int(c), int(n)) for c, n in zip(selected, sizes) if n]
    return min(rates) >= Fraction(ratio) * max(rates)


def overall_holds(labels, codes, bound):
    """Whether, for every attribute (column of ``codes``), every group's selection rate is
    within ``bound`` of the attribute's overall rate, as exact fractions."""
    labels = np.asarray(labels).astype(np.int64)
    for column in codes.T:
        overall = Fraction(int(labels.sum()), len(labels))
        sizes = np.bincount(column)
        selected = np.bincount(column, weights=labels).astype(np.int64)
        if any(abs(Fraction(int(c), int(n)) - overall) > Fraction(bound)
               for c, n in zip(selected, sizes) if n):
            return False
    return True


def label_methods(protected, ratio_attribute, epochs):
    """name -> (kind, what the method asks for, make)."""
    def skfair_model(**params):
        return lambda seed: FairNeuralClassifier(max_epochs=epochs, random_state=seed, **params)

    methods = {"skfair unconstrained (p > 0.5)": (
        "skfair", None, skfair_model(protected_attributes=protected, epsilon=1.0))}
    for eps in EPSILONS:
        methods[f"skfair labels, DP eps={eps}"] = (
            "skfair", ("gap", eps), skfair_model(protected_attributes=protected, epsilon=eps,
                                                 guarantee="labels"))
    methods[f"skfair labels, four-fifths ({ratio_attribute} only)"] = (
        "skfair", ("ratio", RATIO), skfair_model(protected_attributes=[ratio_attribute],
                                                 fairness=DisparateImpact(ratio=RATIO),
                                                 epsilon=0.0, guarantee="labels"))
    methods[f"fairlearn ExpGrad (LR), DP {TARGET}"] = ("expgrad", ("overall", TARGET), None)
    methods[f"fairlearn ThresholdOpt (LR), DP tol {TARGET}"] = ("thresh_lr", ("gap", TARGET),
                                                                None)
    methods[f"fairlearn ThresholdOpt (MLP), DP tol {TARGET}"] = ("thresh_mlp", ("gap", TARGET),
                                                                 None)
    return methods


def run_labels(bunch, seeds, epochs):
    """Label-level comparison on one dataset: per method, one dict per split."""
    from fairlearn.postprocessing import ThresholdOptimizer
    from fairlearn.reductions import DemographicParity, ExponentiatedGradient

    protected = list(bunch.protected)
    ratio_attribute = "race" if "race" in protected else protected[-1]
    results = {}
    for seed in seeds:
        (X_train, X_test, yb_train, yb_test, sens_train, sens_test, plain_train,
         plain_test) = classification_split(bunch, seed, protected)
        codes = group_codes(sens_test)
        ratio_codes = codes[:, protected.index(ratio_attribute)]
        # the single-attribute model gets the other protected columns one-hot, as inputs
        one_train, one_test = plain_inputs(X_train, X_test,
                                           [c for c in protected if c != ratio_attribute])
        for name, (kind, asked, make) in label_methods(protected, ratio_attribute,
                                                       epochs).items():
            start = time.perf_counter()
            if kind == "skfair":
                model = make(seed)
                assert model.b_tau <= len(X_test)
                single = asked is not None and asked[0] == "ratio"
                model.fit(one_train if single else X_train, yb_train)
                fit_seconds = time.perf_counter() - start
                start = time.perf_counter()
                labels = model.predict(one_test if single else X_test)
            elif kind == "expgrad":
                model = ExponentiatedGradient(LogisticRegression(max_iter=1000),
                                              DemographicParity(difference_bound=asked[1]))
                model.fit(plain_train, yb_train, sensitive_features=sens_train)
                fit_seconds = time.perf_counter() - start
                start = time.perf_counter()
                labels = model.predict(plain_test, random_state=seed)
            else:
                base = (LogisticRegression(max_iter=1000) if kind == "thresh_lr"
                        else MLPClassifier((64, 64), max_iter=epochs * 3, random_state=seed))
                model = ThresholdOptimizer(estimator=base, constraints="demographic_parity",
                                           predict_method="predict_proba", tol=asked[1])
                try:
                    model.fit(plain_train, yb_train, sensitive_features=sens_train)
                except ValueError as exc:  # e.g. a crossed group with a single label
                    results.setdefault(name, []).append({"failed": str(exc)})
                    continue
                fit_seconds = time.perf_counter() - start
                start = time.perf_counter()
                labels = model.predict(plain_test, sensitive_features=sens_test,
                                       random_state=seed)
            predict_seconds = time.perf_counter() - start
            labels = np.asarray(labels).astype(int)
            gap = selection_rate_gap(labels, codes)  # exact, the largest over the attributes
            if asked is None:
                held = None
            elif asked[0] == "gap":
                held = gap <= Fraction(asked[1])
            elif asked[0] == "overall":
                held = overall_holds(labels, codes, asked[1])
            else:
                held = ratio_holds(labels, ratio_codes, asked[1])
            results.setdefault(name, []).append({
                "accuracy": accuracy_score(yb_test, labels),
                "balanced": balanced_accuracy_score(yb_test, labels),
                "gap": float(gap),
                "ratio": demographic_parity_ratio(None, labels, sensitive_features=sens_test,
                                                  intersectional=False),
                "held": held, "asked": asked, "fit": fit_seconds, "predict": predict_seconds})
    return results


def summarise_labels(results, ratio_attribute):
    rows = []
    for name, runs in results.items():
        failed = [r["failed"] for r in runs if "failed" in r]
        if failed:
            rows.append([name, f"failed on {len(failed)}/{len(runs)} splits: {failed[0]}"]
                        + ["-"] * 7)
            continue
        asked = runs[0]["asked"]
        if asked is None:
            checked, held = "-", "-"
        else:
            checked = {"gap": f"gap <= {asked[1]}, each attribute",
                       "overall": f"every rate within {asked[1]} of the overall rate, "
                                  f"each attribute",
                       "ratio": f"{ratio_attribute} ratio >= {asked[1]}"}[asked[0]]
            held = f"{sum(r['held'] for r in runs)}/{len(runs)}"
        rows.append([name, stat(runs, "accuracy"), stat(runs, "balanced"), stat(runs, "gap"),
                     stat(runs, "ratio"), checked, held, stat(runs, "fit", "{:.1f}"),
                     stat(runs, "predict", "{:.3f}")])
    return rows


def label_cost(epochs, sizes=LABEL_SIZES, repeats=3):
    """Predict seconds with guarantee="labels" and "proba" of the same fitted model, on Adult
    rows resampled with replacement; rows of the table."""
    bunch = load_adult()
    X_train, X_test, y_train, _ = split(bunch, 0)
    yb_train = (y_train == bunch.target_names[1]).astype(int).to_numpy()
    rows_all = pd.concat([X_train, X_test])
    rng = np.random.default_rng(0)
    cases = [("sex and race, marginal (integer program)", ["sex", "race"]),
             ("race only (window search)", ["race"])]
    table = []
    for title, protected in cases:
        others = [c for c in bunch.protected if c not in protected]  # one-hot inputs
        model = FairNeuralClassifier(protected_attributes=protected, epsilon=TARGET,
                                     max_epochs=epochs, random_state=0)
        train, rows = plain_inputs(X_train, rows_all, others)
        model.fit(train, yb_train)
        for n in sizes:
            X = rows.iloc[rng.integers(0, len(rows), n)]
            codes = group_codes(X[[f"remainder__{c}" for c in protected]])
            times = {"proba": [], "labels": []}
            limit_hits, held = 0, True
            model.set_params(guarantee="proba").predict(X)  # warm-up, untimed
            for _ in range(repeats):
                for guarantee in ("proba", "labels"):
                    model.set_params(guarantee=guarantee)
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", RuntimeWarning)
                        start = time.perf_counter()
                        labels = model.predict(X)
                        times[guarantee].append(time.perf_counter() - start)
                    if guarantee == "labels":
                        limit_hits += any("time limit" in str(w.message) for w in caught)
                        held &= selection_rate_gap(labels, codes) <= Fraction(TARGET)
            proba_s, labels_s = np.median(times["proba"]), np.median(times["labels"])
            table.append([title, f"{n:,}", f"{1e3 * proba_s:.1f}", f"{1e3 * labels_s:.1f}",
                          f"{labels_s / proba_s:.1f}x", f"{limit_hits}/{repeats}",
                          "yes" if held else "no"])
    return table


def print_label_tables(datasets, seeds, cost=True, cost_epochs=10):
    header = ["method", "accuracy", "balanced accuracy",
              "selection-rate gap (labels, max over attributes)",
              "selection-rate ratio (labels, min over attributes)", "checked on test labels",
              "held", "fit s", "predict s"]
    for title, loader, epochs in datasets:
        bunch = loader()
        protected = list(bunch.protected)
        ratio_attribute = "race" if "race" in protected else protected[-1]
        print(f"## Labels, {title} (protected: {', '.join(protected)}, marginal; {len(seeds)} "
              f"splits, 70/30; test set predicted in one chunk; networks: {epochs} epochs)\n")
        print(markdown_table(header, summarise_labels(run_labels(bunch, seeds, epochs),
                                                      ratio_attribute)))
        print()
    if cost:
        print(f"## Cost of the label step (Adult rows resampled with replacement; one fitted "
              f"model per case, DP epsilon {TARGET}; medians of 3 runs)\n")
        print(markdown_table(
            ["protected", "rows", "predict ms, proba", "predict ms, labels", "labels / proba",
             "runs at the integer program's time limit", "label gap <= epsilon"],
            label_cost(cost_epochs)))
        print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--labels", action="store_true",
                        help="only the label-level tables (guarantee='labels' against fairlearn)")
    args = parser.parse_args()
    print_header("compare.py")
    warnings.filterwarnings("ignore", category=UserWarning)  # sklearn/fairlearn chatter
    warnings.filterwarnings("ignore", module="sklearn.neural_network")
    seeds = list(range(1 if args.quick else args.splits))
    # Epochs by size: about the same number of optimizer steps on every dataset.
    datasets = [("German credit", load_german_credit, 8 * args.epochs),
                ("COMPAS", load_compas, 2 * args.epochs)]
    if not args.quick:
        datasets.append(("Adult", load_adult, args.epochs))
    # Warm-up: the first optimizer in a process pays for torch's lazy imports.
    X, y = load_german_credit(return_X_y=True)
    FairNeuralClassifier(max_epochs=1).fit(X[["age", "duration"]], y)
    if not args.labels:
        header = ["method", "accuracy", "ROC AUC", "DP gap (scores)", "DP gap (labels)",
                  "met epsilon", "fit s"]
        for title, loader, epochs in datasets:
            bunch = loader()
            print(f"## {title} (protected: {', '.join(bunch.protected)}; {len(seeds)} splits, "
                  f"70/30; networks: {epochs} epochs)\n")
            print(markdown_table(header, summarise(run_classification(bunch, seeds, epochs))))
            print()
        if not args.quick:
            bunch = load_law_school()
            print(f"## Law School, regression of ZFYA (protected: {', '.join(bunch.protected)}; "
                  f"{len(seeds)} splits)\n")
            print(markdown_table(["method", "R2", "-", "mean prediction gap", "-", "met epsilon",
                                  "fit s"], summarise(run_regression(bunch, seeds, args.epochs))))
            print()
    print_label_tables(datasets, seeds, cost=not args.quick, cost_epochs=args.epochs)


if __name__ == "__main__":
    main()
