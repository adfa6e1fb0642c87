"""skfair demo: an unconstrained and a fair network on the Adult census data (bundled).

Trains the same network twice on 70% of Adult, once plain and once through the fairness layer with
demographic parity (epsilon = 0.05) on sex and race, and prints accuracy, ROC AUC, the demographic
parity gap of the predicted probabilities for every protected attribute, the equalized odds gap and
the fit time, all on the held-out 30%. Saves the accuracy/fairness trade-off plot when matplotlib is
installed.
"""

import time

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from skfair import FairNeuralClassifier
from skfair.datasets import load_adult
from skfair.metrics import demographic_parity_difference, equalized_odds_difference

EPSILON = 0.05
SEED = 0


def main():
    data = load_adult()
    X, y, protected = data.data, data.target, data.protected
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, stratify=y, random_state=SEED)
    numeric = [c for c in X.columns if c not in protected and X[c].dtype.kind in "if"]
    categorical = [c for c in X.columns if c not in protected and c not in numeric]

    def preprocessor(encode_protected):
        # Categorical features are one-hot encoded. For the fair model the protected columns pass
        # through with their values (as remainder__sex, ...), where skfair finds them by name and
        # feeds them to the network itself; the plain network gets them one-hot encoded.
        onehot = categorical + (protected if encode_protected else [])
        return ColumnTransformer(
            [("num", StandardScaler(), numeric),
             ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), onehot)],
            remainder="passthrough").set_output(transform="pandas")

    positive = y_test == data.target_names[1]
    rows, fitted = [], {}
    candidates = [("unconstrained", None, None)] + [
        (f"fair (eps={eps})", protected, eps) for eps in (0.02, EPSILON, 0.1)]
    for name, fairness, eps in candidates:
        model = make_pipeline(preprocessor(fairness is None), FairNeuralClassifier(
            protected_attributes=fairness, epsilon=eps or 0.05, max_epochs=15,
            random_state=SEED))
        start = time.perf_counter()
        model.fit(X_train, y_train)
        seconds = time.perf_counter() - start
        proba = model.predict_proba(X_test)[:, 1]
        row = {"model": name,
               "accuracy": accuracy_score(y_test, model.predict(X_test)),
               "ROC AUC": roc_auc_score(positive, proba)}
        for attribute in protected:
            row[f"DP gap {attribute}"] = demographic_parity_difference(
                y_test, proba, sensitive_features=X_test[attribute])
        row["EO gap"] = equalized_odds_difference(
            positive.astype(int), proba, sensitive_features=X_test[protected],
            intersectional=False)  # each attribute on its own, as the models are trained
        row["fit s"] = seconds
        row["epsilon"] = eps
        rows.append(row)
        fitted[name] = model
    table = pd.DataFrame(rows).set_index("model")
    print(f"Adult census income: {len(X_train)} training rows, {len(X_test)} test rows; "
          f"protected attributes {protected}.")
    print("DP gap: largest difference of mean predicted probability between groups (test set).\n")
    print(table.drop(columns="epsilon").to_string(float_format=lambda v: f"{v:.3f}"))
    worst = table.filter(like="DP gap").loc[f"fair (eps={EPSILON})"].max()
    print(f"\nThe fair model's test DP gap is {worst:.4f} <= epsilon = {EPSILON}: "
          f"{'yes' if worst <= EPSILON + 1e-7 else 'NO'}.")
    save_plot(table, protected)


def save_plot(table, protected):
    try:
        import matplotlib

        matplotlib.use("Agg")
        from skfair.plotting import plot_tradeoff
    except ImportError:
        print("(matplotlib is not installed: no plot saved; pip install \"skfair[plot]\")")
        return
    gaps = table.filter(like="DP gap").max(axis=1)  # the largest over the protected attributes
    fair = table["epsilon"].notna()
    # plot_tradeoff reads cv_results_-style columns; fairness scores are stored negated.
    ax = plot_tradeoff({"mean_test_accuracy": table.loc[fair, "accuracy"],
                        "mean_test_dp": -gaps[fair], "param_epsilon": table.loc[fair, "epsilon"]},
                       baseline=(gaps["unconstrained"], table.loc["unconstrained", "accuracy"]))
    ax.set_xlabel("largest demographic parity gap over " + ", ".join(protected))
    ax.set_title("Adult, test set: accuracy vs demographic parity gap")
    ax.figure.savefig("demo_tradeoff.png", dpi=120, bbox_inches="tight")
    print("Saved demo_tradeoff.png (accuracy against the fairness gap, one point per epsilon and "
          "one for the unconstrained network).")


if __name__ == "__main__":
    main()
