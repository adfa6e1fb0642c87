"""The differentiable fairness layer: a Euclidean projection onto the fair set of a batch."""

import math
import numbers
import warnings
from collections import namedtuple
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from . import _active_set, _exact, _guarantee, _kernels, _precise, _qpth, _reduction
from ._bounds import Bounds
from ._constraint_set import ConstraintSet
from ._guarantee import (POLISH_TOL, backward_error, certified, check, checked, exact_violation,
                         meets_guarantee, output_scale, tolerance, unclipped, violations)
from ._host import device_tensor, host_vector, to_device
from ._rows import as_group_matrix, check_epsilon
from .constraints import (AffineConstraint, InfeasibleConstraintError, get_constraint,
                          intersect_groups)

__all__ = ["FairnessLayer", "project"]

SOLVERS = ("exact", "qpth")
#: the backends each solver option tries, in order (the second one when the first fails)
_BACKEND_ORDER = {"exact": ("exact",), "qpth": ("qpth", "exact")}

#: the guarantee's tolerance, relative to the outputs' scale (:mod:`skfair._guarantee`)
GUARANTEE_TOL = _guarantee.GUARANTEE_TOL
#: how far beyond its bound (times the outputs' scale) an output clipped from far is held in the
#: second solve (:func:`_polished`)
FAR = 1e3


class FairnessLayer(nn.Module):
    r"""Project a batch of model outputs onto the set of fair outputs.

    ``forward(z, groups)`` returns

    .. math:: y^* = \arg\min_y \tfrac12 \|y - z\|^2 \ \text{s.t.}\ G y \le h,\ lo \le y \le hi

    where ``G y <= h`` are the rows of the fairness constraint for the batch's groups (see
    :mod:`skfair.constraints`), e.g. for demographic parity "the mean output of any two groups
    differs by at most epsilon". The output satisfies the constraint on every batch: after each
    solve the violation ``max(G y - h)`` and the bounds are checked on the returned values, and a
    result off by more than ``1e-9`` times the outputs' scale ``max(1, |y|, |h|)`` (plus the
    rounding of a narrower dtype), or outside the bounds, is never returned: it is projected
    once more and certified, else :class:`RuntimeError` is raised (README, "Guarantees,
    precisely"; with ``solver="qpth"`` a failing qpth result falls back to the exact solver
    first). All computation is in float64; the result is cast
    back to the dtype of ``z``, within the bounds in that dtype. The projection is the minimal
    change (in Euclidean norm) of the outputs that makes them fair, and it is differentiable, so
    networks can be trained through it.

    Parameters
    ----------
    constraint : str or AffineConstraint, default="demographic_parity"
        ``"demographic_parity"``, ``"equalized_odds"``, ``"equal_opportunity"``,
        ``"mean_residual"`` or an :class:`~skfair.constraints.AffineConstraint` instance.
    epsilon : float, default=0.05
        Allowed unfairness (e.g. largest difference of group means).
    bounds : tuple of (float or None, float or None) or None, default=(0.0, 1.0)
        Box on the outputs: ``(0, 1)`` for probabilities, ``None`` for unbounded outputs.
    solver : {"exact", "qpth"}, default="exact"
        ``"exact"``: the package's own solver, a Newton method on the ``m``-dimensional dual
        (``m`` = number of constraint rows), ``O(n + m^3)`` per iteration, a handful of
        iterations, exact up to rounding; its backward pass is the implicit derivative of the
        KKT conditions, ``O(n m)`` time and memory. Its results pass the guarantee check or the
        projection raises. ``"qpth"``: the reference implementation, the dense interior-point
        solver of ``qpth`` (``O(n^2)`` memory, ``O(n^3)`` time; optional dependency, see the
        README); a result of it that fails the guarantee check falls back to the exact
        solver.
    intersectional : bool, default=False
        With several attributes, constrain every combination of groups (the cartesian product)
        instead of every attribute separately.

    Attributes
    ----------
    last_solve_ : dict or list of dict
        Diagnostics of the latest forward pass: ``solver`` used, ``n_iter``, ``max_violation``,
        the multipliers ``duals`` (dict from row key to value), ``n_rows``, ``n_samples``; for
        a batch of problems (a 2-d ``z``), the list of each one's.

    Notes
    -----
    Complexity of the exact backend: building the rows is a few ``O(n)`` passes over the group
    codes; each evaluation of the dual is one ``O(n)`` pass over the outputs, and a dual
    iteration adds ``O(m)`` for the rows' residuals (``m = k (k - 1)`` for a parity cell of ``k``
    groups, see :mod:`skfair.constraints`; no ``m x n_atoms`` matrix is formed) and a Newton
    system on the groups that move, ``O(k^3)`` at worst; the backward pass costs about one
    iteration. Parity constraints take their Newton steps in the groups' net flows, with one
    centre per cell (:mod:`skfair._exact`); a few iterations suffice at any ``k``. A group absent
    from the batch contributes no rows. Outputs that are fair already and strictly inside the
    bounds (checked like any result) are returned as they are, the input tensor itself: the
    projection is the identity there, and it adds no autograd node. The solver and its backward
    pass are compiled (numba) and run on the host, in float64: the dual has a few dozen
    variables, and its passes over the outputs are memory-bound loops; tensors on another device
    are copied to the host and the results back (``O(n)`` each way, one round trip per call).

    A 2-d ``z`` of shape (B, n) holds ``B`` independent problems (several heads, say): each is
    projected, checked and differentiated on its own, one after the other, with groups shared
    by all or given per problem (:meth:`forward`).

    Under :func:`torch.compile` the layer is a graph break: ``forward`` is excluded from
    compilation (:func:`torch.compiler.disable`), so the rest of the model is compiled, the
    projection runs eagerly between its parts and gradients flow through it as without
    compilation. ``fullgraph=True`` cannot hold: the solver is not torch code.

    Examples
    --------
    >>> import torch
    >>> from skfair import FairnessLayer
    >>> layer = FairnessLayer("demographic_parity", epsilon=0.1)
    >>> z = torch.tensor([0.9, 0.8, 0.3, 0.2], requires_grad=True)
    >>> groups = torch.tensor([0, 0, 1, 1])
    >>> y = layer(z, groups)
    >>> round(float(y[:2].mean().detach() - y[2:].mean().detach()), 6)
    0.1
    >>> y.sum().backward()
    """

    def __init__(self, constraint: str | AffineConstraint = "demographic_parity",
                 epsilon: float = 0.05,
                 bounds: tuple[float | None, float | None] | None = (0.0, 1.0),
                 solver: Literal["exact", "qpth"] = "exact",
                 intersectional: bool = False) -> None:
        super().__init__()
        check_epsilon(epsilon)
        _check_solver(solver)
        self.constraint = get_constraint(constraint)
        self.epsilon = float(epsilon)
        self.bounds = _check_bounds(bounds)
        self.solver = solver
        self.intersectional = bool(intersectional)
        self.last_solve_ = None

    # The solver runs on the host (numba, numpy): under torch.compile the projection is a graph
    # break, run eagerly with its own autograd node between the compiled parts of the model.
    @torch.compiler.disable(reason="the fairness projection is solved on the host, not by "
                            "torch operators: FairnessLayer is a graph break")
    def forward(self, z: torch.Tensor, groups: torch.Tensor | ArrayLike,
                y_true: torch.Tensor | ArrayLike | None = None,
                sample_weight: torch.Tensor | ArrayLike | None = None) -> torch.Tensor:
        """Project ``z``: one problem, or ``B`` independent ones.

        Parameters
        ----------
        z : torch.Tensor of shape (n,) or (B, n)
            Raw outputs (scores, probabilities or regression values), floating point. A 2-d
            ``z`` is a batch of ``B`` independent problems of ``n > 1`` outputs (e.g. several
            heads of a network): each row is projected on its own, with its own constraint and
            the same guarantee.
        groups : torch.LongTensor of shape (n,), (n, n_attributes), (B, n) or (B, n, n_attributes)
            Non-negative integer group codes of every sample, one column per attribute. With a
            2-d ``z``, groups of shape (n,) or (n, n_attributes) are shared by the ``B``
            problems; groups whose leading dimensions are ``z``'s shape (B, n) give each
            problem its own (when ``B == n == n_attributes`` the two readings coincide: pass
            3-d groups).
        y_true : torch.Tensor of shape (n,) or (B, n), optional
            True targets, required by ``equalized_odds``, ``equal_opportunity`` (binary labels)
            and ``mean_residual``; gradients flow to it where it enters the constraint. With a
            2-d ``z``, shape (n,) is shared by the problems, (B, n) gives each its own.
        sample_weight : torch.Tensor of shape (n,) or (B, n), optional
            Weights of the samples in the group means; shared or per problem like ``y_true``.

        Returns
        -------
        y : torch.Tensor of the shape of ``z``
            The fair outputs, same dtype and device as ``z``. For a 1-d ``z`` whose values are
            fair already and strictly inside the bounds, ``z`` itself (then nothing changes;
            like :meth:`torch.Tensor.to`, the result may be the input). After a 2-d ``z``,
            :attr:`last_solve_` is the list of the ``B`` problems' diagnostics.
        """
        if isinstance(z, torch.Tensor) and z.ndim == 2:
            if z.shape[1] == 1:
                # (the usual (n, 1) output of a network: n problems of one output would each
                # be left as they are, never compared with another group)
                raise ValueError(
                    f"z must have shape (n,) or (B, n) with n > 1; got {tuple(z.shape)}, "
                    f"problems of one output each, which no group constraint moves. For one "
                    f"problem of {z.shape[0]} outputs pass z.reshape(-1).")
            problems = zip(_per_problem(groups, z, "groups"),
                           _per_problem(y_true, z, "y_true"),
                           _per_problem(sample_weight, z, "sample_weight"))
            solved = [self._project(row, *values) for row, values in zip(z, problems)]
            info = [info for _, info in solved]
            y = torch.stack([y for y, _ in solved]) if solved else z.clone()
        else:
            y, info = self._project(z, groups, y_true, sample_weight)
        # (straight into the instance dict: nn.Module's __setattr__ first looks among the
        # parameters, buffers and submodules, some microseconds per training step)
        self.__dict__["last_solve_"] = info
        return y

    def _project(self, z, groups, y_true, sample_weight):
        """``(y, info)``: the projection of one problem, ``z`` of shape (n,)."""
        groups = as_group_matrix(groups)
        _check_inputs(z, groups)
        if self.intersectional:
            groups = intersect_groups(groups)
        cs = self.constraint.build(groups.to(z.device), epsilon=self.epsilon,
                                   y_true=to_device(y_true, z),
                                   sample_weight=to_device(sample_weight, z))
        return project(z, cs, self.bounds, self.solver)

    def extra_repr(self) -> str:
        return (f"constraint={self.constraint!r}, epsilon={self.epsilon}, bounds={self.bounds}, "
                f"solver={self.solver!r}, intersectional={self.intersectional}")


#: sample weights whose positive values span more than this ratio are named in a refusal
WIDE_WEIGHTS = 1e6


def project(z: torch.Tensor, cs: ConstraintSet,
            bounds: tuple[float | None, float | None] | Bounds | None,
            solver: Literal["exact", "qpth"] = "exact") -> tuple[torch.Tensor, dict[str, Any]]:
    """Project ``z`` onto the rows ``cs`` and the ``bounds``; the one entry point of all backends.

    Returns ``(y, info)`` with ``y`` in the dtype of ``z`` and ``info`` the diagnostics dict of
    :attr:`FairnessLayer.last_solve_`. Raises :class:`InfeasibleConstraintError` when a row cannot
    be met within the bounds, :class:`RuntimeError` when no backend reaches the guarantee.
    """
    _check_solver(solver)
    bounds = Bounds.of(bounds)
    double = z.dtype == torch.float64
    z64 = z if double else z.to(torch.float64)
    failures: list[str] = []
    order = _BACKEND_ORDER[solver]
    for backend in order:
        out = (_exact_backend if backend == "exact" else _qpth_backend)(z64, cs, bounds, failures)
        if out is not None:
            if failures:
                warnings.warn(f"The {order[0]} solver failed ({failures[-1]}); the {backend} "
                              f"solver's result is used.", RuntimeWarning)
            y, info = out
            if y is z64:  # fair already: the input itself, in its own dtype
                return z, info
            return (y, info) if double else _cast(y, z.dtype, cs, bounds, info)
    conflicting = _exact.conflicting_rows(cs, *bounds)
    if conflicting:
        shown = ", ".join(map(repr, conflicting[:10])) + (", ..." if len(conflicting) > 10 else "")
        raise InfeasibleConstraintError(
            f"The fairness constraint cannot be met within bounds {tuple(bounds)}: its rows "
            f"{shown} contradict each other (each one alone can hold); widen the bounds, "
            f"increase epsilon or drop one of them.", key=conflicting[0])
    raise _refusal(z64, cs, bounds, failures)


def _refusal(z, cs, bounds, failures):
    """The error of a batch that no backend projected: what in it leaves float64 too few
    digits, what the user can do, then every attempt's reason (``failures``)."""
    host = host_vector(z)
    low, high = bounds.box
    reach = _reduction.FAR_OUTSIDE * _reduction.width(low, high)
    n_far = int(np.count_nonzero(_reduction.excess(host, low, high)))
    weight = cs.host_weight
    positive = weight[weight > 0]
    ratio = float(positive.max() / positive.min()) if positive.size else 1.0
    traits = [f"raw outputs up to {float(np.abs(host).max(initial=0.0)):.3g} in magnitude"]
    advice = []
    if n_far:
        traits.append(f"{n_far} of them more than {reach:.3g} beyond the bounds")
        advice.append("rescale or clip the raw outputs (outputs that far beyond the bounds "
                      "usually mean the network has diverged)")
    if ratio > WIDE_WEIGHTS:
        traits.append(f"positive sample weights spanning a ratio of {ratio:.3g}")
        advice.append("bring the sample weights closer together")
    if not _precise.fits(cs):
        advice.append(f"project it in batches of at most {_precise.MAX_SAMPLES} samples and "
                      f"{_precise.MAX_ROWS} rows, solved in extended precision")
    options = ", ".join(advice[:-1]) + ", or " if len(advice) > 1 else ""
    return RuntimeError(
        f"The fairness projection failed: no solve of this batch ({', '.join(traits)}) could "
        f"be certified to be its exact projection, and an uncertified answer is never returned"
        + (f"; {options}{advice[-1]}" if advice else "") + ". Attempts: "
        + "; ".join(failures) + ".")


def _cast(y, dtype, cs, bounds, info):
    """The checked float64 projection ``y`` in a narrower ``dtype``, with its own check.

    The bounds hold exactly in ``dtype`` (a bound it cannot represent is replaced by the
    nearest value inside). Rounding moves every output by at most ``finfo(dtype).eps / 2``
    times its magnitude, so a row ``G_r y <= h_r`` by at most that times ``||G_r||_1 max|y|``:
    the rows hold to ``GUARANTEE_TOL`` times the outputs' scale plus ``finfo(dtype).eps``
    times the scale and the largest ``||G_r||_1`` (2 for a difference of two group means).
    The cast values are checked against that; ``info["max_violation"]`` is theirs.
    """
    out = y.to(dtype)
    lo, hi = bounds
    if lo is not None or hi is not None:
        out = out.clamp(_representable(lo, dtype, y.device, inward=1.0),
                        _representable(hi, dtype, y.device, inward=-1.0))
    found = check(host_vector(out.to(torch.float64)), cs)
    violation, out_of_bounds, _ = violations(found, bounds)
    if not out_of_bounds <= 0:  # NaN too: an output or a bound beyond the dtype's range
        raise ValueError(f"The fair outputs do not fit in {dtype} (largest magnitude "
                         f"{float(y.abs().max()):.6g}, bounds {(lo, hi)}); project in a wider "
                         f"dtype.")
    norm = _largest_row_norm(cs)
    tol = tolerance(found, cs) + torch.finfo(dtype).eps * output_scale(found, cs) * norm
    if cs.n_rows and not violation <= tol:
        raise RuntimeError(f"The fairness projection failed in {dtype}: max violation "
                           f"{violation:.3g} (tolerance {tol:.3g}).")
    return out, {**info, "max_violation": violation}


def _largest_row_norm(cs):
    """The largest ``||G_r||_1`` of the rows of ``cs`` (0 without rows)."""
    if not cs.n_rows:
        return 0.0
    rows = cs.host_rows
    _, _, size = _kernels.stat_ranges(rows, cs.host_mass, 0.0, 0.0)
    size = np.r_[size, 0.0]  # index -1: no statistic
    return float((size[rows.plus] + size[rows.minus]).max())


def _representable(bound, dtype, device, inward):
    """``bound`` as a ``dtype`` tensor, moved one step ``inward`` (+1 up, -1 down) when
    rounding put it outside; None stays None."""
    if bound is None:
        return None
    value = torch.tensor(bound, dtype=dtype, device=device)
    if (float(value) - bound) * inward < 0:
        value = torch.nextafter(value, torch.tensor(inward * math.inf, dtype=dtype,
                                                    device=device))
    return value


def projected_objective(z, cs, bounds, target, weight, loss, scale, penalty):
    """The training objective of a batch through the exact projection, as one autograd node.

    The weighted mean of ``loss(y, target) + penalty * (z - y)**2`` at the projection ``y`` of
    ``z`` (:func:`skfair._kernels.objective`: ``loss`` is ``LOG_LOSS``, ``LOGIT_LOG_LOSS`` or
    ``SQUARED_ERROR``, the latter in units of ``scale``), with its gradient in ``z`` through the
    projection (the targets, weights and rows are data: no gradient flows to them). Returns
    ``(objective, result)``, a 0-dim tensor and the solver's :class:`~skfair._exact.SolveResult`
    (its multipliers, iterations and check), or None when the result fails the guarantee check (the
    caller then goes through :func:`project`, which falls back to the other backend), and for raw
    outputs far beyond the bounds (:func:`skfair._reduction.has_far`), whose projection
    :func:`project` certifies.

    The projection is what :func:`project` computes and checks; what differs is the autograd
    graph: the loss, the penalty, their weighted mean and the projection's implicit derivative
    are one compiled call on the host, not a dozen tensor operators and their backward nodes
    (at training batch sizes of tens to hundreds, each costs about as much as the arithmetic).
    """
    bounds = Bounds.of(bounds)
    if _reduction.has_far(host_vector(z), *bounds.box):
        return None
    result = _exact.solve(z.to(torch.float64), cs, *bounds, objective=_kernels.Loss(
        host_vector(target), host_vector(weight), loss, scale, penalty))
    if exact_violation(result, cs, bounds, []) is None:
        return None
    value, grad = result.objective
    return _Objective.apply(z, (value, device_tensor(grad, z.device))), result


#: the loss of :func:`training_objective`: ``losses(fair, target)`` the per-sample torch losses,
#: ``compiled`` their kind in :func:`skfair._kernels.objective` (``LOG_LOSS``,
#: ``LOGIT_LOG_LOSS`` or ``SQUARED_ERROR``), ``scale`` the unit of the squared error and
#: ``penalty`` the weight of the squared distortion ``(out - fair)**2``
TrainingLoss = namedtuple("TrainingLoss", "losses compiled scale penalty")


def training_objective(out, cs, bounds, solver, target, weight, loss):
    """``(objective, lam, fair)`` of a training batch through the fairness layer: the mean,
    weighted by ``weight``, of ``loss.losses`` at the fair outputs plus ``loss.penalty`` times
    the squared distortion, the projection's multipliers (a host array in the order of
    ``cs.keys``; None from qpth) and the fair outputs (detached: for the training history).

    The exact solver takes the fused path: the whole objective is one compiled call and one
    autograd node (:func:`projected_objective`, the same projection and losses). qpth, or an
    exact result that fails the guarantee, goes through :func:`project` (and its fallback) and
    the torch losses.
    """
    if solver != "qpth":
        fused = projected_objective(out, cs, bounds, target, weight, loss.compiled, loss.scale,
                                    loss.penalty)
        if fused is not None:
            return fused[0], fused[1].host_lam, fused[1].y
    fair, info = project(out, cs, bounds, solver)
    losses = loss.losses(fair, target)
    if fair is not out and loss.penalty:  # (zero when the layer kept the outputs)
        distortion = out - fair
        losses = torch.addcmul(losses, distortion, distortion, value=loss.penalty)
    duals = info["duals"]
    lam = None if duals is None else np.array(list(duals.values()))
    return (weight * losses).sum() / weight.sum(), lam, fair.detach()


def _exact_backend(z, cs, bounds, failures):
    """``(y, info)`` from the exact solver, or None (with the reason in ``failures``)."""
    # The solver checks that the problem has a solution in the same compiled call.
    result = _exact.solve(z, cs, *bounds)
    if result.n_iter == 0:
        # The solver kept the outputs: when they are fair already and none lies at a bound, the
        # projection is z itself, its Jacobian the identity (what the backward pass would
        # compute, without its cost). z itself is checked: the guarantee rests on no solver.
        found = check(host_vector(z), cs)
        violation, _, inside = violations(found, bounds)
        if inside and violation <= tolerance(found, cs):
            return z, _info("exact", 0, violation, cs, result.host_lam)
    reasons = []
    first = result
    if _reduction.has_far(host_vector(z), *bounds.box):
        # Raw outputs far out: the first solve's outputs carry the rounding of their magnitude
        # and are kept only when certified; the reduction, exact where it applies, goes first.
        far = _reduction.excess(host_vector(z), *bounds.box)
        result = (_reduced_result(z, far, first, cs, bounds, reasons)
                  or _float_result(z, first, cs, bounds, reasons, certify_first=True))
    else:
        result = (_float_result(z, first, cs, bounds, reasons)
                  or _warm_started(z, cs, bounds, reasons))
    if result is None or not meets_guarantee(checked(result, cs), cs, bounds):
        # the last resort, before a refusal
        result = _precise_result(z, first, cs, bounds, reasons) or result
    violation = None if result is None else exact_violation(result, cs, bounds, reasons)
    if violation is None:
        failures.extend(reasons)
        return None
    y = _ExactProjection.apply(z, cs.h, (result, cs, *bounds))
    return y, _info("exact", result.n_iter, violation, cs, result.host_lam)


def _float_result(z, first, cs, bounds, failures, certify_first=False):
    """The projection from the ``first`` solve of ``z``: that solve itself when its outputs
    meet the guarantee (and are certified, with ``certify_first``), else :func:`_polished`,
    :func:`_active_set_result` or :func:`_recentred`, the first that is certified; None when
    none is (the reasons in ``failures``)."""
    return (_polished(z, first, cs, bounds, failures, certify_first)
            or _active_set_result(z, first, cs, bounds, failures)
            or _recentred(z, cs, bounds, failures))


def _warm_started(z, cs, bounds, failures):
    """The projection solved from the multipliers of the linear program of the raw outputs'
    excess over the bounds (:func:`skfair._reduction.program_multipliers`), then
    :func:`_polished`; None when no output lies beyond a bound, the program has no optimum or
    the result is not certified (the reason in ``failures``).

    Raw outputs well beyond the bounds clip nearly every output at the dual's starting point,
    where it is flat: its Newton steps then crawl towards multipliers of the raw outputs' size.
    The projection's multipliers tend to the program's as the raw outputs recede (the
    quadratic term's part stays of the outputs' own scale), so from those the iteration
    starts where its steps are exact. Not for far raw outputs (:func:`skfair._reduction.
    has_far`): the certificate's allowance of 64 units in their last place is wider than the
    outputs' scale, and a solve of their magnitude can break their exact ties within it; the
    reduction's nearer outputs keep them."""
    low, high = bounds.box
    excess = _reduction.beyond(host_vector(z), low, high)
    if not excess.any():
        failures.append("exact: no raw output lies beyond the bounds to warm-start the solve")
        return None
    nu = _reduction.program_multipliers(excess, cs, low, high)
    if nu is None:
        failures.append("exact: the linear program of the raw outputs beyond the bounds found "
                        "no optimum")
        return None
    return _polished(z, _exact.solve(z, cs, *bounds, lam0=nu), cs, bounds, failures)


def _reduced_result(z, far, first, cs, bounds, failures):
    """The projection of ``z`` as that of raw outputs whose far ones (their excess over the
    bound ``far``, :func:`skfair._reduction.excess`) are brought nearer their bound
    (:mod:`skfair._reduction`), certified on ``z`` itself with the multipliers of the nearer
    outputs, or when those alone do not certify it, plus those of the far ones' linear program;
    else None, with the reason in ``failures``. One solve per
    :data:`skfair._reduction.TARGETS` entry until one is certified.

    The program is solved only when needed (once): it costs more than the projection, and far
    outputs that merely end at their bound need none of its multipliers."""
    host = host_vector(z)
    low, high = bounds.box
    programs = []  # the band's multipliers, then (if need be) the pairs'
    reasons = []
    for target in _reduction.TARGETS:
        nearer, t = _reduction.reduced(host, far, low, high, target)
        if t >= 1.0:
            break  # the outputs are no farther than that
        nearer = device_tensor(nearer, z.device)
        reasons = []
        result = (_float_result(nearer, _exact.solve(nearer, cs, *bounds), cs, bounds, reasons)
                  or _warm_started(nearer, cs, bounds, reasons))
        if result is None:
            continue  # (a farther target may still settle: see _warm_started)
        found = checked(result, cs)
        lam = _reduced_multipliers(host, far, result, t, found, cs, bounds, programs, reasons)
        # (the certificate is of the multipliers alone: outputs that miss the rows give way to
        # the other solves of z)
        if lam is not None and meets_guarantee(found, cs, bounds):
            return _exact.SolveResult(result.y, lam, first.n_iter + result.n_iter, True,
                                      first.scale, result.host_y, found)
        if lam is not None:
            reasons.append("exact: the reduced solve's outputs miss the guarantee")
    failures.extend(reasons[-1:])
    return None


def _reduced_multipliers(z, far, result, t, found, cs, bounds, programs, failures):
    """The multipliers that certify a nearer solve's ``result`` (its outputs' check ``found``)
    on ``z``: its own when they do, else its own plus ``(1 - t)`` times those of the far
    outputs' program, posed as bands, then (up to :data:`skfair._reduction.PAIR_PROGRAM_ROWS`
    rows) with every pair row; None when none certifies (the reason in ``failures``).
    ``programs`` keeps the programs' multipliers from one target to the next (each is solved
    once; None when HiGHS found no optimum)."""
    low, high = bounds.box
    lam = result.host_lam
    if backward_error(z, result.host_y, lam, cs, bounds, tolerance(found, cs),
                      POLISH_TOL * output_scale(found, cs)) <= 0:
        return lam
    reasons = ["exact: the linear program of the far raw outputs found no optimum"]
    for as_pairs in (False, True):
        if as_pairs and cs.n_rows > _reduction.PAIR_PROGRAM_ROWS:
            break
        if len(programs) == as_pairs:
            programs.append(_reduction.program_multipliers(far, cs, low, high, as_pairs))
        if programs[as_pairs] is None:
            continue
        reasons = []
        combined = np.maximum(lam + (1 - t) * programs[as_pairs], 0.0)
        certificate = certified(z, result.host_y, combined, found, cs, bounds, "reduced solve",
                                reasons)
        if certificate is None:
            certificate = _refined(z, result.host_y, combined, found, cs, bounds, reasons)
        if certificate is not None:
            return certificate
    failures.extend(reasons)
    return None


def _refined(z, y, lam, found, cs, bounds, failures):
    """``lam`` corrected in decimal arithmetic where its float64 rounding alone keeps it from
    certifying the outputs ``y`` (their check ``found``) on ``z``: when the float64
    certificate falls short by at most :data:`skfair._precise.ROUNDING_SHORTFALL` units in the
    last place of the largest raw output (:func:`skfair._precise.refined_multipliers`), as
    float64 multipliers once the decimal certificate holds
    (:func:`skfair._precise.backward_error`); else None, the reason in ``failures``."""
    active_tol, tol = tolerance(found, cs), POLISH_TOL * output_scale(found, cs)
    short = backward_error(z, y, lam, cs, bounds, active_tol, tol)
    if not short <= _precise.ROUNDING_SHORTFALL * np.spacing(np.abs(z).max()):
        return None  # (short by more than rounding: the reason is the float certificate's)
    refined = _precise.refined_multipliers(z, y, lam, cs, *bounds.box, active_tol, tol)
    if refined is None:
        failures.append("exact: the decimal correction of the reduced solve's multipliers "
                        "found none")
        return None
    excess = _precise.backward_error(z, y, refined, cs, bounds, active_tol, tol)
    if not excess <= 0:
        failures.append(f"exact: the reduced solve is not certified in decimal arithmetic "
                        f"either (backward error beyond its tolerance by {excess:.3g})")
        return None
    return refined.astype(np.float64)


def _polished(z, result, cs, bounds, failures, certify_first=False):
    """``result``, or when its outputs miss the guarantee (or, with ``certify_first``, are not
    certified like the second solve's below), the projection of those outputs.

    Raw outputs far from the fair set (far outside the bounds, or without bounds far from
    each other) cost the first solve its accuracy: its outputs ``y1`` carry the rounding error
    of ``z``'s magnitude. They lie at the outputs' scale, so a second solve from them reaches
    the guarantee. Outputs that the first solve clipped from far beyond a bound (beyond it by
    more than ``POLISH_TOL`` times the scale) are held there in the second one (their raw
    value is put ``FAR`` times the scale beyond the bound): in the problem of ``z`` they would
    need a shift of their own magnitude to move, and the second solve corrects by rounding-size
    shifts of the free outputs. Its outputs ``y2`` are then certified from the KKT conditions,
    not trusted: with the multipliers of both solves, ``Lam``, and the rows active at ``y2``
    (the others' multipliers dropped), ``y2`` is the exact projection of the raw outputs
    ``z''`` with ``z''_i = y2_i + (G^T Lam)_i`` where ``y2_i`` is inside the bounds (any value
    beyond the bound where it is at one). The projection is nonexpansive, so ``y2`` is within
    ``||z'' - z||`` of the projection of ``z``; :func:`skfair._guarantee.backward_error`
    computes it per sample, and a second result whose error exceeds ``POLISH_TOL`` times the
    outputs' scale plus 64 units in the last place of ``z_i`` is refused (None, the reason in
    ``failures``): never an answer that is fair but not the projection of ``z``.
    """
    first = checked(result, cs)
    if meets_guarantee(first, cs, bounds):
        if not certify_first:
            return result
        lam = certified(host_vector(z), result.host_y, result.host_lam, first, cs, bounds,
                        "first solve", failures)
        if lam is not None:
            return _exact.SolveResult(result.y, lam, result.n_iter, result.converged,
                                      result.scale, result.host_y, first)
    z = host_vector(z)
    scale = output_scale(first, cs)
    free = unclipped(z, result.host_lam, cs)
    start = result.host_y.copy()
    low, high = bounds.box
    # (held at most at the largest float: bounds near float64's range)
    held = min(high + FAR * scale, _reduction.LARGEST), max(low - FAR * scale, -_reduction.LARGEST)
    start[(start >= high) & (free > high + POLISH_TOL * scale)] = held[0]
    start[(start <= low) & (free < low - POLISH_TOL * scale)] = held[1]
    second = _exact.solve(torch.from_numpy(start).to(result.y.device), cs, *bounds)
    found = checked(second, cs)
    lam = result.host_lam + second.host_lam  # the multipliers of z: z - y = G^T lam where free
    lam = certified(z, second.host_y, lam, found, cs, bounds, "second solve", failures)
    if lam is None:
        return None
    return _exact.SolveResult(second.y, lam, result.n_iter + second.n_iter, second.converged,
                              second.scale, second.host_y, found)


def _active_set_result(z, first, cs, bounds, failures):
    """The projection by :func:`skfair._active_set.solve` from the multipliers of the ``first``
    solve, certified like :func:`_polished`'s; else None, with the reason in ``failures``."""
    host = host_vector(z)
    found = _active_set.solve(host, cs, *bounds.box, first.host_lam, first.scale)
    if found is None:
        failures.append("exact: the active-set method did not settle")
        return None
    y, lam, n_patterns = found
    checked_y = check(y, cs)
    lam = certified(host, y, lam, checked_y, cs, bounds, "active-set solve", failures)
    if lam is None:
        return None
    return _exact.SolveResult(device_tensor(y, z.device), lam, first.n_iter + n_patterns, True,
                              first.scale, y, checked_y)


def _recentred(z, cs, bounds, failures):
    """:func:`skfair._exact.recentred_solve` of ``z`` when its outputs are certified like
    :func:`_polished`'s (a recentred row that was not active has a negative multiplier: the
    certificate starts from the non-negative part); else None, with the reason in
    ``failures``. (The caller checks the guarantee.)"""
    result = _exact.recentred_solve(z, cs, *bounds)
    found = checked(result, cs)
    lam = certified(host_vector(z), result.host_y, np.maximum(result.host_lam, 0.0), found, cs,
                    bounds, "recentred solve", failures)
    if lam is None:
        return None
    return _exact.SolveResult(result.y, lam, result.n_iter, result.converged, result.scale,
                              result.host_y, found)


def _precise_result(z, first, cs, bounds, failures):
    """The projection by :func:`skfair._precise.solve` (decimal arithmetic: the last resort of
    small batches, whose certificate float64 cannot compute), certified in the same precision
    (:func:`skfair._precise.backward_error`, as strict as :func:`certified`); else None, with
    the reason in ``failures``. (The caller checks the guarantee on the float64 outputs.)"""
    if not _precise.fits(cs):
        failures.append(f"exact: the batch is too large for the extended-precision solve "
                        f"({cs.n_samples} samples, {cs.n_rows} rows; at most "
                        f"{_precise.MAX_SAMPLES} and {_precise.MAX_ROWS})")
        return None
    host = host_vector(z)
    found = _precise.solve(host, cs, *bounds.box)
    if found is None:
        failures.append("exact: the extended-precision solve did not settle")
        return None
    y, lam, n_steps = found
    checked_y = check(y, cs)
    excess = _precise.backward_error(host, y, lam, cs, bounds, tolerance(checked_y, cs),
                                     POLISH_TOL * output_scale(checked_y, cs))
    if not excess <= 0:
        failures.append(f"exact: the extended-precision solve is not certified to be the "
                        f"projection of z (backward error beyond its tolerance by {excess:.3g})")
        return None
    return _exact.SolveResult(device_tensor(y, z.device), lam.astype(np.float64),
                              first.n_iter + n_steps, True, first.scale, y, checked_y)


def _qpth_backend(z, cs, bounds, failures):
    """``(y, info)`` from qpth (:mod:`skfair._qpth`), or None (with the reason in
    ``failures``)."""
    out = _qpth.qpth_backend(z, cs, bounds, failures)
    if out is None:
        return None
    y, violation = out
    return y, _info("qpth", None, violation, cs, None)


def _info(backend, n_iter, violation, cs, lam):
    """The diagnostics of :attr:`FairnessLayer.last_solve_` (``lam``: an array, or None)."""
    return {"solver": backend, "n_iter": n_iter, "max_violation": violation,
            "n_rows": cs.n_rows, "n_samples": cs.n_samples,
            "duals": None if lam is None else _Duals(cs.keys, lam)}


class _Duals(Mapping):
    """The multiplier of every row by its key, made into a dict when first read: a parity
    constraint on ``k`` groups has ``k (k - 1)`` rows, and most projections are never asked for
    their multipliers."""

    def __init__(self, keys, lam):
        self._keys, self._lam, self._dict = keys, lam, None

    def _values(self):
        if self._dict is None:
            self._dict = dict(zip(self._keys, self._lam.tolist()))
        return self._dict

    def __getitem__(self, key):
        return self._values()[key]

    def __iter__(self):
        return iter(self._values())

    def __len__(self):
        return len(self._lam)

    def __repr__(self):
        return repr(self._values())


class _ExactProjection(torch.autograd.Function):
    """Attaches the implicit KKT derivative to a solution of :func:`_exact.solve`; ``problem`` is
    ``(result, cs, lo, hi)`` (one argument: autograd inspects each one)."""

    @staticmethod
    def forward(ctx, z, h, problem):
        result, cs, lo, hi = problem
        ctx.save_for_backward(result.y)  # (the version check: y must not change in place)
        # The host arrays, not the result: the result holds y, whose grad_fn holds ctx, and
        # that cycle would keep every batch's arrays alive until a garbage collection.
        ctx.problem = (result.host_y, result.host_lam, cs, lo, hi)
        return result.y

    @staticmethod
    def backward(ctx, grad_y):
        ctx.saved_tensors  # noqa: B018 - raises if y was modified in place
        # (no gradient for an h that needs none: autograd would check its shape for nothing)
        grad_z, grad_h = _exact.vjp(grad_y, *ctx.problem, with_h=ctx.needs_input_grad[1])
        return grad_z, grad_h, None


class _Objective(torch.autograd.Function):
    """A scalar computed on the host with its gradient (:func:`projected_objective`);
    ``computed`` is ``(value, grad_z)``, ``grad_z`` a tensor like ``z``."""

    @staticmethod
    def forward(ctx, z, computed):
        value, ctx.grad_z = computed
        return torch.tensor(value, dtype=z.dtype, device=z.device)

    @staticmethod
    def backward(ctx, grad):
        return ctx.grad_z * grad, None


def _check_solver(solver):
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}.")


def _check_bounds(bounds):
    if bounds is None:
        return None
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be None or a pair (lo, hi); got {bounds!r}.") from None
    for b in (lo, hi):
        if b is not None and (not isinstance(b, numbers.Real) or isinstance(b, bool)
                              or math.isnan(b)):
            raise ValueError(f"bounds must hold numbers or None; got {bounds!r}.")
    if lo == math.inf or hi == -math.inf:
        raise ValueError(f"bounds must have a lower bound below +inf and an upper bound above "
                         f"-inf (None for no bound); got {bounds!r}.")
    lo = None if lo is None or lo == -math.inf else float(lo)
    hi = None if hi is None or hi == math.inf else float(hi)
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"bounds must satisfy lo < hi; got {bounds!r}.")
    return None if lo is None and hi is None else (lo, hi)


def _check_inputs(z, groups):
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        raise ValueError("z must be a floating point torch.Tensor.")
    if z.ndim != 1:
        raise ValueError(f"z must have shape (n,) or (B, n); got {tuple(z.shape)}.")
    if groups.shape[0] != z.shape[0]:
        raise ValueError(
            f"groups must have one row per element of z: got {groups.shape[0]} rows for "
            f"{z.shape[0]} outputs."
        )


def _per_problem(values, z, name):
    """``values`` for each of the ``B`` problems of a 2-d ``z`` (B, n): their rows when their
    leading dimensions are ``z``'s shape, else (shape (n,), or (n, n_attributes) for the
    groups) the same values for every problem."""
    if values is None:
        return [None] * len(z)
    values = torch.as_tensor(values)
    most = 2 if name == "groups" else 1  # the dimensions of one problem's values
    if name == "groups" and values.ndim == 2 and len(z) == z.shape[1] == values.shape[1] > 1:
        # (B, n) per problem or (n, n_attributes) shared: the shapes coincide
        raise ValueError(
            f"groups of shape {tuple(values.shape)} for z of shape {tuple(z.shape)} could be "
            f"per problem (B, n) or shared (n, n_attributes); pass them as (B, n, "
            f"n_attributes): groups[..., None] per problem, or groups.expand({len(z)}, -1, -1) "
            f"shared.")
    if values.ndim <= most + 1 and tuple(values.shape[:2]) == tuple(z.shape):
        return list(values.unbind(0))
    if values.ndim <= most and values.shape[:1] == z.shape[1:]:
        return [values] * len(z)
    shapes = ("(n,), (n, n_attributes), (B, n) or (B, n, n_attributes)" if name == "groups"
              else "(n,) or (B, n)")
    raise ValueError(f"{name} must have shape {shapes} for z of shape (B, n) = "
                     f"{tuple(z.shape)}; got {tuple(values.shape)}.")
