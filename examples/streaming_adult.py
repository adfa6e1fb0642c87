"""Streaming: partial_predict_proba on small batches and the convergence of the fairness gap.

A fair classifier trained on Adult (bundled) scores a stream of batches of 1 to 32 rows. Each
batch takes one step of the online primal-dual algorithm; the sample-weighted average of every
constraint row over the stream converges to at most epsilon, within a bound that shrinks like
1/sqrt(T). Batches of b_tau rows or more are projected exactly.
"""

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from skfair import FairNeuralClassifier
from skfair.datasets import load_adult
from skfair.metrics import demographic_parity_difference

data = load_adult()
X_train, X_test, y_train, y_test = train_test_split(
    data.data, data.target, test_size=0.3, stratify=data.target, random_state=0)
numeric = ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
categorical = ["workclass", "education", "marital_status", "occupation", "relationship",
               "native_country"]
prep = ColumnTransformer(
    [("num", StandardScaler(), numeric),
     ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical)],
    remainder="passthrough").set_output(transform="pandas").fit(X_train)
# The test set is transformed once and streamed into the estimator (for a Pipeline's raw
# batches, skfair.partial_predict_proba(pipeline, batch) transforms each batch first).
train, test = prep.transform(X_train), prep.transform(X_test)
model = FairNeuralClassifier(protected_attributes=["sex", "race"], epsilon=0.05, max_epochs=5,
                             random_state=0).fit(train, y_train)

rng = np.random.default_rng(0)
model.reset_stream()
print(f"{'T':>6} {'weighted gap':>13} {'bound':>8} {'pooled gap':>11}")
for t in range(1, 3001):
    size = int(rng.integers(1, 33))
    start = int(rng.integers(0, len(test) - size))
    model.partial_predict_proba(test.iloc[start:start + size])
    if t in (10, 100, 300, 1000, 3000):
        s = model.stream_stats()
        print(f"{t:>6} {s['weighted_avg_fairness_gap']:>13.4f} {s['bound']:>8.4f} "
              f"{s['pooled_fairness_gap']:>11.4f}")
s = model.stream_stats()
print(f"epsilon = {model.epsilon}: weighted-average gap {s['weighted_avg_fairness_gap']:.4f} <= "
      f"epsilon + bound = {model.epsilon + s['bound']:.4f}")
batch = test.iloc[:500]  # 500 rows >= b_tau: projected exactly, a hard guarantee
exact = model.partial_predict_proba(batch)[:, 1]
gap = demographic_parity_difference(  # each attribute on its own, as constrained
    None, exact, sensitive_features=batch[["remainder__sex", "remainder__race"]],
    intersectional=False)
print(f"a batch of 500 rows: DP gap {gap:.4f} <= epsilon")
