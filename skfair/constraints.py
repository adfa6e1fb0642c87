"""Affine group-fairness constraints.

A constraint turns one batch's protected-group codes (and, where it needs them, the batch's true
targets) into the rows of ``G @ y <= h``: the set of fair outputs ``y`` for that batch. This
module is the only place where the fairness math lives; the projection layer, the streaming
algorithm, the estimators and the metrics all call it.

Built-in constraints compare **group means** of the outputs. For an attribute with groups
``u, v, ...`` present in the batch:

* ``"demographic_parity"``: ``mean(y | A=u) - mean(y | A=v) <= epsilon`` for every ordered pair
  ``(u, v)``, i.e. ``max_u mean_u - min_v mean_v <= epsilon``;
* ``"equalized_odds"``: the same within each true-label cell (``Y=0`` and ``Y=1`` separately);
* ``"equal_opportunity"``: the same within ``Y=1`` only;
* ``"mean_residual"``: ``|mean(y - y_true | A=g)| <= epsilon`` for every group ``g``.

With several protected attributes the rows of every attribute are stacked (marginal fairness); to
constrain the cartesian product of the attributes instead, encode it first with
:func:`intersect_groups` (the estimators and :class:`~skfair.FairnessLayer` do this when
``intersectional=True``). A group (or group x label cell) that is empty in a batch contributes no
rows: there is no mean to compare. A batch without any row leaves the outputs free (only the
bounds apply).

Row counts: a parity constraint has ``k (k - 1)`` rows for every compared cell of ``k`` groups
present (an attribute, a label cell, or every combination of attributes when intersectional),
``mean_residual`` ``2 k``. The rows are stored as the ``k`` group means and two indices per row
(:class:`ConstraintSet`): no ``k (k - 1) x n_atoms`` matrix is formed unless asked for, and the
exact solver's linear algebra works on the groups; what grows with ``k^2`` is one number per
row (its bound, residual and multiplier).

Group means are weighted by ``sample_weight`` when it is given.
"""

import functools
import itertools
import math
import numbers
import operator
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from . import _kernels
from ._host import CPU, device_tensor, host_array, host_vector

__all__ = [
    "AffineConstraint",
    "ConstraintSet",
    "DemographicParity",
    "DisparateImpact",
    "EqualizedOdds",
    "EqualOpportunity",
    "ErrorRateParity",
    "FalsePositiveRateParity",
    "MeanResidual",
    "constraint_gap",
    "get_constraint",
    "intersect_groups",
]


class ConstraintSet:
    """The rows ``G @ y <= h`` of one batch, stored in factored form.

    Column ``i`` of ``G`` is ``weight[i] * coef[:, atom[i]]``: samples that share every group code
    (an *atom*) share a column up to their weight. Group-mean constraints have a handful of atoms,
    so every product with ``G`` costs ``O(n + m * n_atoms)`` and ``G`` itself (``m x n``) is never
    formed. A dense ``G`` is the special case ``atom = arange(n)``.

    The built-in constraints store even ``coef`` in factored form: row ``r`` is the difference of
    two *statistics* (group means), ``stat[plus[r]] - stat[minus[r]]`` (:class:`skfair._kernels.
    Rows`). The ``k (k - 1)`` rows of a parity constraint on ``k`` groups are then ``k``
    statistics and two indices per row, and the exact solver's work on them grows like ``k``
    (its iterations move one forest of rows per cell, see :mod:`skfair._exact`), not like the
    ``k (k - 1) x n_atoms`` matrix ``coef``, which is made only when asked for (:attr:`coef`,
    :meth:`dense`, :meth:`matvec`, :meth:`rmatvec`: checks, qpth and the streaming step, whose
    batches are small).

    Products with vectors of the n samples are tensor operations on the device of ``atom``
    (:meth:`matvec`, :meth:`rmatvec`) or compiled loops on the host
    (:meth:`violation_and_range`); the exact solver works on the host copies
    :attr:`host_rows`, :attr:`host_h`, :attr:`host_atom`, :attr:`host_weight`,
    :attr:`host_mass` and :attr:`square_mass`.

    Parameters
    ----------
    coef : torch.Tensor of shape (m, n_atoms)
        Coefficients of each row on each atom.
    atom : torch.LongTensor of shape (n,)
        Atom index of every sample.
    h : torch.Tensor of shape (m,)
        Right-hand side; may carry gradients (for example from ``y_true``).
    keys : list of hashable, length m
        Stable identity of every row, e.g. ``(attribute, u, v, label)``; used to match rows across
        batches (streaming dual variables) and in error messages.
    weight : torch.Tensor of shape (n,) or None
        Per-sample column scale (the sample weights); ``None`` means all ones.
    """

    def __init__(self, coef, atom, h, keys, weight=None):
        if coef.ndim != 2 or atom.ndim != 1 or h.ndim != 1:
            raise ValueError(
                f"coef, atom and h must have 2, 1 and 1 dimensions; got {coef.ndim}, "
                f"{atom.ndim} and {h.ndim}."
            )
        keys = list(keys)
        if coef.shape[0] != h.shape[0] or len(keys) != h.shape[0]:
            raise ValueError(
                f"coef, h and keys must describe the same rows; got {coef.shape[0]}, "
                f"{h.shape[0]} and {len(keys)}."
            )
        # The compiled passes index by atom without bounds checks: out-of-range atoms or a
        # weight of the wrong length must be caught here.
        if atom.is_floating_point() or (atom.numel() and not (
                0 <= int(atom.min()) and int(atom.max()) < coef.shape[1])):
            raise ValueError(f"atom must hold integer column indices of coef, in "
                             f"[0, {coef.shape[1]}).")
        if weight is not None and weight.shape != atom.shape:
            raise ValueError(f"weight must have shape {tuple(atom.shape)}; got "
                             f"{tuple(weight.shape)}.")
        self._assign(atom, h, keys, weight, coef.shape[1])
        self._coef = coef
        host_coef = np.ascontiguousarray(host_array(coef))
        self._host.update(coef=host_coef, rows=_explicit_rows(host_coef))

    def _assign(self, atom, h, keys, weight, n_atoms):
        self.atom = atom
        self.h = h
        self._keys = keys
        self.weight = weight
        self._n_atoms = n_atoms
        self._coef = None
        self._host = {}  # numpy copies on the host, made on first use (or by the builders)

    @classmethod
    def _from_host(cls, rows, atom, h, h_tensor, keys, device, weight, mass):
        """A set built from numpy arrays that are consistent by construction (the built-in
        constraints compute them on the host): ``rows`` (:class:`skfair._kernels.Rows`),
        ``h_tensor`` the tensor of ``h`` on ``device``; ``h=None`` when only its tensor is known
        (one that carries gradients)."""
        cs = cls.__new__(cls)
        cs._assign(device_tensor(atom, device), h_tensor, keys, weight, mass.size)
        cs._host.update(rows=rows, atom=atom, mass=mass)
        if h is not None:
            cs._host["h"] = h
            if weight is None:
                cs._host["problem"] = _kernels.Problem(atom, _NO_WEIGHT, rows, h, mass, mass)
        return cs

    @property
    def n_rows(self):
        return self.h.shape[0]

    @property
    def n_samples(self):
        return self.atom.shape[0]

    @property
    def n_atoms(self):
        return self._n_atoms

    @property
    def keys(self):
        """The key of every row (a sequence; the built-in constraints make them on access)."""
        return self._keys

    @property
    def coef(self):
        """The coefficients of every row on every atom, a tensor of shape (m, n_atoms) on the
        device of :attr:`atom` (made on first access from the factored rows)."""
        if self._coef is None:
            self._coef = device_tensor(self.host_coef, self.atom.device)
        return self._coef

    def atom_sums(self, y):
        """Weighted sums of ``y`` over the samples of every atom, shape (n_atoms,)."""
        if self.weight is not None:
            y = y * self.weight
        return _segment_sum(y, self.atom, self.n_atoms)

    def matvec(self, y):
        """``G @ y`` for ``y`` of shape (n,)."""
        return _row_tensor(self.host_rows, self.atom_sums(y))

    def rmatvec(self, lam):
        """``G.T @ lam`` for ``lam`` of shape (m,)."""
        values = _atom_tensor(self.host_rows, lam)[self.atom]
        return values if self.weight is None else values * self.weight

    def violation(self, y):
        """``max(G @ y - h)`` as a float (``-inf`` without rows): how far ``y`` is from the fair
        set."""
        return self.violation_and_range(y)[0]

    def violation_and_range(self, y):
        """``(max(G @ y - h), min(y), max(y))`` from one compiled pass over ``y`` on the host;
        the range is NaN when ``y`` holds a NaN."""
        if y.shape != (self.n_samples,):
            raise ValueError(f"y must have shape ({self.n_samples},), one value per sample of "
                             f"the constraint set; got {tuple(y.shape)}.")
        problem = self.host_problem
        return _kernels.violation_and_range(host_vector(y.to(torch.float64)), problem.atom,
                                            problem.weight, problem.rows, problem.h)

    def _cached(self, name, compute):
        value = self._host.get(name)
        if value is None:
            value = self._host[name] = compute()
        return value

    @property
    def host_rows(self):
        """The rows in the factored form of the compiled passes (:class:`skfair._kernels.Rows`)."""
        return self._host["rows"]

    def _with_opposites(self, rows):
        """This set with the opposite ``-G_r y <= -h_r`` of each of ``rows`` (indices) added
        after the others, so that those rows hold with equality; keys are row numbers (for
        :func:`skfair._exact.recentred_solve`)."""
        host = self.host_rows
        h = np.r_[self.host_h, -self.host_h[rows]]
        opposed = host._replace(plus=np.r_[host.plus, host.minus[rows]],
                                minus=np.r_[host.minus, host.plus[rows]])
        return ConstraintSet._from_host(opposed, self.host_atom, h, torch.from_numpy(h),
                                        range(h.size), self.atom.device, self.weight,
                                        self.host_mass)

    @property
    def host_coef(self):
        """:attr:`coef` as a float64 numpy array on the host (dense: checks and small sets)."""
        return self._cached("coef", lambda: _dense_coef(self.host_rows, self.n_atoms))

    @property
    def host_h(self):
        """:attr:`h` (detached) as a float64 numpy array on the host."""
        return self._cached("h", lambda: host_array(self.h))

    @property
    def host_atom(self):
        """:attr:`atom` as an int64 numpy array on the host."""
        return self._cached("atom", lambda: host_vector(self.atom.long()))

    @property
    def host_weight(self):
        """:attr:`weight` as a float64 numpy array on the host, empty without weights."""
        if self.weight is None:
            return _NO_WEIGHT
        return self._cached("weight", lambda: host_vector(self.weight.to(torch.float64)))

    @property
    def host_mass(self):
        """Total weight of the samples of every atom (their number without weights), a numpy
        array on the host."""
        return self._cached("mass", lambda: self._atom_totals(self.host_weight))

    @property
    def square_mass(self):
        """Total squared weight of every atom's samples, a numpy array on the host."""
        if self.weight is None:
            return self.host_mass
        return self._cached("square_mass", lambda: self._atom_totals(self.host_weight**2))

    @property
    def host_problem(self):
        """The host arrays of the compiled passes as one :class:`skfair._kernels.Problem`
        (``host_atom, host_weight, host_rows, host_h, host_mass, square_mass``; one cached
        lookup per pass: at training batch sizes the Python around a pass costs about as much
        as the pass)."""
        problem = self._host.get("problem")
        if problem is None:
            problem = self._host["problem"] = _kernels.Problem(
                self.host_atom, self.host_weight, self.host_rows, self.host_h, self.host_mass,
                self.square_mass)
        return problem

    def _atom_totals(self, weight):
        """Per-atom sums of ``weight`` (numpy; an empty ``weight`` means ones)."""
        return np.bincount(self.host_atom, weights=weight if weight.size else None,
                           minlength=self.n_atoms).astype(np.float64)

    def dense(self):
        """The dense matrix ``G`` of shape (m, n); for small problems, checks and qpth."""
        G = self.coef[:, self.atom]
        return G if self.weight is None else G * self.weight


def _explicit_rows(coef):
    """:class:`skfair._kernels.Rows` of explicit rows ``coef`` (m, n_atoms): one statistic per
    row."""
    m = coef.shape[0]
    return _statistics(coef, np.arange(m, dtype=np.int64), np.full(m, -1, dtype=np.int64),
                       np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))


def _statistics(stat, plus, minus, family_size, family_start):
    """:class:`skfair._kernels.Rows` from the dense statistics ``stat`` (n_stats, n_atoms)."""
    index, atoms = np.nonzero(stat)
    by_stat = np.bincount(index, minlength=stat.shape[0])
    by_atom = np.bincount(atoms, minlength=stat.shape[1])
    order = np.argsort(atoms, kind="stable")
    return _kernels.Rows(np.r_[0, np.cumsum(by_stat)], atoms, stat[index, atoms],
                         np.r_[0, np.cumsum(by_atom)], index[order], stat[index, atoms][order],
                         plus, minus, family_size, family_start)


def _dense_coef(rows, n_atoms):
    """The dense coefficients (m, n_atoms) of :class:`skfair._kernels.Rows`."""
    n_stats = rows.stat_ptr.size - 1
    stat = np.zeros((n_stats + 1, n_atoms))  # the last one: "no statistic" (index -1)
    stat[np.repeat(np.arange(n_stats), np.diff(rows.stat_ptr)), rows.stat_atom] = rows.stat_coef
    return stat[rows.plus] - stat[rows.minus]


#: the host weight of unweighted sets (the compiled passes take an empty array for unit weights)
_NO_WEIGHT = np.empty(0)


class InfeasibleConstraintError(ValueError):
    """No output within the bounds satisfies the constraint; ``key`` names the row."""

    def __init__(self, message, key=None):
        super().__init__(message)
        self.key = key


def intersect_groups(groups, cardinalities=None):
    """Encode the cartesian product of several protected attributes as one attribute.

    Parameters
    ----------
    groups : torch.LongTensor of shape (n, n_attributes)
        Non-negative group codes, one column per attribute.
    cardinalities : sequence of int, default=None
        Number of groups of every attribute. Give it (as the estimators do with the values seen
        in ``fit``) so that a combination keeps the same code in every batch; ``None`` takes
        ``max + 1`` of the batch, enough for a single stateless projection.

    Returns
    -------
    codes : torch.LongTensor of shape (n, 1)
        Mixed-radix code of every row's combination of groups.
    """
    groups = _as_group_matrix(groups)
    _code_range(groups)
    if cardinalities is None:
        cardinalities = (groups.amax(0) + 1).tolist()
    codes = torch.zeros(groups.shape[0], dtype=torch.long, device=groups.device)
    for column, k in zip(groups.T, cardinalities):
        codes = codes * int(k) + column
    return codes[:, None]


class AffineConstraint(ABC):
    """Base class of fairness constraints that are affine in the outputs.

    Subclass it and implement :meth:`rows`, returning the dense rows ``(G, h)`` of a batch (and
    optionally stable row keys). Everything else (projection, gradients, streaming, checks) then
    works for the new constraint. Built-in constraints override :meth:`build` with a faster
    factored form.

    Attributes
    ----------
    requires_y_true : bool
        Whether the rows depend on the true targets of the batch.
    label_cells : tuple of int or None
        The true labels within which the rows compare groups separately (the estimators then
        stratify their training batches by label too); ``None`` when the rows read the
        targets' values, or none.

    Examples
    --------
    Weighted mean parity: the weighted means of two groups may differ by at most epsilon.

    >>> import torch
    >>> from skfair.constraints import AffineConstraint
    >>> class WeightedMeanParity(AffineConstraint):
    ...     def __init__(self, weights):
    ...         self.weights = weights
    ...     def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
    ...         a = groups[:, 0]
    ...         w = torch.as_tensor(self.weights, dtype=torch.float64)[a]
    ...         g1 = torch.where(a == 1, w, 0.0) / torch.where(a == 1, w, 0.0).sum()
    ...         g0 = torch.where(a == 0, w, 0.0) / torch.where(a == 0, w, 0.0).sum()
    ...         G = torch.stack([g1 - g0, g0 - g1])
    ...         return G, torch.full((2,), float(epsilon), dtype=torch.float64)
    >>> groups = torch.tensor([[0], [0], [1], [1]])
    >>> cs = WeightedMeanParity([1.0, 2.0]).build(groups, epsilon=0.1)
    >>> cs.dense().shape
    torch.Size([2, 4])
    """

    requires_y_true = False
    label_cells = None

    @abstractmethod
    def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
        """Dense rows of one batch.

        Parameters
        ----------
        groups : torch.LongTensor of shape (n, n_attributes)
            Group codes of the batch.
        epsilon : float
            Allowed unfairness.
        y_true : torch.Tensor of shape (n,) or None
            True targets, when :attr:`requires_y_true`.
        sample_weight : torch.Tensor of shape (n,) or None
            Sample weights.

        Returns
        -------
        G : torch.Tensor of shape (m, n)
        h : torch.Tensor of shape (m,)
        keys : list of hashable, optional
            A third element may name the rows; by default they are numbered.
        """

    def build(self, groups, *, epsilon, y_true=None, sample_weight=None, reference_means=None):
        """The :class:`ConstraintSet` of one batch (called once per batch by every consumer).

        ``reference_means`` is used by the streaming algorithm for built-in group-mean
        constraints (see :meth:`_GroupMeanConstraint.build`); other constraints ignore it.
        """
        groups = _as_group_matrix(groups)
        _code_range(groups)
        _check_weight(sample_weight, groups.shape[0], groups.device)
        out = self.rows(groups, epsilon=epsilon, y_true=y_true, sample_weight=sample_weight)
        G, h = out[0], out[1]
        keys = out[2] if len(out) > 2 else range(G.shape[0])
        n = groups.shape[0]
        if G.ndim != 2 or G.shape[1] != n or h.shape != (G.shape[0],):
            raise ValueError(
                f"{type(self).__name__}.rows must return G of shape (m, {n}) and h of shape "
                f"(m,); got {tuple(G.shape)} and {tuple(h.shape)}."
            )
        atom = torch.arange(n, device=groups.device)
        return ConstraintSet(G.to(torch.float64), atom, h.to(torch.float64), keys)


class _GroupMeanConstraint(AffineConstraint):
    """Constraints on the (weighted) group means of the outputs, built in factored form."""


    def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
        cs = self.build(groups, epsilon=epsilon, y_true=y_true, sample_weight=sample_weight)
        return cs.dense(), cs.h, cs.keys

    def build(self, groups, *, epsilon, y_true=None, sample_weight=None, reference_means=None):
        """Rows in factored form.

        ``reference_means`` (dict from ``(attribute, group, label)`` to a number) stands in for
        the mean of a group that is absent from the batch: a present group ``u`` is then compared
        with it, ``mean(y | u) - reference <= epsilon`` and the reverse, under the same row key
        as the in-batch comparison. The streaming algorithm passes the running means of the
        stream, so that a batch of a single row still moves toward fairness.
        """
        groups = _as_group_matrix(groups)
        _check_epsilon(epsilon)
        n, n_attributes = groups.shape
        if self.requires_y_true:
            y_true = _check_y_true(y_true, n, binary=self.label_cells is not None)
        weight = _check_weight(sample_weight, n, groups.device)
        codes = groups
        if self.label_cells is not None:
            codes = torch.cat([groups, y_true.detach().round().long()[:, None]], dim=1)
        # The rows are computed on the host (numpy, a compiled pass over the codes): they are
        # small, and the exact solver works there.
        atom, table, mass = _atoms(codes.numpy(force=True))
        if weight is not None:
            mass = np.bincount(atom, weights=host_vector(weight), minlength=len(mass))
        references = tuple(reference_means or ()) if self.borrows_references else ()
        rows, h, h_tensor, keys, reference_rows = _batch_rows(
            type(self), table, mass.tobytes(), n_attributes, references, float(epsilon),
            self.ratio)
        device = groups.device
        if reference_rows:
            h = h.copy()
            for r, reference, sign in reference_rows:
                h[r] += sign * float(reference_means[reference])
            h_tensor = torch.from_numpy(h)
        h_tensor = h_tensor if device == CPU else h_tensor.to(device)
        if self.requires_y_true and self.label_cells is None and keys:
            # h holds the group means of the targets: a tensor, so that gradients reach y_true
            target = y_true if weight is None else y_true * weight
            sums = _segment_sum(target.to(torch.float64), device_tensor(atom, device), len(mass))
            h, h_tensor = None, h_tensor + _row_tensor(rows, sums)
        return ConstraintSet._from_host(rows, atom, h, h_tensor, keys, device, weight, mass)

    #: whether a present group is compared with the reference mean of an absent one
    borrows_references = True

    #: how the groups of a cell are compared: every ordered pair (``"pairs"``: ``max - min <=
    #: epsilon``), each group on its own with two opposite rows (``"signs"``: ``|mean| <=
    #: epsilon``), every ordered pair by a ratio (``"ratios"``), or every ordered pair of the
    #: groups' expected errors, both labels in one cell (``"errors"``)
    layout = "pairs"
    #: the ratio of the ``"ratios"`` layout
    ratio = None

    def __repr__(self):
        return f"{type(self).__name__}()"


class DemographicParity(_GroupMeanConstraint):
    """Mean outputs of any two groups differ by at most epsilon.

    For probabilities this is the mean-score form of demographic parity; for regression
    outputs it is mean prediction parity.
    """

    name = "demographic_parity"


class EqualizedOdds(_GroupMeanConstraint):
    """Demographic parity within each true-label cell (``Y=0`` and ``Y=1``); needs binary
    ``y_true``. On probabilities it bounds the gaps of the mean scores of the negatives and of
    the positives (the score forms of the false- and true-positive rates)."""

    name = "equalized_odds"
    requires_y_true = True
    label_cells = (0, 1)


class EqualOpportunity(_GroupMeanConstraint):
    """Demographic parity within the positives (``Y=1``) only; needs binary ``y_true``."""

    name = "equal_opportunity"
    requires_y_true = True
    label_cells = (1,)


class FalsePositiveRateParity(_GroupMeanConstraint):
    """Demographic parity within the negatives (``Y=0``) only; needs binary ``y_true``. On
    probabilities it bounds the gap of the groups' mean scores of the negatives (the score form
    of the false-positive rate; fairlearn's ``FalsePositiveRateParity`` on labels)."""

    name = "false_positive_rate_parity"
    requires_y_true = True
    label_cells = (0,)


class ErrorRateParity(_GroupMeanConstraint):
    """The groups' expected error rates differ by at most epsilon; needs binary ``y_true``.

    A probability ``p`` of the positive class errs with probability ``y (1 - p) + (1 - y) p``
    (``y`` the true label): on 0/1 predictions, the zero-one loss. Its group means are affine in
    the outputs, so the rows are those of demographic parity on ``(1 - 2 y) p`` with bounds
    shifted by the groups' shares of positives (fairlearn's ``ErrorRateParity`` on labels).
    """

    name = "error_rate_parity"
    requires_y_true = True
    label_cells = (0, 1)
    layout = "errors"


class MeanResidual(_GroupMeanConstraint):
    """Every group's mean residual is within epsilon of zero: ``|mean(y - y_true | g)| <= eps``.

    Together with bounds on the outputs it can be infeasible (a group whose mean target lies
    farther than epsilon outside the bounds); the projection then raises
    :class:`InfeasibleConstraintError` naming the group.
    """

    name = "mean_residual"
    requires_y_true = True

    borrows_references = False
    layout = "signs"


class DisparateImpact(_GroupMeanConstraint):
    """Every group's mean output is at least ``ratio`` times every other group's:
    ``ratio * mean_v - mean_u <= epsilon`` for every ordered pair of groups present.

    On 0/1 decisions with ``ratio=0.8`` and ``epsilon=0`` this is the *four-fifths rule* of
    disparate impact (every group's selection rate at least 80% of the highest); on
    probabilities it bounds the ratio of the mean scores, and ``epsilon`` is a slack on the
    scale of the outputs (0 for the rule as stated). Its ``k (k - 1)`` rows are not
    differences of two group means, so the exact solver treats them row by row: meant for a
    handful of groups.

    Parameters
    ----------
    ratio : float, default=0.8
        The smallest allowed ratio of two groups' means, in (0, 1].

    Examples
    --------
    >>> import torch
    >>> from skfair.constraints import DisparateImpact, constraint_gap
    >>> y = torch.tensor([0.5, 0.5, 0.3, 0.3], dtype=torch.float64)
    >>> groups = torch.tensor([0, 0, 1, 1])
    >>> round(constraint_gap(DisparateImpact(0.8), y, groups), 6)  # 0.8 * 0.5 - 0.3
    0.1
    """

    name = "disparate_impact"
    layout = "ratios"

    def __init__(self, ratio=0.8):
        if (not isinstance(ratio, numbers.Real) or isinstance(ratio, bool)
                or not 0 < ratio <= 1):
            raise ValueError(f"ratio must be a number in (0, 1]; got {ratio!r}.")
        self.ratio = float(ratio)

    def __repr__(self):
        return f"DisparateImpact(ratio={self.ratio!r})"


_BUILTINS = {cls.name: cls for cls in (DemographicParity, EqualizedOdds, EqualOpportunity,
                                       FalsePositiveRateParity, ErrorRateParity, MeanResidual,
                                       DisparateImpact)}


def get_constraint(constraint):
    """Resolve a constraint given by name or as an :class:`AffineConstraint` instance.

    Parameters
    ----------
    constraint : str or AffineConstraint
        One of ``"demographic_parity"``, ``"equalized_odds"``, ``"equal_opportunity"``,
        ``"false_positive_rate_parity"``, ``"error_rate_parity"``, ``"mean_residual"``,
        ``"disparate_impact"`` (ratio 0.8), or an instance of an :class:`AffineConstraint`
        subclass.

    Returns
    -------
    AffineConstraint
    """
    if isinstance(constraint, AffineConstraint):
        return constraint
    if isinstance(constraint, str) and constraint in _BUILTINS:
        return _BUILTINS[constraint]()
    raise ValueError(
        f"constraint must be one of {sorted(_BUILTINS)} or an AffineConstraint instance; "
        f"got {constraint!r}."
    )


def constraint_gap(constraint, y, groups, *, y_true=None, sample_weight=None):
    """The smallest epsilon for which ``y`` satisfies ``constraint`` on this batch.

    This is the one definition of every fairness measure in skfair: ``max(G y - h)`` with the
    rows built at ``epsilon=0``. For demographic parity it is the largest difference of group
    means, ``max_u mean_u - min_v mean_v`` over every attribute; for equalized odds the same
    within each label cell; for mean residual ``max_g |mean(y - y_true | g)|``. A batch without
    any row (fewer than two groups) has gap 0.

    Parameters
    ----------
    constraint : str or AffineConstraint
    y : torch.Tensor of shape (n,)
        Outputs: labels, probabilities or regression values.
    groups : torch.LongTensor of shape (n,) or (n, n_attributes)
    y_true, sample_weight : torch.Tensor of shape (n,), optional

    Returns
    -------
    float
    """
    constraint = get_constraint(constraint)
    cs = constraint.build(groups, epsilon=0.0, y_true=y_true, sample_weight=sample_weight)
    if cs.n_rows == 0:
        return 0.0
    return float(cs.violation(torch.as_tensor(y, dtype=torch.float64, device=cs.atom.device)))


def _as_group_matrix(groups):
    if not isinstance(groups, torch.Tensor):
        groups = torch.as_tensor(groups)
    if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
        raise ValueError(f"groups must hold integer group codes; got dtype {groups.dtype}.")
    if groups.ndim == 1:
        groups = groups[:, None]
    if groups.ndim != 2:
        raise ValueError(
            f"groups must have shape (n,) or (n, n_attributes); got {tuple(groups.shape)}."
        )
    return groups.long()


def _code_range(codes):
    """``(min, max)`` of group codes, raising unless they are non-negative (one pass)."""
    if not codes.numel():
        return 0, -1
    low, high = (int(v) for v in torch.aminmax(codes))
    if low < 0:
        raise ValueError("groups must hold non-negative group codes.")
    return low, high


def _check_epsilon(epsilon):
    if type(epsilon) is float and 0.0 <= epsilon < math.inf:
        return  # the common case, without the costlier abstract-class check below
    if (not isinstance(epsilon, numbers.Real) or isinstance(epsilon, bool) or not epsilon >= 0
            or epsilon == float("inf")):
        raise ValueError(f"epsilon must be a finite number >= 0; got {epsilon!r}.")


def _check_weight(sample_weight, n, device):
    """``sample_weight`` as a float64 tensor on ``device`` (None stays None), finite and
    non-negative: an infinite weight would turn every group mean it enters into NaN, and a
    NaN row would switch its constraint off."""
    if sample_weight is None:
        return None
    weight = torch.as_tensor(sample_weight, dtype=torch.float64, device=device)
    if weight.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},); got {tuple(weight.shape)}.")
    if not bool(torch.all(torch.isfinite(weight) & (weight >= 0))):
        raise ValueError("sample_weight must be finite and non-negative; it holds a negative "
                         "value, NaN or inf.")
    return weight


def _check_y_true(y_true, n, binary):
    if y_true is None:
        raise ValueError("y_true is required by this constraint; got None.")
    y_true = torch.as_tensor(y_true)
    if y_true.shape != (n,):
        raise ValueError(f"y_true must have shape ({n},); got {tuple(y_true.shape)}.")
    if not bool(torch.isfinite(y_true).all()):
        raise ValueError("y_true must be finite; it contains NaN or inf.")
    if binary and not bool(((y_true == 0) | (y_true == 1)).all()):
        raise ValueError("y_true must hold binary labels 0/1 for this constraint.")
    return y_true


@functools.lru_cache(maxsize=256)
def _row_structure(cls, table, positive, n_attributes, references=(), ratio=None):
    """The rows of a group-mean constraint for a batch whose atoms are ``table`` (cached: the
    structure depends on which atoms are present, not on the values of the batch).

    Returns ``(member, plus, minus, family_size, family_start, reference_rows, keys)``:
    ``member`` (n_stats, n_atoms) marks the atoms of every (attribute, label cell, group)
    present, whose mean is a statistic; row ``r`` compares the statistics ``plus[r]`` and
    ``minus[r]`` (-1: none), see :class:`skfair._kernels.Rows`. The pair families come first:
    for a pairwise constraint one per (attribute, label cell) with two groups or more, for
    ``mean_residual`` one per group (the group and "nothing": its two opposite rows). Then the
    rows that compare a present group with the reference mean of an absent one:
    ``reference_rows`` holds triples ``(row, reference key, sign)``, row ``row`` having ``sign
    *`` that mean added to ``h``. ``keys`` name the rows (:class:`_RowKeys`). ``positive``
    (bytes, one per atom: a cheap key to hash) flags the atoms with positive weight; the others
    belong to no group. ``references`` are the keys ``(attribute, group, label)`` that have a
    reference mean. The ``"ratios"`` layout has, after the groups' means, the means times
    ``ratio`` (``member`` holds ``ratio`` on their atoms), and its rows are generic rows (no
    family).
    """
    member, families, generic = [], [], []
    for a in range(n_attributes):
        for label in cls.label_cells if cls.layout != "errors" and cls.label_cells else (None,):
            inside = [(label is None or row[-1] == label) and positive[j]
                      for j, row in enumerate(table)]
            present = sorted({row[a] for row, keep in zip(table, inside) if keep})
            first = len(member)
            # the "errors" layout weighs each atom by 1 - 2 y (its label): the mean of
            # (1 - 2 y) p, the group's expected error less its share of positives
            member.extend([float(keep and row[a] == g) * (1 - 2 * row[-1] if cls.layout
                                                          == "errors" else 1)
                           for row, keep in zip(table, inside)] for g in present)
            if cls.layout in ("pairs", "errors"):
                if len(present) > 1:
                    families.append((np.arange(first, first + len(present)),
                                     ("pairs", a, label, tuple(present))))
            elif cls.layout == "signs":
                families.extend((np.array([first + i, -1]), ("signs", a, g))
                                for i, g in enumerate(present))
            absent = [(a_, g, label_) for a_, g, label_ in references
                      if a_ == a and label_ == label and g not in present]
            if cls.layout == "ratios" and (len(present) > 1 or absent and present):
                # ratio * mean_v - mean_u <= epsilon
                scaled = len(member)
                member.extend([ratio * value for value in member[first + i]]
                              for i in range(len(present)))
                generic.extend((scaled + j, first + i, (a, u, v, label), None, None)
                               for i, u in enumerate(present) for j, v in enumerate(present)
                               if i != j)
            for i, u in enumerate(present if absent else ()):
                for reference in absent:
                    # the in-batch rows with the reference mean of v for mean_v (the constant
                    # moves to h), keyed like in-batch pairs
                    v = reference[1]
                    if cls.layout == "ratios":  # ratio * ref - mean_u, ratio * mean_u - ref
                        generic.append((-1, first + i, (a, u, v, label), reference, -ratio))
                        generic.append((scaled + i, -1, (a, v, u, label), reference, 1.0))
                    else:  # mean_u - ref, ref - mean_u
                        generic.append((first + i, -1, (a, u, v, label), reference, 1.0))
                        generic.append((-1, first + i, (a, v, u, label), reference, -1.0))
    largest = max(families, key=lambda family: len(family[0]), default=None)
    n_pairs = sum(len(members) * (len(members) - 1) for members, _ in families)
    if n_pairs > MAX_PAIR_ROWS:
        a, label = largest[1][1], largest[1][2] if largest[1][0] == "pairs" else None
        raise ValueError(
            f"{cls.name} over {len(largest[0]):,} groups present together (attribute {a}"
            f"{'' if label is None else f', label {label}'}) needs {n_pairs:,} pair rows, more "
            f"than the {MAX_PAIR_ROWS:,} skfair builds for one batch (a number per pair); use "
            f"fewer or coarser groups, e.g. marginal instead of intersectional fairness.")
    member = np.array(member, dtype=np.float64).reshape(len(member), len(table))
    family_size = np.array([len(members) for members, _ in families], dtype=np.int64)
    family_start = np.r_[0, np.cumsum(family_size * (family_size - 1))].astype(np.int64)
    plus, minus = [], []
    for members, _ in families:
        first, second = np.nonzero(~np.eye(len(members), dtype=bool))  # pairs (i, j), i != j
        plus.append(members[first])
        minus.append(members[second])
    plus.append(np.array([row[0] for row in generic], dtype=np.int64))
    minus.append(np.array([row[1] for row in generic], dtype=np.int64))
    plus, minus = np.concatenate(plus).astype(np.int64), np.concatenate(minus).astype(np.int64)
    end = family_start[-1]
    reference_rows = tuple((end + r, row[3], row[4]) for r, row in enumerate(generic)
                           if row[3] is not None)
    keys = _RowKeys(tuple(spec for _, spec in families), family_start,
                    tuple(row[2] for row in generic))
    for array in (member, plus, minus, family_size, family_start):
        array.flags.writeable = False  # cached and shared between batches
    return member, plus, minus, family_size, family_start, reference_rows, keys


#: the most pair rows a batch's constraint may have: each costs a few numbers (its groups, bound,
#: residual and multiplier), about 60 bytes
MAX_PAIR_ROWS = 20_000_000


class _RowKeys(Sequence):
    """The keys of a built-in constraint's rows, each made when asked for: ``(attribute, u, v,
    label)`` for the pair ``(u, v)`` of a pairwise constraint, ``(attribute, g, "+")`` and
    ``(attribute, g, "-")`` for the two rows of ``mean_residual``'s group ``g``, then the
    ``generic`` keys (rows that compare with a reference mean). A parity constraint on ``k``
    groups has ``k (k - 1)`` rows, and the exact solver needs none of their keys."""

    def __init__(self, families, family_start, generic):
        self._families, self._start, self._generic = families, family_start, generic

    def __len__(self):
        return int(self._start[-1]) + len(self._generic)

    def __getitem__(self, r):
        if isinstance(r, slice):
            return [self[i] for i in range(*r.indices(len(self)))]
        r = operator.index(r)
        r += len(self) if r < 0 else 0
        if not 0 <= r < len(self):
            raise IndexError("row index out of range")
        end = int(self._start[-1])
        if r >= end:
            return self._generic[r - end]
        f = int(np.searchsorted(self._start, r, side="right")) - 1
        return self._family_key(f, r - int(self._start[f]))

    def __iter__(self):
        for f in range(len(self._families)):
            for offset in range(int(self._start[f + 1] - self._start[f])):
                yield self._family_key(f, offset)
        yield from self._generic

    def __eq__(self, other):
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None

    def __repr__(self):
        return repr(list(self))

    def _family_key(self, f, offset):
        spec = self._families[f]
        if spec[0] == "signs":
            return (spec[1], spec[2], "+" if offset == 0 else "-")
        _, a, label, labels = spec
        i, rest = divmod(offset, len(labels) - 1)
        return (a, labels[i], labels[rest + (rest >= i)], label)


@functools.lru_cache(maxsize=1024)
def _batch_rows(cls, table, mass_key, n_attributes, references, epsilon, ratio=None):
    """The rows of a group-mean constraint for a batch whose atoms ``table`` have the total
    weights ``mass_key`` (the bytes of a float64 array): ``(rows, h, h as a CPU tensor, keys,
    reference_rows)`` (see :func:`_row_structure`; ``rows`` a :class:`skfair._kernels.Rows`).

    Cached: the rows depend on the batch's composition only, and the batches of a training
    epoch keep every group's share (the estimators stratify them), so the same compositions
    come back. The arrays and tensors are shared between sets and never modified.
    """
    mass = np.frombuffer(mass_key)
    member, plus, minus, family_size, family_start, reference_rows, keys = _row_structure(
        cls, table, (mass > 0).tobytes(), n_attributes, references, ratio)
    # row g of `member / group_mass`: the averaging functional of group g over the atoms
    # (times the ratio, for the scaled means of the "ratios" layout)
    stat = member / ((member != 0) @ mass)[:, None] if member.size else member
    rows = _statistics(stat, plus, minus, family_size, family_start)
    h = np.full(plus.size, epsilon)
    if cls.layout == "errors":
        # error_g = positives_g + mean_g((1 - 2 y) p): the rows' bounds carry the shares of
        # positives, read from the atoms' labels (their last code)
        inside = (member != 0).astype(np.float64)
        label = np.array([row[-1] for row in table], dtype=np.float64)
        share = np.r_[(inside @ (mass * label)) / (inside @ mass), 0.0]  # "none": 0
        h = h + share[minus] - share[plus]
    return rows, h, torch.from_numpy(h), keys, reference_rows


def _row_tensor(rows, sums):
    """``G``'s rows applied to the atom sums ``sums`` (a tensor: differentiable in ``sums``)."""
    device = sums.device
    n_stats = rows.stat_ptr.size - 1
    index = _index_tensor(np.repeat(np.arange(n_stats), np.diff(rows.stat_ptr)), device)
    terms = _index_tensor(rows.stat_coef, device) * sums[_index_tensor(rows.stat_atom, device)]
    values = sums.new_zeros(n_stats + 1).index_add_(0, index, terms)  # the last: "none" (-1)
    return values[_index_tensor(rows.plus, device)] - values[_index_tensor(rows.minus, device)]


def _atom_tensor(rows, lam):
    """``G.T @ lam`` per atom (a tensor: differentiable in ``lam``)."""
    device = lam.device
    n_stats = rows.stat_ptr.size - 1
    net = lam.new_zeros(n_stats + 1)  # the last: "none" (-1), dropped
    for stat, sign in ((rows.plus, lam), (rows.minus, -lam)):
        net = net.index_add(0, _index_tensor(np.where(stat < 0, n_stats, stat), device), sign)
    net = net[:n_stats]
    index = _index_tensor(np.repeat(np.arange(n_stats), np.diff(rows.stat_ptr)), device)
    terms = _index_tensor(rows.stat_coef, device).to(lam.dtype) * net[index]
    return lam.new_zeros(rows.atom_ptr.size - 1).index_add_(
        0, _index_tensor(rows.stat_atom, device), terms)


def _index_tensor(array, device):
    """A (read-only, cached) numpy array as a tensor on ``device`` (a copy)."""
    return torch.tensor(array, device=device)


def _segment_sum(values, index, size):
    """``out[k] = sum(values[index == k])`` for ``k < size`` (differentiable in ``values``)."""
    return values.new_zeros(size).scatter_add_(0, index, values)


def _atoms(codes):
    """Index every row of ``codes`` (an int64 numpy array (n, c)) by its combination of values.

    Returns ``(atom, table, counts)``: ``table[atom[i]] == codes[i]`` (``table`` a tuple of
    tuples, hashable) and ``counts[k]`` rows have atom ``k`` (float64). When the code space is
    small (the usual case) the atoms are all its combinations, present or not (``counts`` 0):
    a mixed-radix code and its histogram in one compiled pass, no sort. Otherwise the atoms are
    the distinct rows.
    """
    n, c = codes.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64), (), np.zeros(0)
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    # Atoms absent from the batch cost O(m) each in the solver's small algebra: a code space of
    # up to a few hundred combinations (or four per sample) is cheaper than finding the distinct
    # rows, which for a small batch (a stream's single rows) costs more than all the rest.
    atom, counts = np.empty(n, dtype=np.int64), np.empty(min(max(4 * n, 256), 1 << 12))
    low, radix, space = _kernels.mixed_radix(codes, atom, counts)
    if low < 0:
        raise ValueError("groups must hold non-negative group codes.")
    if space > counts.size:
        table, atom, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
        return atom.reshape(n), tuple(map(tuple, table.tolist())), counts.astype(np.float64)
    return atom, _code_table(int(radix), c), counts[:space]


@functools.lru_cache(maxsize=16)
def _code_table(radix, n_columns):
    """Every combination of ``n_columns`` codes below ``radix``, in mixed-radix order."""
    return tuple(itertools.product(range(radix), repeat=n_columns))
