"""The fairness layer against an independent QP solver, its guarantee and its gradients."""

import math
import os

import cvxpy as cp
import numpy as np
import pytest
import torch
from conftest import torch_objective
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from skfair import FairnessLayer
from skfair.constraints import (
    AffineConstraint,
    InfeasibleConstraintError,
    constraint_gap,
    get_constraint,
)
from skfair._bounds import Bounds
from skfair.layer import project

BUILTINS = ["demographic_parity", "equalized_odds", "equal_opportunity", "mean_residual",
            "false_positive_rate_parity", "error_rate_parity"]


def reference_projection(z, G, h, bounds):
    """The same projection solved by a generic conic solver (Clarabel through cvxpy)."""
    y = cp.Variable(len(z))
    cons = [G @ y <= h] if len(h) else []
    if bounds is not None:
        cons += [y >= bounds[0], y <= bounds[1]]
    problem = cp.Problem(cp.Minimize(cp.sum_squares(y - z)), cons)
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert problem.status == cp.OPTIMAL
    return y.value


@st.composite
def instances(draw):
    n = draw(st.integers(1, 40))
    n_attributes = draw(st.integers(1, 3))
    cards = [draw(st.integers(2, 4)) for _ in range(n_attributes)]
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # Unbalanced groups: a random, often skewed, distribution over the groups of each attribute.
    groups = np.stack([rng.choice(k, size=n, p=rng.dirichlet(np.ones(k) * 0.7)) for k in cards],
                      axis=1)
    kind = draw(st.sampled_from(["random", "equal", "feasible"]))
    z = rng.uniform(-0.2, 1.2, n)
    if kind == "equal":
        z[:] = z[0]
    constraint = draw(st.sampled_from(BUILTINS))
    y_true = rng.integers(0, 2, n).astype(float)
    if constraint == "mean_residual":
        y_true = rng.uniform(0, 1, n)
    if kind == "feasible":
        z = np.clip(y_true if constraint == "mean_residual" else np.full(n, 0.5), 0, 1)
        z = z + rng.uniform(-1e-3, 1e-3, n)
    bounds = draw(st.sampled_from([(0.0, 1.0), None, (-0.5, 2.0)]))
    epsilon = draw(st.sampled_from([0.0, 0.01, 0.05, 0.2]))
    return z, groups, constraint, y_true, bounds, epsilon


SETTINGS = settings(max_examples=int(os.environ.get("HYP_EXAMPLES", 150)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _solve(instance, solver):
    z, groups, constraint, y_true, bounds, epsilon = instance
    y_true = None if y_true is None else torch.as_tensor(y_true)
    cs = get_constraint(constraint).build(torch.as_tensor(groups), epsilon=epsilon, y_true=y_true)
    y, info = project(torch.as_tensor(z), cs, bounds, solver)
    return y.numpy(), cs.dense().numpy(), cs.h.numpy(), info


@SETTINGS
@given(instances())
def test_exact_projection_matches_generic_qp_solver(instance):
    y, G, h, info = _solve(instance, "exact")
    assert info["solver"] == "exact"
    z, bounds = instance[0], instance[4]
    np.testing.assert_allclose(y, reference_projection(z, G, h, bounds), atol=1e-6)
    assert (G @ y - h).max(initial=-np.inf) <= 1e-9
    if bounds is not None:
        assert y.min() >= bounds[0] and y.max() <= bounds[1]


@pytest.mark.filterwarnings("ignore:The qpth solver failed:RuntimeWarning")
@SETTINGS
@given(instances())
def test_qpth_output_always_satisfies_the_guarantee(instance):
    """qpth's interior point may stall short of the optimum, or give up, on degenerate instances
    (dependent rows with box rows); what the layer returns is still fair and within bounds."""
    pytest.importorskip("qpth")
    assume(len(instance[0]) <= 25)
    y, G, h, info = _solve(instance, "qpth")
    assert (G @ y - h).max(initial=-np.inf) <= 1e-6
    bounds = instance[4]
    if bounds is not None:
        assert y.min() >= bounds[0] and y.max() <= bounds[1]


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("bounds", [(0.0, 1.0), None])
def test_qpth_agrees_with_exact_on_regular_instances(seed, bounds):
    pytest.importorskip("qpth")
    rng = np.random.default_rng(seed)
    n = 30
    groups = rng.integers(0, 3, n)
    z = rng.uniform(0, 1, n) + 0.3 * (groups == 0)
    instance = (z, groups, "demographic_parity", None, bounds, 0.05)
    y_qpth, _, _, info = _solve(instance, "qpth")
    assert info["solver"] == "qpth"
    np.testing.assert_allclose(y_qpth, _solve(instance, "exact")[0], atol=1e-6)


def test_exact_is_accurate_far_beyond_the_guarantee():
    rng = np.random.default_rng(0)
    z = torch.as_tensor(rng.uniform(0, 1, 5000))
    groups = torch.as_tensor(rng.integers(0, 3, (5000, 2)))
    layer = FairnessLayer("demographic_parity", epsilon=0.02)
    y = layer(z, groups)
    assert layer.last_solve_["solver"] == "exact"
    assert layer.last_solve_["max_violation"] <= 1e-11
    assert constraint_gap("demographic_parity", y, groups) <= 0.02 + 1e-11


@pytest.mark.parametrize("bounds", [(0.0, 1.0), None])
@pytest.mark.parametrize("constraint", BUILTINS)
def test_gradcheck_exact(constraint, bounds):
    rng = np.random.default_rng(1)
    n = 12
    groups = torch.as_tensor(rng.integers(0, 2, (n, 2)))
    y_true = torch.as_tensor(rng.integers(0, 2, n).astype(float))
    if constraint == "mean_residual":
        y_true = torch.as_tensor(rng.uniform(0.3, 0.7, n), dtype=torch.float64)
        y_true.requires_grad_(True)
    z = torch.as_tensor(rng.uniform(0.05, 0.95, n), dtype=torch.float64)
    # Bias one group so the constraint is active at the solution.
    z = (z + 0.4 * groups[:, 0]).clamp(0.01, 0.99).requires_grad_(True)
    layer = FairnessLayer(constraint, epsilon=0.05, bounds=bounds, solver="exact")
    inputs = (z, y_true) if y_true.requires_grad else (z,)

    def f(*args):
        return layer(args[0], groups, y_true=args[1] if len(args) > 1 else y_true)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("bounds", [(0.0, 1.0), None])
def test_gradients_of_both_backends_agree(bounds):
    pytest.importorskip("qpth")
    rng = np.random.default_rng(2)
    n = 16
    groups = torch.as_tensor(rng.integers(0, 3, n))
    z0 = torch.as_tensor(rng.uniform(0.1, 0.9, n) + 0.3 * (groups.numpy() == 0))
    weights = torch.as_tensor(rng.normal(size=n))
    grads = {}
    for solver in ("exact", "qpth"):
        z = z0.clone().requires_grad_(True)
        layer = FairnessLayer("demographic_parity", epsilon=0.05, bounds=bounds, solver=solver)
        (layer(z, groups) * weights).sum().backward()
        assert layer.last_solve_["solver"] == solver
        grads[solver] = z.grad
    np.testing.assert_allclose(grads["exact"], grads["qpth"], atol=1e-5)


def _objective_instance(constraint, bounds, weighted, seed=4):
    """A batch and its rows for the fused training objective."""
    rng = np.random.default_rng(seed)
    n = 30
    groups = torch.as_tensor(rng.integers(0, 3, (n, 2)))
    z = torch.as_tensor(rng.uniform(0.05, 0.95, n) + 0.3 * (groups[:, 0].numpy() == 0))
    if bounds is not None:
        z = z.clamp(0.01, 0.99)
        z[:2] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # outputs on the bounds
    y_true = torch.as_tensor(rng.integers(0, 2, n).astype(float))
    if constraint == "mean_residual":
        y_true = torch.as_tensor(rng.uniform(0.2, 0.8, n))
    weight = torch.as_tensor(rng.uniform(0.5, 2.0, n)) if weighted else torch.ones(n).double()
    cs = get_constraint(constraint).build(groups, epsilon=0.03, y_true=y_true,
                                          sample_weight=weight if weighted else None)
    return z, cs, y_true, weight


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), None])
@pytest.mark.parametrize("constraint", BUILTINS)
def test_projected_objective_is_the_loss_of_the_projection(constraint, bounds, weighted):
    """The fused training objective (one compiled call, one autograd node) equals the
    projection followed by the torch losses and penalty, in value and gradient."""
    from skfair import _kernels
    from skfair.layer import projected_objective

    z0, cs, y_true, weight = _objective_instance(constraint, bounds, weighted)
    loss = _kernels.LOG_LOSS if bounds is not None else _kernels.SQUARED_ERROR
    scale, penalty = (1.0, 10.0) if bounds is not None else (0.7, 3.0)
    z = z0.clone().requires_grad_(True)
    value, result = projected_objective(z, cs, bounds, y_true, weight, loss, scale, penalty)
    value.backward()
    assert result.n_iter > 0  # the projection moved the outputs

    reference = z0.clone().requires_grad_(True)
    y, _ = project(reference, cs, bounds)
    want = torch_objective(y, reference, y_true, weight, loss, scale, penalty)
    want.backward()
    assert float(value.detach()) == pytest.approx(float(want.detach()), rel=1e-13)
    torch.testing.assert_close(z.grad, reference.grad, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(result.y, y.detach(), atol=0, rtol=0)  # the same projection


@pytest.mark.parametrize("constraint", BUILTINS)
def test_gradcheck_projected_objective(constraint):
    from skfair import _kernels
    from skfair.layer import projected_objective

    z, cs, y_true, weight = _objective_instance(constraint, None, True, seed=5)
    z.requires_grad_(True)

    def f(z):
        return projected_objective(z, cs, None, y_true, weight, _kernels.SQUARED_ERROR, 0.7,
                                   3.0)[0]

    assert torch.autograd.gradcheck(f, (z,), eps=1e-7, atol=1e-6)


def test_projected_objective_declines_a_result_that_fails_the_guarantee(monkeypatch):
    """Like project, the fused objective never trusts the solver: a result that violates the
    rows is not used (None: the caller goes through project and its fallback)."""
    from skfair import _exact, _kernels
    from skfair.layer import projected_objective

    monkeypatch.setattr(_exact, "solve", lambda z, cs, lo, hi, **k: _exact.SolveResult(
        z.clone(), cs.h.new_zeros(cs.n_rows), 3, False, 1.0))
    z = torch.tensor([0.9, 0.8, 0.3, 0.2], dtype=torch.float64)
    cs = get_constraint("demographic_parity").build(torch.tensor([0, 0, 1, 1]), epsilon=0.1)
    ones = torch.ones(4, dtype=torch.float64)
    assert projected_objective(z, cs, (0.0, 1.0), ones, ones, _kernels.LOG_LOSS, 1.0,
                               10.0) is None


def test_gradcheck_qpth():
    pytest.importorskip("qpth")
    rng = np.random.default_rng(3)
    groups = torch.as_tensor(rng.integers(0, 2, 8))
    z = torch.as_tensor(rng.uniform(0.2, 0.8, 8) + 0.2 * groups.numpy()).requires_grad_(True)
    layer = FairnessLayer("demographic_parity", epsilon=0.05, bounds=None, solver="qpth")
    assert torch.autograd.gradcheck(lambda z: layer(z, groups), (z,), eps=1e-6, atol=1e-4)


def test_backward_memory_is_linear_in_n():
    """No n x n matrix: a batch of 200,000 goes forward and backward quickly."""
    n = 200_000
    groups = torch.randint(0, 2, (n, 2))
    z = torch.rand(n, dtype=torch.float64, requires_grad=True)
    y = FairnessLayer(epsilon=0.01)(z, groups)
    y.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_output_keeps_dtype_and_device_and_float32_inputs_work():
    z = torch.tensor([0.9, 0.8, 0.3, 0.2], dtype=torch.float32)
    y = FairnessLayer(epsilon=0.1)(z, torch.tensor([0, 0, 1, 1]))
    assert y.dtype == torch.float32 and y.device == z.device
    assert abs(float(y[:2].mean() - y[2:].mean())) <= 0.1 + 1e-6


def test_intersectional_constrains_every_combination():
    rng = np.random.default_rng(4)
    n = 400
    groups = torch.as_tensor(rng.integers(0, 2, (n, 2)))
    z = torch.as_tensor(rng.uniform(0, 1, n) * 0.5 + 0.4 * (groups[:, 0] ^ groups[:, 1]).numpy())
    marginal = FairnessLayer(epsilon=0.02)(z, groups)
    joint = FairnessLayer(epsilon=0.02, intersectional=True)(z, groups)
    combo = groups[:, 0] * 2 + groups[:, 1]
    assert constraint_gap("demographic_parity", joint, combo) <= 0.02 + 1e-9
    # XOR bias is invisible to each attribute alone, so the marginal layer leaves it in place.
    assert constraint_gap("demographic_parity", marginal, combo) > 0.2


def test_missing_group_and_single_sample():
    layer = FairnessLayer(epsilon=0.0)
    z = torch.tensor([0.3, 1.4, -0.2], dtype=torch.float64)
    # One group only: no rows, the outputs are just clipped to the bounds.
    np.testing.assert_allclose(layer(z, torch.tensor([1, 1, 1])), [0.3, 1.0, 0.0])
    assert layer.last_solve_["n_rows"] == 0
    np.testing.assert_allclose(layer(z[:1], torch.tensor([0])), [0.3])
    # Equal opportunity with no positive label has no rows either.
    eo = FairnessLayer("equal_opportunity", epsilon=0.0)
    out = eo(z, torch.tensor([0, 1, 1]), y_true=torch.tensor([0.0, 0.0, 0.0]))
    np.testing.assert_allclose(out, [0.3, 1.0, 0.0])


def test_infeasible_mean_residual_names_the_group():
    layer = FairnessLayer("mean_residual", epsilon=0.1, bounds=(0.0, 1.0))
    z = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    y_true = torch.tensor([0.5, 0.5, 1.5, 1.6], dtype=torch.float64)
    with pytest.raises(InfeasibleConstraintError, match=r"\(0, 1, '\+'\)|\(0, 1, '-'\)") as info:
        layer(z, torch.tensor([0, 0, 1, 1]), y_true=y_true)
    assert info.value.key[:2] == (0, 1)


class WeightedMeanParity(AffineConstraint):
    """Weighted means of groups 0 and 1 differ by at most epsilon (weights per group code)."""

    def __init__(self, weights):
        self.weights = weights

    def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
        a = groups[:, 0]
        w = torch.as_tensor(self.weights, dtype=torch.float64)[a]
        one = torch.where(a == 1, w, 0.0) / torch.where(a == 1, w, 0.0).sum()
        zero = torch.where(a == 0, w, 0.0) / torch.where(a == 0, w, 0.0).sum()
        h = torch.full((2,), float(epsilon), dtype=torch.float64)
        return torch.stack([one - zero, zero - one]), h, ["1-0", "0-1"]


@pytest.mark.parametrize("solver", ["exact", "qpth"])
def test_custom_constraint_end_to_end(solver):
    if solver == "qpth":
        pytest.importorskip("qpth")
    rng = np.random.default_rng(5)
    n = 20
    groups = torch.as_tensor(rng.integers(0, 2, n))
    z = torch.as_tensor(rng.uniform(0, 1, n) + 0.5 * groups.numpy()).requires_grad_(True)
    constraint = WeightedMeanParity([1.0, 3.0])
    layer = FairnessLayer(constraint, epsilon=0.05, bounds=None, solver=solver)
    y = layer(z, groups)
    G, h, _ = constraint.rows(groups[:, None], epsilon=0.05)
    expected = reference_projection(z.detach().numpy(), G.numpy(), h.numpy(), None)
    np.testing.assert_allclose(y.detach().numpy(), expected, atol=1e-6)
    y.pow(2).sum().backward()
    assert torch.isfinite(z.grad).all()
    assert set(layer.last_solve_["duals"] or {"1-0": 0}) == {"1-0", "0-1"} or solver == "qpth"


def test_sample_weight_weights_the_group_means():
    z = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1])
    w = torch.tensor([3.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    y = FairnessLayer(epsilon=0.1, bounds=None)(z, groups, sample_weight=w)
    weighted_gap = (w[:2] @ y[:2]) / w[:2].sum() - y[2:].mean()
    assert abs(float(weighted_gap) - 0.1) <= 1e-9


@pytest.mark.parametrize("bounds", [(0.0, 1.0), None])
def test_weighted_projection_matches_the_reference_and_passes_gradcheck(bounds):
    rng = np.random.default_rng(4)
    n = 14
    groups = torch.as_tensor(rng.integers(0, 3, (n, 2)))
    w = torch.as_tensor(rng.uniform(0.5, 2.0, n))
    z = torch.as_tensor(rng.uniform(0.05, 0.95, n) + 0.4 * (groups[:, 0].numpy() == 0))
    z = z.clamp(0.01, 0.99).requires_grad_(True)
    layer = FairnessLayer("demographic_parity", epsilon=0.05, bounds=bounds)
    y = layer(z, groups, sample_weight=w)
    assert max(layer.last_solve_["duals"].values()) > 0  # a constraint is active
    cs = layer.constraint.build(groups, epsilon=0.05, sample_weight=w)
    reference = reference_projection(z.detach().numpy(), cs.dense().numpy(), cs.h.numpy(), bounds)
    np.testing.assert_allclose(y.detach().numpy(), reference, atol=1e-6)
    assert torch.autograd.gradcheck(lambda z: layer(z, groups, sample_weight=w), (z,), eps=1e-7,
                                    atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=-0.1), "epsilon"),
        (dict(epsilon=float("nan")), "epsilon"),
        (dict(solver="cvx"), "solver"),
        (dict(bounds=(1.0, 0.0)), "bounds"),
        (dict(bounds=(0.0,)), "bounds"),
        (dict(constraint="parity"), "constraint"),
        (dict(epsilon=True), "epsilon"),
        (dict(bounds=(math.inf, math.inf)), "lower bound below"),
        (dict(bounds=(None, -math.inf)), "upper bound above"),
        (dict(bounds=(False, 1.0)), "bounds"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FairnessLayer(**kwargs)


def test_bad_inputs():
    layer = FairnessLayer()
    groups = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="z must be finite"):
        layer(torch.tensor([0.5, float("nan")]), groups)
    with pytest.raises(ValueError, match="z must be finite"):
        layer(torch.tensor([0.5, float("inf")]), groups)
    with pytest.raises(ValueError, match="z must have shape"):
        layer(torch.ones(2, 1), groups)
    with pytest.raises(ValueError, match="groups must have one row"):
        layer(torch.ones(3), groups)
    with pytest.raises(ValueError, match="groups must hold integer"):
        layer(torch.ones(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        layer(torch.ones(2), torch.tensor([-1, 1]))
    with pytest.raises(ValueError, match="y_true is required"):
        FairnessLayer("equalized_odds")(torch.ones(2), groups)
    with pytest.raises(ValueError, match="binary labels"):
        FairnessLayer("equalized_odds")(torch.ones(2), groups, y_true=torch.tensor([0.0, 0.5]))


def test_later_solves_do_not_overwrite_earlier_results():
    from skfair import _exact

    n = 40_000
    z, cs = _pair_instance(0, n=n)
    first = _exact.solve(z, cs, 0.0, 1.0)
    kept = first.y.clone()
    for seed in range(1, 4):
        _exact.solve(_pair_instance(seed, n=n)[0], cs, 0.0, 1.0)
    torch.testing.assert_close(first.y, kept, atol=0, rtol=0)


def test_concurrent_solves_in_threads_agree_with_sequential_ones():
    from concurrent.futures import ThreadPoolExecutor

    from skfair import _exact

    instances = [_pair_instance(seed, n=40_000) for seed in range(8)]
    expected = [_exact.solve(z, cs, 0.0, 1.0).y for z, cs in instances]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda inst: _exact.solve(inst[0], inst[1], 0.0, 1.0).y,
                                instances * 3))
    for got, want in zip(results, expected * 3):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_empty_batch_projects_to_an_empty_output():
    z = torch.zeros(0, dtype=torch.float64, requires_grad=True)
    y = FairnessLayer()(z, torch.zeros(0, dtype=torch.long))
    assert y.shape == (0,)
    y.sum().backward()
    assert z.grad.shape == (0,)


def test_qpth_first_falls_back_to_exact_with_a_warning(monkeypatch):
    from skfair import _qpth

    monkeypatch.setattr(_qpth, "qpth_project", lambda z, cs, lo, hi: z.clone())
    z = torch.tensor([0.9, 0.8, 0.3, 0.2], dtype=torch.float64)
    cs = get_constraint("demographic_parity").build(torch.tensor([0, 0, 1, 1]), epsilon=0.1)
    with pytest.warns(RuntimeWarning, match="qpth solver failed"):
        y, info = project(z, cs, (0.0, 1.0), solver="qpth")
    assert info["solver"] == "exact"
    torch.testing.assert_close(y, project(z, cs, (0.0, 1.0), solver="exact")[0])


def test_solver_auto_is_refused_naming_the_options():
    """"auto" (exact, then qpth when installed) is no option: its meaning depended on the
    environment."""
    with pytest.raises(ValueError, match=r"solver must be one of \('exact', 'qpth'\); got 'auto'"):
        FairnessLayer(solver="auto")
    z = torch.tensor([0.9, 0.8, 0.3, 0.2], dtype=torch.float64)
    cs = get_constraint("demographic_parity").build(torch.tensor([0, 0, 1, 1]), epsilon=0.1)
    with pytest.raises(ValueError, match=r"solver must be one of \('exact', 'qpth'\); got 'auto'"):
        project(z, cs, (0.0, 1.0), solver="auto")


def test_exact_solver_failing_raises_without_fallback(monkeypatch):
    from skfair import _exact, _precise

    monkeypatch.setattr(_exact, "solve", lambda z, cs, lo, hi, lam0=None, **k: _exact.SolveResult(
        z.clone(), cs.h.new_zeros(cs.n_rows), 3, False, 1.0))
    monkeypatch.setattr(_precise, "solve", lambda z, cs, lo, hi: None)
    z = torch.tensor([0.9, 0.8, 0.3, 0.2], dtype=torch.float64)
    cs = get_constraint("demographic_parity").build(torch.tensor([0, 0, 1, 1]), epsilon=0.1)
    with pytest.raises(RuntimeError, match="exact: max violation"):
        project(z, cs, (0.0, 1.0), solver="exact")


def test_exact_solver_failing_on_a_small_batch_is_rescued_in_extended_precision(monkeypatch):
    """Before refusing, a small batch is projected in decimal arithmetic (``skfair._precise``),
    certified and checked like every exact result, and differentiated like one."""
    from skfair import _exact

    monkeypatch.setattr(_exact, "solve", lambda z, cs, lo, hi, lam0=None, **k: _exact.SolveResult(
        z.clone(), cs.h.new_zeros(cs.n_rows), 3, False, 1.0))
    z = torch.tensor([0.9, 0.8, 0.3, 0.2], dtype=torch.float64, requires_grad=True)
    cs = get_constraint("demographic_parity").build(torch.tensor([0, 0, 1, 1]), epsilon=0.1)
    y, info = project(z, cs, (0.0, 1.0), solver="exact")
    # the group means 0.85 and 0.25 meet at a gap of 0.1: each group moves by 0.25 (to within
    # the method's slack on h, _precise.SLACK)
    expected = torch.tensor([0.65, 0.55, 0.55, 0.45], dtype=torch.float64)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-10)
    assert info["solver"] == "exact" and info["max_violation"] <= 1e-9
    (grad,) = torch.autograd.grad(y[0], z)
    # within a group the shift is shared: y_0 = z_0 - (z_0 + z_1 - z_2 - z_3) / 4 + const
    torch.testing.assert_close(grad, torch.tensor([0.75, -0.25, 0.25, 0.25],
                                                  dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fair_outputs_pass_through_with_the_identity_jacobian(dtype):
    z = torch.tensor([0.6, 0.5, 0.55, 0.52], dtype=dtype, requires_grad=True)
    layer = FairnessLayer("demographic_parity", epsilon=0.1)
    y = layer(z, torch.tensor([0, 0, 1, 1]))
    assert layer.last_solve_["n_iter"] == 0 and layer.last_solve_["max_violation"] < 0
    assert set(layer.last_solve_["duals"].values()) == {0.0}
    assert y is z  # nothing to change: the input itself, no autograd node
    grad = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=dtype)
    y.backward(grad)
    torch.testing.assert_close(z.grad, grad, atol=0, rtol=0)


def test_fair_outputs_at_a_bound_still_get_the_projection_jacobian():
    z = torch.tensor([0.0, 0.5, 0.3, 0.2], dtype=torch.float64, requires_grad=True)
    y = FairnessLayer("demographic_parity", epsilon=0.1)(z, torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(y, z.detach(), atol=0, rtol=0)
    y.backward(torch.ones(4, dtype=torch.float64))
    # the output at the bound 0 is clipped: it does not move with z
    torch.testing.assert_close(z.grad, torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64))


def test_a_solver_claiming_no_iterations_is_not_trusted_with_unfair_outputs(monkeypatch):
    """The pass-through of fair outputs checks z itself, not the solver's word."""
    from skfair import _exact

    solve = _exact.solve

    def no_iterations(z, cs, lo, hi, **kwargs):
        result = solve(z, cs, lo, hi, **kwargs)
        result.n_iter = 0
        return result

    z = torch.tensor([0.9, 0.8, 0.3, 0.2], dtype=torch.float64)
    cs = get_constraint("demographic_parity").build(torch.tensor([0, 0, 1, 1]), epsilon=0.1)
    want, _ = project(z, cs, (0.0, 1.0))
    monkeypatch.setattr(_exact, "solve", no_iterations)
    got, _ = project(z, cs, (0.0, 1.0))
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert float(got[:2].mean() - got[2:].mean()) <= 0.1 + 1e-9


def test_both_backends_failing_raise(monkeypatch):
    from skfair import _exact, _precise, _qpth

    monkeypatch.setattr(_exact, "solve", lambda z, cs, lo, hi, lam0=None, **k: _exact.SolveResult(
        z.clone(), cs.h.new_zeros(cs.n_rows), 0, False, 1.0))
    monkeypatch.setattr(_precise, "solve", lambda z, cs, lo, hi: None)
    monkeypatch.setattr(_qpth, "qpth_project", lambda z, cs, lo, hi: z.clone())
    z = torch.tensor([0.9, 0.8, 0.3, 0.2], dtype=torch.float64)
    cs = get_constraint("demographic_parity").build(torch.tensor([0, 0, 1, 1]), epsilon=0.1)
    with pytest.raises(RuntimeError, match="fairness projection failed") as refusal:
        project(z, cs, (0.0, 1.0), solver="qpth")
    # ordinary outputs and weights, a batch the extended-precision solve takes: no advice
    message = str(refusal.value)
    assert "(raw outputs up to 0.9 in magnitude) could be certified" in message
    assert "never returned. Attempts: qpth: " in message and "exact: " in message


def test_solver_stops_at_the_rounding_floor(monkeypatch):
    """Asked for an accuracy below float64 rounding, the solver stops after a few stalled
    iterations instead of running to its limit, with a point the guarantee check accepts."""
    from skfair import _exact

    monkeypatch.setattr(_exact, "ROUNDING", 0.0)
    # (an instance whose residuals do not all happen to round to exactly zero: those converge)
    rng = np.random.default_rng(7)
    n = 100_000
    groups = torch.as_tensor(rng.integers(0, 3, (n, 2)))
    z = torch.as_tensor(rng.uniform(0, 1, n) + 0.2 * (groups[:, 0].numpy() == 1))
    cs = get_constraint("demographic_parity").build(groups, epsilon=0.01)
    result = _exact.solve(z, cs, 0.0, 1.0, tol=1e-30)
    assert not result.converged and result.n_iter < _exact.MAX_ITER
    assert float(cs.violation(result.y)) <= 1e-9


@pytest.mark.parametrize("backward", [True, False])
def test_a_projection_is_freed_with_its_output_without_garbage_collection(backward):
    """No reference cycle through the autograd context: a batch's solver arrays go when its
    output goes (a cycle would keep them until a collection, megabytes per large batch)."""
    import gc
    import weakref

    z = torch.tensor([0.9, 0.8, 0.3, 0.2], dtype=torch.float64, requires_grad=True)
    gc.collect()
    gc.disable()
    try:
        y = FairnessLayer("demographic_parity", epsilon=0.1)(z, torch.tensor([0, 0, 1, 1]))
        context = weakref.ref(y.grad_fn)
        if backward:
            y.sum().backward()
        del y
        assert context() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (None, None)])
def test_solver_reports_the_check_of_its_own_outputs(bounds):
    """The violation and range the solver returns are those of the y it returns (the layer's
    guarantee check uses them), also for a set with no rows."""
    from skfair import _exact

    z, cs = _pair_instance(3)
    empty = get_constraint("demographic_parity").build(torch.zeros(len(z), dtype=torch.long),
                                                       epsilon=0.1)
    for rows in (cs, empty):
        result = _exact.solve(z, rows, *bounds)
        assert result.check == rows.violation_and_range(result.y)
    assert empty.n_rows == 0 and result.check[0] == -np.inf


def _pair_instance(seed, n=40, cards=(2, 4)):
    rng = np.random.default_rng(seed)
    groups = torch.as_tensor(np.stack([rng.integers(0, k, n) for k in cards], axis=1))
    z = torch.as_tensor(rng.uniform(-0.2, 1.2, n) + 0.4 * (groups[:, 1].numpy() == 0))
    return z, get_constraint("demographic_parity").build(groups, epsilon=0.02)


@pytest.mark.parametrize("seed", range(5))
def test_tree_flows_keep_the_outputs_and_use_a_forest(seed):
    from skfair._exact import _tree_flows

    z, cs = _pair_instance(seed)
    lam = torch.as_tensor(np.random.default_rng(seed).exponential(size=cs.n_rows))
    routed = lam.clone()
    _tree_flows(routed.numpy(), cs.host_rows.family_size, cs.host_rows.family_start)
    torch.testing.assert_close(cs.rmatvec(routed), cs.rmatvec(lam))  # same outputs
    assert routed.min() >= 0 and routed.sum() <= lam.sum()  # never a lower dual value
    positive = torch.nonzero(routed > 0).squeeze(1)
    G = cs.dense()
    assert torch.linalg.matrix_rank(G[positive]) == len(positive)  # independent rows


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("violated", [0.2, 0.9])
def test_newton_rows_of_pair_families_are_independent(seed, violated):
    """The rows the Newton step moves: no satisfied row at zero, independent rows, and the
    same span (the same net flows) as every unpinned pair row."""
    from skfair._exact import _newton_rows, _tree_flows

    z, cs = _pair_instance(seed)
    rng = np.random.default_rng(seed)
    lam = np.where(rng.uniform(size=cs.n_rows) < 0.2, rng.exponential(size=cs.n_rows), 0.0)
    _tree_flows(lam, cs.host_rows.family_size, cs.host_rows.family_start)
    # residuals of real outputs (the members' order must come from them)
    y = rng.uniform(size=cs.n_samples)
    # (shifted: as with a smaller or larger epsilon, fewer or more rows violated)
    residual = cs.host_coef @ np.bincount(cs.host_atom, y, cs.n_atoms) - cs.host_h + violated - 0.5
    threshold = 1e-9 * lam.max()
    rows, pinned = _newton_rows(lam, residual, threshold, cs.host_rows)
    rows, pinned = rows.tolist(), set(pinned.tolist())
    assert rows == sorted(set(rows)) and not pinned & set(rows)
    assert not any(lam[r] <= 0 and residual[r] < 0 for r in rows)  # satisfied rows stay at 0
    assert pinned == {r for r in range(cs.n_rows) if lam[r] <= threshold and residual[r] < 0}
    G = cs.dense()
    assert torch.linalg.matrix_rank(G[rows]) == len(rows)
    unpinned = [r for r in range(cs.n_rows) if r not in pinned]
    assert torch.linalg.matrix_rank(G[unpinned]) == len(rows)  # the same span
    assert all(r in rows for r in range(cs.n_rows) if lam[r] > threshold)


@pytest.mark.parametrize("seed", range(10))
def test_solver_with_and_without_pair_families_agree(seed):
    """The forest routing changes the path of the dual Newton method, not its solution."""
    from skfair import _exact
    from skfair.constraints import ConstraintSet

    z, cs = _pair_instance(seed, n=200, cards=(3, 5))
    plain = ConstraintSet(cs.coef, cs.atom, cs.h, cs.keys)
    routed, generic = _exact.solve(z, cs, 0.0, 1.0), _exact.solve(z, plain, 0.0, 1.0)
    assert routed.converged and generic.converged
    torch.testing.assert_close(routed.y, generic.y, atol=1e-9, rtol=0)
    # The multipliers may differ (the dual has a face of solutions); their net shifts do not.
    torch.testing.assert_close(cs.rmatvec(routed.lam), cs.rmatvec(generic.lam), atol=1e-8,
                               rtol=0)


def _recorded_instance(name):
    """A recorded projection (tests/data): its constraint set, outputs and warm start.

    The recordings hold dense rows; they are put in the factored form of the built-in
    constraints (one statistic per group, its pair rows in family order)."""
    from pathlib import Path

    from skfair._constraint_set import host_set, statistics

    data = np.load(Path(__file__).parent / "data" / f"{name}.npz")
    coef = data["coef"]
    if name == "flat_row_warm_start":  # mean residual rows: (attribute, group, +1 / -1)
        keys = [(int(a), int(g), "+" if sign > 0 else "-") for a, g, sign in data["keys"]]
        old = {key: r for r, key in enumerate(keys)}
        groups = [key for key in keys if key[2] == "+"]
        # a family per group: the group's mean and "nothing"
        stat = np.array([coef[old[key]] for key in groups])
        order = [old[a, g, sign] for a, g, _ in groups for sign in "+-"]
        plus = [i if sign == "+" else -1 for i in range(len(groups)) for sign in "+-"]
        minus = [-1 if sign == "+" else i for i in range(len(groups)) for sign in "+-"]
        sizes = [2] * len(groups)
    else:  # demographic parity rows: (attribute, u, v), every ordered pair of an attribute
        keys = [(int(a), int(u), int(v), None) for a, u, v in data["keys"]]
        old = {key: r for r, key in enumerate(keys)}
        stat, order, plus, minus, sizes = [], [], [], [], []
        for a in dict.fromkeys(key[0] for key in keys):
            members = list(dict.fromkeys(u for a_, u, _, _ in keys if a_ == a))
            first = len(stat)
            stat.extend(np.maximum(coef[old[a, u, members[members[0] == u], None]], 0.0)
                        for u in members)
            for i, u in enumerate(members):
                for j, v in enumerate(members):
                    if i != j:
                        order.append(old[a, u, v, None])
                        plus.append(first + i)
                        minus.append(first + j)
            sizes.append(len(members))
        stat = np.array(stat)
    sizes = np.array(sizes, dtype=np.int64)
    rows = statistics(stat, np.array(plus), np.array(minus), sizes,
                       np.r_[0, np.cumsum(sizes * (sizes - 1))].astype(np.int64))
    h, atom = data["h"][order], data["atom"]
    mass = np.bincount(atom, minlength=coef.shape[1]).astype(np.float64)
    cs = host_set(rows, atom, h, torch.as_tensor(h), [keys[r] for r in order],
                  torch.device("cpu"), None, mass)
    np.testing.assert_array_equal(cs.host_coef, coef[order])  # the same rows
    return cs, torch.as_tensor(data["z"]), torch.as_tensor(data["lam0"][order])


@pytest.mark.parametrize("name", ["stalled_warm_start", "flat_row_warm_start"])
def test_recorded_warm_starts_converge(name):
    """Regressions, recorded when training started every batch from the previous batch's
    multipliers (it no longer does; the solver must still converge from any start):

    - stalled_warm_start: a batch of Adult (255 rows, sex x race, 22 pair rows) where re-routing
      left tiny positive multipliers on satisfied rows; kept in the Newton step, the projection
      undid the step and the solver stalled at its iteration limit;
    - flat_row_warm_start: mean residual (27 rows, 3 groups) where one group's outputs were all
      clipped, so the dual was linear along its row and each step crept along it.
    """
    from skfair import _exact

    cs, z, lam0 = _recorded_instance(name)
    warm = _exact.solve(z, cs, 0.0, 1.0, lam0=lam0)
    cold = _exact.solve(z, cs, 0.0, 1.0)
    assert warm.converged and warm.n_iter < 20
    torch.testing.assert_close(warm.y, cold.y, atol=1e-9, rtol=0)
    assert float(cs.violation(warm.y)) <= 1e-9


def test_warm_start_off_a_flat_dual_direction_converges():
    """Regression (found by the property test below): 22 equal outputs, three attributes whose
    groups partly coincide, demographic parity with epsilon 0. The outputs are fair as they are;
    the dual has a flat direction (rows of two attributes cancel) and the warm start lies along
    it. Pinning a tiny multiplier of the first attribute without re-evaluating the gradient
    made the next step put it back on the opposite row, and the solver stalled short of its
    tolerance."""
    from skfair import _exact

    groups = [[2, 3, 0], [1, 3, 2], [2, 3, 0], [1, 3, 0], [1, 3, 0], [0, 0, 1], [2, 3, 2],
              [2, 1, 0], [1, 3, 0], [1, 3, 2], [1, 1, 2], [1, 3, 0], [2, 3, 0], [2, 3, 0],
              [2, 3, 0], [1, 3, 0], [1, 3, 2], [1, 3, 0], [1, 3, 0], [2, 1, 0], [0, 3, 0],
              [1, 3, 0]]
    cs = get_constraint("demographic_parity").build(torch.as_tensor(groups), epsilon=0.0)
    z = torch.full((22,), 0.58022158, dtype=torch.float64)
    rng = np.random.default_rng(76)  # the property test's warm start for this instance
    previous = torch.as_tensor(np.clip(z.numpy() + rng.normal(0, 0.3, len(z)), -0.5, 1.5))
    lam0 = _exact.solve(previous, cs, None, None).lam * rng.uniform(0.5, 2.0)
    lam0 = lam0 + torch.as_tensor(rng.uniform(size=cs.n_rows) < 0.3) * 1e-17
    warm = _exact.solve(z, cs, None, None, lam0=lam0)
    assert warm.converged and warm.n_iter < 20
    torch.testing.assert_close(warm.y, z, atol=1e-10, rtol=0)
    assert float(cs.violation(warm.y)) <= 1e-10


@SETTINGS
@given(instances(), st.integers(0, 2**31 - 1))
def test_warm_started_projection_matches_the_cold_one(instance, seed):
    """From any starting multipliers (here another batch's, rescaled, with rounding leftovers)
    the solver must reach the same projection as from zero."""
    from skfair import _exact

    z, groups, constraint, y_true, bounds, epsilon = instance
    cs = get_constraint(constraint).build(torch.as_tensor(groups), epsilon=epsilon,
                                          y_true=torch.as_tensor(y_true))
    lo, hi = bounds if bounds is not None else (None, None)
    try:
        _exact.problem_scale(torch.as_tensor(z), cs, lo, hi)
    except InfeasibleConstraintError:
        assume(False)
    rng = np.random.default_rng(seed)
    previous = torch.as_tensor(np.clip(z + rng.normal(0, 0.3, len(z)), -0.5, 1.5))
    lam0 = _exact.solve(previous, cs, lo, hi).lam * rng.uniform(0.5, 2.0)
    lam0 = lam0 + torch.as_tensor(rng.uniform(size=cs.n_rows) < 0.3) * 1e-17
    warm = _exact.solve(torch.as_tensor(z), cs, lo, hi, lam0=lam0)
    cold = _exact.solve(torch.as_tensor(z), cs, lo, hi)
    assert warm.converged
    torch.testing.assert_close(warm.y, cold.y, atol=1e-8, rtol=0)


def test_a_warm_start_of_the_wrong_length_is_an_error():
    from skfair import _exact

    z, cs = _pair_instance(0)
    with pytest.raises(ValueError, match="one multiplier per row"):
        _exact.solve(z, cs, 0.0, 1.0, lam0=np.ones(cs.n_rows + 1))


def _dense_vjp(grad, y, lam, cs, lo, hi):
    """The implicit derivative written out densely: on the free coordinates F and the active
    rows S, ``grad_z_F = (I - G_SF^T M^+ G_SF) grad_F`` and ``grad_h_S = M^+ G_SF grad_F`` with
    ``M = G_SF G_SF^T``; clipped coordinates get nothing."""
    G = cs.dense().numpy()
    free = (y > lo) & (y < hi)
    active = lam > 0
    G_SF = G[np.ix_(active, free)]
    pinv = np.linalg.pinv(G_SF @ G_SF.T)
    grad_z = np.zeros_like(grad)
    grad_z[free] = grad[free] - G_SF.T @ pinv @ (G_SF @ grad[free])
    grad_h = np.zeros(len(lam))
    grad_h[active] = pinv @ (G_SF @ grad[free])
    return grad_z, grad_h


@pytest.mark.parametrize("coincide", [False, True])
def test_backward_matches_the_dense_implicit_derivative(coincide):
    """Regular active rows take a Cholesky solve; rows that coincide in the batch (two
    attributes with the same groups) make the system singular, where the minimum-norm
    solution of the pseudo-inverse is the derivative."""
    from skfair import _exact

    rng = np.random.default_rng(11)
    n = 60
    first = rng.integers(0, 3, n)
    second = first if coincide else rng.integers(0, 2, n)
    groups = torch.as_tensor(np.stack([first, second], axis=1))
    z = torch.as_tensor(np.clip(rng.uniform(0, 1, n) + 0.5 * (first == 0), 0, 1.2))
    cs = get_constraint("demographic_parity").build(groups, epsilon=0.05)
    result = _exact.solve(z, cs, 0.0, 1.0)
    lam = result.lam.numpy()
    active_rows = cs.dense().numpy()[lam > 0]
    if coincide:  # the duplicated rows are both active: the system is singular
        assert np.linalg.matrix_rank(active_rows) < active_rows.shape[0]
    else:
        assert np.linalg.matrix_rank(active_rows) == active_rows.shape[0] >= 2
    grad = torch.as_tensor(rng.normal(size=n))
    grad_z, grad_h = _exact.vjp(grad, result.host_y, result.host_lam, cs, 0.0, 1.0)
    want_z, want_h = _dense_vjp(grad.numpy(), result.y.numpy(), lam, cs, 0.0, 1.0)
    np.testing.assert_allclose(grad_z.numpy(), want_z, atol=1e-9)
    np.testing.assert_allclose(grad_h.numpy(), want_h, atol=1e-9)


def _perturbed_first_solve(monkeypatch, offset):
    """Make the exact solver's first answer of each projection ``offset`` away from its own
    solution (as rounding at a large magnitude of z would), the later ones exact."""
    from skfair import _exact

    solve, calls = _exact.solve, []

    def first_off(z, cs, lo, hi, **kwargs):
        result = solve(z, cs, lo, hi, **kwargs)
        calls.append(result)
        if len(calls) % 2:
            y = Bounds(lo, hi).clip(result.y + offset)
            return _exact.SolveResult(y, result.host_lam, result.n_iter, True, result.scale)
        return result

    monkeypatch.setattr(_exact, "solve", first_off)
    return calls


def test_an_inaccurate_first_solve_is_polished_into_the_projection(monkeypatch):
    rng = np.random.default_rng(3)
    z = torch.as_tensor(rng.uniform(0, 1, 60))
    groups = torch.as_tensor(rng.integers(0, 3, 60))
    cs = get_constraint("demographic_parity").build(groups, epsilon=0.02)
    exact, _ = project(z, cs, (0.0, 1.0), "exact")
    means = torch.stack([exact[groups == k].mean() for k in range(3)])
    away = torch.sign(means - means.median())[groups]  # widens the gap of the group means
    calls = _perturbed_first_solve(monkeypatch, 1e-8 * away)
    y, info = project(z, cs, (0.0, 1.0), "exact")
    assert len(calls) == 2  # the first answer missed the guarantee: solved again from it
    assert info["max_violation"] <= 1e-9
    np.testing.assert_allclose(y.numpy(), exact.numpy(), atol=1e-7)


def test_a_first_solve_far_from_the_projection_is_not_polished_into_another_answer(
        monkeypatch):
    z = torch.tensor([0.9, 0.8, 0.3, 0.2], dtype=torch.float64)
    cs = get_constraint("demographic_parity").build(torch.tensor([0, 0, 1, 1]), epsilon=0.1)
    exact, _ = project(z, cs, (0.0, 1.0), "exact")
    _perturbed_first_solve(monkeypatch, torch.tensor([0.3, 0.3, -0.2, -0.2],
                                                     dtype=torch.float64))
    # The polish of the perturbed outputs is fair but not the projection of z: its certificate
    # fails, and the active-set method solves z itself (from the first solve's multipliers).
    y, _ = project(z, cs, (0.0, 1.0), "exact")
    torch.testing.assert_close(y, exact, rtol=0, atol=1e-12)


def test_without_a_certified_answer_the_projection_is_refused(monkeypatch):
    from decimal import Decimal

    from skfair import _active_set, _precise

    z = torch.tensor([0.9, 0.8, 0.3, 0.2], dtype=torch.float64)
    cs = get_constraint("demographic_parity").build(torch.tensor([0, 0, 1, 1]), epsilon=0.1)
    _perturbed_first_solve(monkeypatch, torch.tensor([0.3, 0.3, -0.2, -0.2],
                                                     dtype=torch.float64))
    monkeypatch.setattr(_active_set, "solve", lambda *args: None)
    # the last resort's outputs, moved from z without multipliers to explain it, are refused
    # by its own certificate
    monkeypatch.setattr(_precise, "solve", lambda z, cs, lo, hi: (
        z - 0.1, np.full(cs.n_rows, Decimal(0), dtype=object), 1))
    with pytest.raises(RuntimeError, match="not certified to be the projection") as refusal:
        project(z, cs, (0.0, 1.0), "exact")
    assert "the extended-precision solve is not certified" in str(refusal.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_narrow_outputs_lie_within_the_bounds_exactly_and_meet_the_rows_in_their_dtype(dtype):
    torch.manual_seed(0)
    z = (torch.rand(1000, dtype=torch.float64) * 0.6).to(dtype)
    groups = torch.randint(0, 3, (1000,))
    layer = FairnessLayer("demographic_parity", epsilon=0.0, bounds=(0.0, 0.3), solver="exact")
    y = layer(z, groups)
    assert y.dtype == dtype
    y64 = y.double().numpy()
    assert y64.max() <= 0.3 and y64.min() >= 0.0  # 0.3 itself rounds up in float32
    means = [y64[groups.numpy() == k].mean() for k in range(3)]
    # the stated tolerance: 1e-9 plus the dtype's eps times the rows' L1 norm (2) at scale 1
    assert max(means) - min(means) <= 1e-9 + 2 * torch.finfo(dtype).eps
    assert layer.last_solve_["max_violation"] == pytest.approx(max(means) - min(means),
                                                               abs=1e-12)


def test_outputs_that_do_not_fit_the_dtype_are_an_error():
    z = torch.tensor([6e4, 6e4, 5e4, 5e4], dtype=torch.float16)  # float16 ends at 65504
    layer = FairnessLayer("demographic_parity", epsilon=0.0, bounds=(7e4, 8e4), solver="exact")
    with pytest.raises(ValueError, match="do not fit in torch.float16"):
        layer(z, torch.tensor([0, 0, 1, 1]))


@pytest.mark.parametrize("bad", [math.inf, math.nan, -1.0])
@pytest.mark.parametrize("constraint", ["demographic_parity", "custom"])
def test_an_infinite_sample_weight_is_an_error_not_a_constraint_switched_off(bad, constraint):
    class Parity(AffineConstraint):
        def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
            return get_constraint("demographic_parity").rows(
                groups, epsilon=epsilon, sample_weight=sample_weight)[:2]

    layer = FairnessLayer(Parity() if constraint == "custom" else constraint, epsilon=0.05)
    z = torch.tensor([0.9, 0.1, 0.8, 0.2], dtype=torch.float64)
    with pytest.raises(ValueError, match="sample_weight must be finite and non-negative"):
        layer(z, torch.tensor([0, 1, 0, 1]), sample_weight=torch.tensor([1.0, bad, 1.0, 1.0]))


class _Contradiction(AffineConstraint):
    """``y_0 + y_1 <= 0.5`` and ``y_0 + y_1 >= 1.5``: each row alone can hold within [0, 1]."""

    def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
        G = torch.zeros(2, groups.shape[0], dtype=torch.float64)
        G[0, :2], G[1, :2] = 1.0, -1.0
        return G, torch.tensor([0.5, -1.5], dtype=torch.float64), ["low", "high"]


@pytest.mark.parametrize("solver", ["exact", "qpth"])
def test_jointly_infeasible_custom_rows_raise_infeasible_naming_them(solver):
    layer = FairnessLayer(_Contradiction(), epsilon=0.0, bounds=(0.0, 1.0), solver=solver)
    with pytest.raises(InfeasibleConstraintError, match="'low', 'high'") as info:
        layer(torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64), torch.tensor([0, 1, 0]))
    assert info.value.key == "low"
    assert "mean_residual" not in str(info.value)  # no hint that belongs to another constraint


def test_infeasible_custom_row_message_has_no_mean_residual_hint():
    class Impossible(AffineConstraint):
        def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
            return (torch.ones(1, groups.shape[0], dtype=torch.float64),
                    torch.tensor([-1.0], dtype=torch.float64))

    layer = FairnessLayer(Impossible(), bounds=(0.0, 1.0), solver="exact")
    with pytest.raises(InfeasibleConstraintError, match="widen the bounds") as info:
        layer(torch.tensor([0.2, 0.9], dtype=torch.float64), torch.tensor([0, 1]))
    assert "mean_residual" not in str(info.value)


def test_raw_outputs_far_outside_the_bounds_are_projected_exactly():
    """The check's tolerance grew with |z|: [1e8, -1e8] came back as [1, 0] (gap 1 > 0.05)."""
    layer = FairnessLayer("demographic_parity", epsilon=0.05, bounds=(0.0, 1.0), solver="exact")
    y = layer(torch.tensor([1e8, -1e8], dtype=torch.float64), torch.tensor([0, 1]))
    # the pulls of +-1e8 cancel but for y0 - y1, which takes its largest value; then the box
    np.testing.assert_allclose(y.numpy(), [0.05, 0.0], atol=1e-9)
    # an asymmetric pull: moving the far output costs far more than moving the near one
    y = layer(torch.tensor([1e8, -1.0], dtype=torch.float64), torch.tensor([0, 1]))
    np.testing.assert_allclose(y.numpy(), [1.0, 0.95], atol=1e-9)


@pytest.mark.parametrize("epsilon", [0.0, 0.02])
@pytest.mark.parametrize("n_groups", [2, 4])
def test_disparate_impact_projection_matches_the_reference(epsilon, n_groups):
    """The four-fifths constraint on scores: the exact projection equals the conic reference on
    the same rows, and the groups' means (numpy) keep ratio * mean_v - mean_u <= epsilon."""
    from skfair.constraints import DisparateImpact

    rng = np.random.default_rng(n_groups)
    n = 300
    groups = rng.integers(0, n_groups, n)
    z = np.clip(rng.beta(2, 5, n) + 0.4 * (groups == 1), 0, 1)
    layer = FairnessLayer(DisparateImpact(0.8), epsilon=epsilon, solver="exact")
    y = layer(torch.as_tensor(z), torch.as_tensor(groups)).numpy()
    means = np.bincount(groups, y) / np.bincount(groups)
    assert 0.8 * means.max() - means.min() <= epsilon + 1e-9
    cs = DisparateImpact(0.8).build(torch.as_tensor(groups), epsilon=epsilon)
    np.testing.assert_allclose(
        y, reference_projection(z, cs.dense().numpy(), cs.h.numpy(), (0.0, 1.0)), atol=1e-6)


@pytest.mark.parametrize("epsilon", [0.0, 0.02])
def test_error_rate_parity_matches_the_reference(epsilon):
    """Equal expected error rates: the exact projection equals the conic reference on the same
    rows, and the groups' mean of y (1 - p) + (1 - y) p (numpy) differ by at most epsilon."""
    rng = np.random.default_rng(4)
    n = 300
    groups = rng.integers(0, 3, n)
    y = (rng.uniform(size=n) < 0.3 + 0.3 * (groups == 1)).astype(float)
    z = np.clip(0.4 * y + rng.uniform(0, 0.6, n) + 0.2 * (groups == 2), 0, 1)
    layer = FairnessLayer("error_rate_parity", epsilon=epsilon, solver="exact")
    out = layer(torch.as_tensor(z), torch.as_tensor(groups), y_true=torch.as_tensor(y)).numpy()
    errors = np.bincount(groups, y * (1 - out) + (1 - y) * out) / np.bincount(groups)
    assert errors.max() - errors.min() <= epsilon + 1e-9
    cs = get_constraint("error_rate_parity").build(torch.as_tensor(groups), epsilon=epsilon,
                                                   y_true=torch.as_tensor(y))
    np.testing.assert_allclose(
        out, reference_projection(z, cs.dense().numpy(), cs.h.numpy(), (0.0, 1.0)), atol=1e-6)


def test_raw_outputs_of_any_magnitude_free_at_the_solution():
    """Fuzz finding: outputs 1e19 outside the bounds that the solution frees need multipliers of
    their own magnitude (the dual form then works at z's resolution); the continuation and the
    recentring solve it. By hand: moving an output far outside costs about 2 |z - bound| per
    unit, so the lone cells (2, 0) and (4, 0) move (to 1/3 - 0.05 and 1/3) and cell (4, 2),
    whose mean 1/3 is dearer to move, stays clipped."""
    layer = FairnessLayer("demographic_parity", epsilon=0.05, bounds=(-5.0, 3.0),
                          solver="exact", intersectional=True)
    z = torch.tensor([-7e19, -8e19, 6e19, 5e19, 7e19], dtype=torch.float64)
    groups = torch.tensor([[4, 2], [2, 0], [4, 0], [4, 2], [4, 2]])
    y = layer(z, groups).numpy()
    np.testing.assert_allclose(y, [-5.0, 1 / 3 - 0.05, 1 / 3, 3.0, 3.0], atol=1e-9)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("magnitude", [1e8, 1e12, 1e14])
def test_far_raw_outputs_with_a_known_projection(seed, magnitude):
    """An instance far out whose projection is known: if ``y`` is the projection of ``z`` and
    the row ``(u, v)`` is active at ``y``, then ``y`` is also the projection of ``z + G_uv^T mu``
    for any ``mu >= 0`` (the KKT conditions hold with the multiplier grown by ``mu``). With
    group sizes and ``z`` on a binary grid the shifted raw outputs are exact floats; the active
    row is read from ``y`` with numpy means. The far instance gives ``y`` back within what the
    layer certifies (README): the projection of raw outputs within ``1e-6`` of the scale plus
    64 ulp of ``z`` per sample, hence (nonexpansive) within that norm of ``y``; and its gap
    meets epsilon."""
    rng = np.random.default_rng(seed)
    sizes = (16, 32) if seed % 2 else (64, 8)
    groups = np.repeat([0, 1], sizes)
    z = np.round(rng.uniform(-0.5, 1.0, groups.size) * 64) / 64 + 0.5 * groups
    bounds = ((0.0, 1.0), None, (-5.0, 3.0))[seed % 3]
    layer = FairnessLayer("demographic_parity", epsilon=0.05, bounds=bounds, solver="exact")
    y = layer(torch.as_tensor(z), torch.as_tensor(groups)).numpy()
    means = np.array([y[groups == g].mean() for g in (0, 1)])
    assert means[1] - means[0] == pytest.approx(0.05, abs=1e-9)  # the row (1, 0) is active
    # G_(1,0)^T mu: +mu / n_1 on group 1, -mu / n_0 on group 0; mu = K n_0 n_1, exact shifts
    k = magnitude / max(sizes)
    far = z + np.where(groups == 1, k * sizes[0], -k * sizes[1])
    assert np.abs(far).max() >= magnitude / 2 and np.array_equal(far - (far - z), z)
    out = layer(torch.as_tensor(far), torch.as_tensor(groups)).numpy()
    scale = max(1.0, np.abs(out).max(), 0.05)
    certified = np.sqrt(np.sum((1e-6 * scale + 64 * np.spacing(np.abs(far))) ** 2))
    assert np.linalg.norm(out - y) <= certified
    out_means = np.array([out[groups == g].mean() for g in (0, 1)])
    assert abs(out_means[1] - out_means[0]) <= 0.05 + 1e-9 * scale


def _batched_instance(groups_shape, seed=7, B=3, n=10):
    """``B`` problems of ``n`` outputs, biased so the constraint is active in each, and group
    codes of ``groups_shape`` (with ``B``, ``n`` and two attributes for ``k``)."""
    rng = np.random.default_rng(seed)
    shape = tuple({"B": B, "n": n, "k": 2}[d] for d in groups_shape)
    groups = torch.as_tensor(rng.integers(0, 2, shape))
    first = groups[..., 0] if "k" in groups_shape else groups
    z = torch.as_tensor(rng.uniform(0.05, 0.6, (B, n))) + 0.35 * first
    return z, groups


def _problem(values, b, z):
    """The values of problem ``b``: its row when per problem, else the shared values."""
    return values[b] if values is not None and tuple(values.shape[:2]) == tuple(z.shape) \
        else values


@pytest.mark.parametrize("groups_shape", ["n", "nk", "Bn", "Bnk"])
@pytest.mark.parametrize("constraint", ["demographic_parity", "equalized_odds"])
def test_a_batch_of_problems_is_projected_like_each_problem_alone(groups_shape, constraint):
    """z of shape (B, n): every row projected on its own, with groups shared ((n,), (n, k)) or
    per problem ((B, n), (B, n, k)), labels per problem: the same values and diagnostics as
    the unbatched layer, and each row meets the constraint."""
    z, groups = _batched_instance(groups_shape)
    y_true = torch.as_tensor(np.random.default_rng(8).integers(0, 2, z.shape).astype(float))
    layer = FairnessLayer(constraint, epsilon=0.05, intersectional=groups_shape.endswith("k"))
    y = layer(z, groups, y_true=y_true)
    assert y.shape == z.shape and y.dtype == z.dtype
    assert isinstance(layer.last_solve_, list) and len(layer.last_solve_) == len(z)
    single = FairnessLayer(constraint, epsilon=0.05, intersectional=groups_shape.endswith("k"))
    for b in range(len(z)):
        alone = single(z[b], _problem(groups, b, z), y_true=y_true[b])
        torch.testing.assert_close(y[b], alone, rtol=0, atol=0)
        assert layer.last_solve_[b]["n_iter"] == single.last_solve_["n_iter"] > 0
        assert layer.last_solve_[b]["max_violation"] <= 1e-9
        assert dict(layer.last_solve_[b]["duals"]) == dict(single.last_solve_["duals"])


def test_a_batch_with_shared_and_per_problem_weights():
    z, groups = _batched_instance("Bn")
    rng = np.random.default_rng(9)
    for weight in (torch.as_tensor(rng.uniform(0.5, 2, z.shape[1])),
                   torch.as_tensor(rng.uniform(0.5, 2, z.shape))):
        y = FairnessLayer(epsilon=0.02)(z, groups, sample_weight=weight)
        for b in range(len(z)):
            want = FairnessLayer(epsilon=0.02)(z[b], groups[b],
                                               sample_weight=_problem(weight, b, z))
            torch.testing.assert_close(y[b], want, rtol=0, atol=0)


@pytest.mark.parametrize("groups_shape", ["n", "Bnk"])
def test_gradcheck_batched(groups_shape):
    """The batched projection is differentiable: gradcheck in float64, and its gradient is
    that of stacking the unbatched projections."""
    z0, groups = _batched_instance(groups_shape, B=2, n=8)
    layer = FairnessLayer(epsilon=0.05, bounds=(0.0, 1.0))
    z = z0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: layer(z, groups), (z,), eps=1e-7, atol=1e-6)
    weights = torch.as_tensor(np.random.default_rng(10).normal(size=z0.shape))
    (layer(z, groups) * weights).sum().backward()
    stacked = z0.clone().requires_grad_(True)
    (torch.stack([layer(row, _problem(groups, b, z0)) for b, row in enumerate(stacked)])
     * weights).sum().backward()
    torch.testing.assert_close(z.grad, stacked.grad, rtol=0, atol=1e-12)
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("name, shape, match", [
    ("groups", (4, 10), r"groups must have shape \(n,\), \(n, n_attributes\), \(B, n\) or "
                        r"\(B, n, n_attributes\) for z of shape \(B, n\) = \(3, 10\); "
                        r"got \(4, 10\)"),
    ("groups", (3, 10, 2, 1), r"groups must have shape .* got \(3, 10, 2, 1\)"),
    ("y_true", (10, 2), r"y_true must have shape \(n,\) or \(B, n\) for z of shape \(B, n\) = "
                        r"\(3, 10\); got \(10, 2\)"),
    ("sample_weight", (9,), r"sample_weight must have shape \(n,\) or \(B, n\) .* got \(9,\)"),
])
def test_batched_shapes_that_fit_no_problem_are_an_error(name, shape, match):
    z, groups = _batched_instance("n")
    layer = FairnessLayer("equalized_odds", epsilon=0.05)
    layer(z[0], groups, y_true=torch.ones(10))
    before = layer.last_solve_
    values = {"groups": groups, "y_true": torch.ones(10), "sample_weight": None}
    values[name] = torch.ones(shape, dtype=torch.long if name == "groups" else torch.float64)
    with pytest.raises(ValueError, match=match):
        layer(z, values["groups"], y_true=values["y_true"],
              sample_weight=values["sample_weight"])
    assert layer.last_solve_ is before  # a failed call changes nothing
    with pytest.raises(ValueError, match=r"z must have shape \(n,\) or \(B, n\); got \(1, 3, "):
        layer(z[None], groups)


def test_square_groups_that_could_be_shared_or_per_problem_are_an_error():
    z = torch.rand(3, 3, dtype=torch.float64)
    groups = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 0, 1]])  # (B, n) or (n, n_attributes)?
    layer = FairnessLayer("demographic_parity", epsilon=0.0)
    with pytest.raises(ValueError, match=r"could be per problem \(B, n\) or shared"):
        layer(z, groups)
    per_problem = layer(z, groups[..., None])
    shared = layer(z, groups.expand(3, -1, -1))
    for b in range(3):
        torch.testing.assert_close(per_problem[b], layer(z[b], groups[b]))
        torch.testing.assert_close(shared[b], layer(z[b], groups))


def test_a_batch_of_no_problems_is_an_empty_output():
    layer = FairnessLayer("demographic_parity", epsilon=0.05)
    z = torch.rand(0, 5, dtype=torch.float64, requires_grad=True)
    y = layer(z, torch.tensor([0, 1, 0, 1, 1]))
    assert y.shape == (0, 5) and layer.last_solve_ == []


def test_a_column_of_outputs_is_not_taken_for_problems_of_one_output():
    """A network's (n, 1) output is not n problems of one output (each left as it is): the
    error says to flatten it."""
    layer = FairnessLayer(epsilon=0.0)
    with pytest.raises(ValueError, match=r"got \(4, 1\), problems of one output.*z.reshape"):
        layer(torch.tensor([[0.9], [0.8], [0.3], [0.2]]), torch.tensor([[0], [0], [1], [1]]))
    assert layer.last_solve_ is None


def test_training_objective_projects_far_raw_outputs_as_project_does():
    """Raw outputs far beyond the bounds skip the fused objective: a training batch gets the
    certified projection of :func:`project` (tied far outputs stay tied, where a solve at their
    magnitude breaks the tie within its rounding)."""
    from skfair import _kernels
    from skfair.layer import TrainingLoss, projected_objective, training_objective

    z = torch.tensor([1.2890569e20, -3.3573328e19, -3.3573328e19, 1.7864279e20, -3.3573328e19,
                      1.7864279e20, 1.2890569e20, -3.3573328e19], dtype=torch.float64)
    groups = torch.tensor([[12, 0], [12, 0], [1, 3], [12, 0], [1, 0], [12, 0], [12, 0], [1, 0]])
    cs = get_constraint("demographic_parity").build(groups, epsilon=0.05)
    ones = torch.ones(8, dtype=torch.float64)
    assert projected_objective(z, cs, (-5.0, 3.0), ones, ones, _kernels.SQUARED_ERROR, 1.0,
                               0.0) is None
    loss = TrainingLoss(lambda y, target: (y - target) ** 2, _kernels.SQUARED_ERROR, 1.0, 0.0)
    _, _, fair = training_objective(z, cs, (-5.0, 3.0), "exact", ones, ones, loss)
    expected, _ = project(z, cs, (-5.0, 3.0))
    torch.testing.assert_close(fair, expected, atol=0, rtol=0)
    torch.testing.assert_close(fair[[2, 4, 7]], torch.full((3,), 1.35, dtype=torch.float64))
