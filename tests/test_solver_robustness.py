"""The exact solver on problems where its dual Newton iteration used to stall: a kink at the
optimum and large batches."""

import numpy as np
import pytest
import torch

from skfair import _exact
from skfair.constraints import get_constraint


def test_optimum_at_the_kink_where_a_group_clips_entirely():
    """Regression: the rows' residuals reach zero exactly where every output of group 0 is
    clipped, so the dual is linear on one side of the optimum; doubling the steps along the
    flat rows crept toward it and ran out of iterations short of it (0.9999965)."""
    z = torch.tensor([0.0] * 9 + [13.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    groups = torch.tensor([[0, 0]] * 8 + [[1, 0], [2, 0], [0, 0], [0, 0], [0, 0]])
    cs = get_constraint("demographic_parity").build(groups, epsilon=0.0)
    result = _exact.solve(z, cs, 0.0, 1.0)
    assert result.converged and result.n_iter <= 10
    np.testing.assert_allclose(result.host_y, 1.0, rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("cards", [(2,), (2, 5)])
def test_large_batches_converge_in_a_few_iterations(cards):
    """At n = 2e5 the dual values' rounding error exceeds the gain of the last Newton steps: a
    line search on values rejected them and the solver ran to its iteration limit."""
    n = 200_000
    for seed in range(4):
        rng = np.random.default_rng(seed)
        groups = np.stack([rng.integers(0, k, n) for k in cards], axis=1)
        z = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.0 * groups[:, 0])))
        cs = get_constraint("demographic_parity").build(torch.as_tensor(groups),
                                                         epsilon=float(rng.choice([0, 0.01])))
        result = _exact.solve(torch.as_tensor(z), cs, 0.0, 1.0)
        assert result.converged and result.n_iter <= 10
        assert result.check[0] <= 1e-9
