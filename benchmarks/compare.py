"""skfair against what users would pick instead, on every bundled dataset.

Run from the repository root (needs the `bench` extra):

    python benchmarks/compare.py              # 3 random splits per dataset (about 15 minutes)
    python benchmarks/compare.py --quick      # 1 split, small datasets only

Classification (Adult, COMPAS, German credit; demographic parity on both protected attributes):
skfair unconstrained and fair at several epsilon; fairlearn's ExponentiatedGradient (on
LogisticRegression) and ThresholdOptimizer (on LogisticRegression and on sklearn's MLPClassifier),
both asked for demographic parity within 0.05; and a soft-penalty network (the same MLP trained on
BCE + lambda * batch gap, no layer). Regression (Law School): skfair unconstrained and with mean
prediction parity, and the soft penalty.

Reported per method: mean and standard deviation over splits of test accuracy (R2 for regression),
ROC AUC, the test-set demographic parity gap of the scores (mean predicted probability; mean
prediction for regression) and of the labels (selection rates), whether the gap the method
targets met its epsilon on every split (skfair: scores, projected exactly on the test set;
fairlearn: labels), and fit seconds.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, r2_score, roc_auc_score
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, split, print_header  # noqa: E402

from skfair import FairNeuralClassifier, FairNeuralRegressor  # noqa: E402
from skfair._validation import GroupEncoder  # noqa: E402
from skfair.constraints import get_constraint  # noqa: E402
from skfair.datasets import (  # noqa: E402
    load_adult,
    load_compas,
    load_german_credit,
    load_law_school,
)
from skfair.metrics import demographic_parity_difference  # noqa: E402

EPSILONS = (0.02, 0.05, 0.1)
TARGET = 0.05  # epsilon asked of the baselines


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


def plain_inputs(X, protected):
    """One-hot protected columns for estimators that need numbers only."""
    cols = [c for c in X.columns if c.split("__")[-1] in protected]
    return pd.get_dummies(X, columns=cols, dtype=float)


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
        X_train, X_test, y_train, y_test = split(bunch, seed)
        pos = bunch.target_names[1]
        yb_train = (y_train == pos).astype(int).to_numpy()
        yb_test = (y_test == pos).astype(int).to_numpy()
        sens_train = X_train[[f"remainder__{c}" for c in protected]]
        sens_test = X_test[[f"remainder__{c}" for c in protected]]
        plain_train, plain_test = plain_inputs(X_train, protected), plain_inputs(X_test, protected)
        plain_test = plain_test.reindex(columns=plain_train.columns, fill_value=0.0)
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


def summarise(results):
    def stat(runs, key, fmt="{:.3f}"):
        values = [r[key] for r in runs if r[key] is not None]
        if not values:
            return "-"
        return (fmt + " ± " + fmt).format(np.mean(values), np.std(values))

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
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


if __name__ == "__main__":
    main()
