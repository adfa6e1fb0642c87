"""FairnessLayer inside a plain PyTorch training loop (Adult, bundled).

No scikit-learn estimator: a small network, a BCE loss on the projected probabilities, and the
layer's guarantee on every batch. The layer is an nn.Module; gradients flow through the projection
(implicit differentiation of its KKT conditions).
"""

import numpy as np
import torch
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from skfair import FairnessLayer
from skfair.datasets import load_adult
from skfair.metrics import demographic_parity_difference

torch.manual_seed(0)
data = load_adult()
X, y = data.data.iloc[:20000], data.target.iloc[:20000]
features = ColumnTransformer(
    [("num", StandardScaler(), ["age", "education_num", "capital_gain", "capital_loss",
                                "hours_per_week"]),
     ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
      ["workclass", "education", "marital_status", "occupation", "relationship"])],
).fit_transform(X)
inputs = torch.tensor(features, dtype=torch.float32)
labels = torch.tensor((y == ">50K").to_numpy(), dtype=torch.float32)
# Group codes: one integer column per protected attribute.
groups = torch.tensor(np.stack([X[c].cat.codes.to_numpy() for c in ("sex", "race")], axis=1))

net = torch.nn.Sequential(torch.nn.Linear(inputs.shape[1], 32), torch.nn.ReLU(),
                          torch.nn.Linear(32, 1))
layer = FairnessLayer("demographic_parity", epsilon=0.05, bounds=(0.0, 1.0))
optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

for epoch in range(5):
    order = torch.randperm(len(inputs))
    worst, total = 0.0, 0.0
    for batch in order.split(512):
        p = torch.sigmoid(net(inputs[batch])[:, 0])
        fair = layer(p, groups[batch])  # same dtype as p; computed in float64 inside
        worst = max(worst, layer.last_solve_["max_violation"])
        loss = torch.nn.functional.binary_cross_entropy(fair.clamp(1e-6, 1 - 1e-6),
                                                        labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    print(f"epoch {epoch}: loss {total / len(inputs):.4f}, largest constraint violation of any "
          f"batch {max(worst, 0.0):.1e}")

with torch.no_grad():
    raw = torch.sigmoid(net(inputs)[:, 0])
    fair = layer(raw.double(), groups)
sensitive = X[["sex", "race"]]
# each attribute on its own (the layer's marginal constraint), the largest gap
alone = demographic_parity_difference(None, raw.numpy(), sensitive_features=sensitive,
                                      intersectional=False)
through = demographic_parity_difference(None, fair.numpy(), sensitive_features=sensitive,
                                        intersectional=False)
print(f"DP gap on all {len(X)} rows: network alone {alone:.3f}, through the layer {through:.3f}")
