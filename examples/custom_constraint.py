"""A custom affine constraint: one-sided parity for young applicants (German credit, bundled).

Demographic parity bounds the gap in both directions. Suppose the policy is only "young applicants
(age <= 25) must not get a mean score more than epsilon below older ones". That is one affine row,
mean(score | old) - mean(score | young) <= epsilon; subclassing AffineConstraint and returning it is
all it takes for training, prediction and the guarantee to follow.
"""

import torch
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from skfair import FairNeuralClassifier
from skfair.constraints import AffineConstraint
from skfair.datasets import load_german_credit


class YoungNotBelowOld(AffineConstraint):
    """mean(y | old) - mean(y | young) <= epsilon; groups: code 0 = "old", 1 = "young"."""

    def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
        codes = groups[:, 0]
        old, young = (codes == 0).double(), (codes == 1).double()
        if old.sum() == 0 or young.sum() == 0:  # one group absent: nothing to compare
            return torch.zeros(0, len(codes), dtype=torch.float64), torch.zeros(0)
        row = old / old.sum() - young / young.sum()
        return row[None, :], torch.tensor([float(epsilon)]), ["old - young"]


data = load_german_credit()
X_train, X_test, y_train, y_test = train_test_split(
    data.data, data.target, test_size=0.3, stratify=data.target, random_state=0)
prep = ColumnTransformer(
    [("num", StandardScaler(), ["job", "credit_amount", "duration", "age"]),
     ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
      ["sex", "housing", "saving_accounts", "checking_account", "purpose"])],
    remainder="passthrough").set_output(transform="pandas")


def score_gap(model):
    """mean score of old minus mean score of young applicants on the test set."""
    p = model.predict_proba(X_test)[:, 1]
    young = (X_test["age_group"] == "young").to_numpy()
    return p[~young].mean() - p[young].mean()


for name, fairness, eps in [("unconstrained", YoungNotBelowOld(), 10.0),
                            ("young not below old (eps=0.02)", YoungNotBelowOld(), 0.02)]:
    model = make_pipeline(prep, FairNeuralClassifier(
        protected_attributes=["age_group"], fairness=fairness, epsilon=eps, max_epochs=30,
        batch_size=64, random_state=0))
    model.fit(X_train, y_train)
    print(f"{name:32s} accuracy={model.score(X_test, y_test):.3f} "
          f"mean(old) - mean(young)={score_gap(model):+.3f}")
