r"""Online primal-dual fairness for streams of small batches.

A batch of ``n_t >= b_tau`` rows is projected exactly (hard guarantee on that batch). A smaller
batch takes one primal-dual step with one multiplier ``lam_k >= 0`` per constraint row identity
``k`` (attribute, group pair, label cell):

* primal, in closed form over the bounds:
  ``y_t = clip(z_t - n_t G_t^T lam / 2, lo, hi)``, the minimiser of
  ``||y - z_t||^2 + n_t lam^T (G_t y - h_t)``;
* dual: ``lam_k <- max(0, lam_k + eta_t n_t (G_t y_t - h_t)_k)`` with ``eta_t = eta0 / sqrt(t)``.

Rows of groups absent from a batch are dropped, except that for the built-in group-mean
constraints a present group ``u`` is compared with the **running mean** of an absent group ``v``
over the stream so far (all outputs of ``v`` streamed before this batch): the rows
``mean_t(y | u) - R_v <= eps`` and ``R_v - mean_t(y | u) <= eps``, under the key of the pair
``(u, v)``. So a stream of single rows moves toward fairness too.

Guarantee (finite T). Write ``v_{t,k} = (G_t y_t - h_t)_k`` (0 when row ``k`` is absent) and
``lam_max`` for the largest multiplier reached. Because ``lam_{t+1,k} >= lam_{t,k} + eta_t n_t
v_{t,k}`` and ``1/eta_t`` increases, summation by parts gives
``sum_t n_t v_{t,k} <= lam_max sqrt(T) / eta0``, hence for every row::

    (1 / N) sum_t n_t (G_t y_t)_k  <=  epsilon + lam_max * sqrt(T) / (eta0 * N)

with ``N`` the number of streamed rows. Exactly projected batches satisfy their rows outright and
count with ``v <= 0``. The left side, maximised over rows, is ``weighted_avg_fairness_gap``; the
right side's excess over epsilon is ``bound``. For rows with a reference mean the same bound holds
with ``R_v`` in place of the batch mean of ``v``; the pooled gap then differs from the guaranteed
quantity by how far the references drifted from ``v``'s final pooled mean
(``reference_drift``), which vanishes when ``v``'s outputs are stationary. In particular, for a
stream of single rows (each row is compared with the running means of the other groups) the
pooled gap satisfies, for every pair::

    pooled_mean_u - pooled_mean_v  <=  epsilon + lam_max * sqrt(T) / (eta0 * N_u) + reference_drift

For batches of several groups whose composition varies across the stream, the pooled gap is *not*
what the algorithm controls (it weights each batch's groups by their counts); it equals the
guaranteed quantity when group ratios are constant. ``mean_batch_violation`` (each batch's own gap
beyond epsilon, weighted by its size) measures how fair the individual batches are.
"""

import math

import numpy as np
import torch

from ._exact import clip
from ._kernels import host_vector
from .constraints import _GroupMeanConstraint, _atoms, constraint_gap
from .layer import project

DEFAULT_ETA0 = 0.1


class PrimalDualStream:
    """State of one stream: multipliers, counters and pooled statistics (all plain Python).

    Parameters
    ----------
    constraint : AffineConstraint
        The fairness constraint (label-free: streams have no true labels).
    epsilon : float
    bounds : tuple or None
    eta0 : float
        Dual step size at t = 1.
    b_tau : int
        Batches with at least this many rows are projected exactly.
    solver : str
        Solver of the exact projections.
    dual_init : dict, optional
        Starting multipliers by row key (e.g. recorded from the training projections).
    """

    def __init__(self, constraint, epsilon, bounds, eta0, b_tau, solver="auto", dual_init=None):
        if constraint.requires_y_true:
            raise ValueError(
                f"{constraint!r} needs true labels, which a prediction stream does not have."
            )
        self.constraint = constraint
        self.epsilon = float(epsilon)
        self.bounds = bounds
        self.eta0 = float(eta0)
        self.b_tau = int(b_tau)
        self.solver = solver
        self.duals = {k: float(v) for k, v in (dual_init or {}).items()}
        self.lambda_max = max(self.duals.values(), default=0.0)
        self.n_steps = 0  # primal-dual steps taken: the t of eta_t
        self.n_batches = 0
        self.n_samples = 0
        self.row_sums = {}  # key -> sum_t n_t (G_t y_t)_k, h excluded
        self.batch_gap_sum = 0.0  # sum_t n_t * (the batch's own gap)
        self.batch_violation_sum = 0.0  # sum_t n_t * max(0, gap - epsilon)
        self.atom_sums = {}  # combination of group codes -> [sum of outputs, count]
        self.reference_sums = {}  # (attribute, group) -> sum over its uses of the reference mean
        self.reference_uses = {}

    def step(self, z, groups):
        """Fair outputs of one batch: exact projection or one primal-dual step.

        ``z``: float64 tensor (n,); ``groups``: LongTensor (n, n_attributes) of group codes.
        """
        n = z.shape[0]
        if n == 0:
            return z.clone()
        lo, hi = self.bounds if self.bounds is not None else (None, None)
        if n >= self.b_tau:
            cs = self.constraint.build(groups, epsilon=self.epsilon)
            y, _ = project(z, cs, self.bounds, self.solver)
        else:
            references = self._reference_means()
            cs = self.constraint.build(groups, epsilon=self.epsilon,
                                       reference_means=references)
            lam = torch.tensor([self.duals.get(k, 0.0) for k in cs.keys], dtype=torch.float64,
                               device=z.device)
            y = clip(z - n * cs.rmatvec(lam) / 2, lo, hi)
            self.n_steps += 1
            eta = self.eta0 / math.sqrt(self.n_steps)
            lam = (lam + eta * n * (cs.matvec(y) - cs.h)).clamp(min=0)
            for key, value in zip(cs.keys, lam.tolist()):
                self.duals[key] = value
            self.lambda_max = max(self.lambda_max, max(lam.tolist(), default=0.0))
            self._record_references(cs, references)
        self._record(y, groups, cs)
        return y

    def _group_means(self):
        """Pooled mean of every (attribute, group) over all outputs streamed so far."""
        sums = {}
        for codes, (total, count) in self.atom_sums.items():
            for a, g in enumerate(codes):
                acc = sums.setdefault((a, g), [0.0, 0])
                acc[0] += total
                acc[1] += count
        return {key: total / count for key, (total, count) in sums.items()}

    def _reference_means(self):
        if not isinstance(self.constraint, _GroupMeanConstraint):
            return None
        return {(a, g, None): mean for (a, g), mean in self._group_means().items()}

    def _record_references(self, cs, references):
        if not references:
            return
        present = {(k[0], k[1]) for k in cs.keys}
        for key in cs.keys:
            a, v = key[0], key[2]
            if (a, v) not in present and (a, v, None) in references:
                self.reference_sums[(a, v)] = (self.reference_sums.get((a, v), 0.0)
                                               + references[(a, v, None)])
                self.reference_uses[(a, v)] = self.reference_uses.get((a, v), 0) + 1

    def _record(self, y, groups, cs):
        n = y.shape[0]
        self.n_batches += 1
        self.n_samples += n
        values = (cs.matvec(y) - cs.h + self.epsilon).tolist() if cs.n_rows else []
        for key, value in zip(cs.keys, values):
            self.row_sums[key] = self.row_sums.get(key, 0.0) + n * value
        gap = max(values, default=0.0)
        self.batch_gap_sum += n * gap
        self.batch_violation_sum += n * max(0.0, gap - self.epsilon)
        atom, table, counts = _atoms(groups.cpu().numpy())
        sums = np.bincount(atom, weights=host_vector(y.to(torch.float64)), minlength=len(table))
        for codes, total, count in zip(table, sums.tolist(), counts.tolist()):
            if count:
                acc = self.atom_sums.setdefault(codes, [0.0, 0])
                acc[0] += total
                acc[1] += int(count)

    def _pooled_gaps(self):
        """Per attribute, the constraint's gap on all streamed outputs pooled.

        Each combination of groups stands for its streamed rows by its mean with their count as
        weight, which leaves every weighted group mean, hence the gap, unchanged.
        """
        if not self.atom_sums:
            return {}
        table = torch.tensor(list(self.atom_sums), dtype=torch.long)
        totals, counts = zip(*self.atom_sums.values())
        counts = torch.tensor(counts, dtype=torch.float64)
        means = torch.tensor(totals, dtype=torch.float64) / counts
        return {a: constraint_gap(self.constraint, means, table[:, [a]], sample_weight=counts)
                for a in range(table.shape[1])}

    def stats(self):
        """Summary of the stream; see the module docstring for the guarantee."""
        N = max(self.n_samples, 1)
        row_avg = {k: s / N for k, s in self.row_sums.items()}
        per_attribute = self._pooled_gaps()
        means = self._group_means()
        drift = 0.0
        for (a, v), total in self.reference_sums.items():
            drift = max(drift, abs(total / self.reference_uses[(a, v)] - means[(a, v)]))
        bound = self.lambda_max * math.sqrt(self.n_steps) / (self.eta0 * N) if self.n_steps else 0.0
        return {
            "weighted_avg_fairness_gap": max(row_avg.values(), default=0.0),
            "bound": bound,
            "epsilon": self.epsilon,
            "mean_batch_gap": self.batch_gap_sum / N,
            "mean_batch_violation": self.batch_violation_sum / N,
            "pooled_fairness_gap": max(per_attribute.values(), default=0.0),
            "per_attribute_gaps": per_attribute,
            "reference_drift": drift,
            "n_batches": self.n_batches,
            "n_steps": self.n_steps,
            "n_samples": self.n_samples,
            "lambda_max": self.lambda_max,
        }
