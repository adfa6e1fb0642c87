"""Conventions of the PyTorch and scikit-learn ecosystems: torch.compile, skops persistence."""

import numpy as np
import pytest
import torch

from skfair import FairnessLayer


class _FairHeads(torch.nn.Module):
    """A network with a fairness layer inside: two heads projected as a batch of problems,
    then torch operators after the layer."""

    def __init__(self, n_features):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(n_features, 8), torch.nn.ReLU(),
                                        torch.nn.Linear(8, 2))
        self.fair = FairnessLayer("demographic_parity", epsilon=0.02)

    def forward(self, x, groups, target):
        scores = torch.sigmoid(self.body(x)).T  # (2 heads, n)
        fair = self.fair(scores, groups)
        return torch.nn.functional.binary_cross_entropy(fair.clamp(1e-6, 1 - 1e-6),
                                                        target.expand_as(fair))


def _step(model, x, groups, target):
    model.zero_grad()
    loss = model(x, groups, target)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


# "aot_eager" traces the forward and backward graphs as inductor would, and runs them with
# torch's eager kernels: no C compiler needed, and the autograd across the graph break is real.
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_runs_a_model_with_the_layer_like_eager_mode(backend):
    rng = np.random.default_rng(0)
    n = 64
    groups = torch.as_tensor(rng.integers(0, 2, n))
    x = torch.as_tensor(rng.normal(size=(n, 4)), dtype=torch.float32) + groups[:, None]
    target = torch.as_tensor(rng.integers(0, 2, n), dtype=torch.float32)
    model = _FairHeads(4)
    eager_loss, eager_grads = _step(model, x, groups, target)
    assert model.fair.last_solve_[0]["n_iter"] > 0  # the projection moved the outputs
    compiled = torch.compile(model, backend=backend)
    for _ in range(2):  # the second call runs the cached graphs
        loss, grads = _step(compiled, x, groups, target)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=0)
        for grad, want in zip(grads, eager_grads):
            torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7)
    assert len(model.fair.last_solve_) == 2
    assert all(info["max_violation"] <= 1e-9 for info in model.fair.last_solve_)


def test_full_graph_compilation_names_the_layer_as_a_graph_break():
    layer = FairnessLayer(epsilon=0.05)
    compiled = torch.compile(lambda z, groups: 2 * layer(z, groups), backend="eager",
                             fullgraph=True)
    with pytest.raises(RuntimeError, match="FairnessLayer is a graph break"):
        compiled(torch.rand(10, dtype=torch.float64), torch.randint(0, 2, (10,)))
