"""Affine group-fairness constraints.

A constraint turns one batch's protected-group codes (and, where it needs them, the batch's true
targets) into the rows of ``G @ y <= h``: the set of fair outputs ``y`` for that batch. This module is
the only place where the fairness math lives; the projection layer, the streaming algorithm, the
estimators and the metrics all call it.

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

Group means are weighted by ``sample_weight`` when it is given.
"""

import functools
import math
import numbers
from abc import ABC, abstractmethod

import numpy as np
import torch

from . import _kernels

__all__ = [
    "AffineConstraint",
    "ConstraintSet",
    "DemographicParity",
    "EqualizedOdds",
    "EqualOpportunity",
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

    Products with vectors of the n samples are tensor operations on the device of ``atom`` (the
    solver's passes, :meth:`clip_shift`, :meth:`free_sums`, :meth:`free_shift` and
    :meth:`host_matvec`, are compiled loops for CPU tensors: see :mod:`skfair._kernels`); the
    small matrices of the m rows (:attr:`host_coef`, :attr:`host_h`, :meth:`gram`) are numpy
    arrays on the host, where the solvers do their dense algebra.

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
    pair_families : sequence of sequences of (int, hashable, hashable), default=()
        Rows that compare groups pairwise: in one family, the triple ``(r, u, v)`` says that row
        ``r`` is ``s_u(y) - s_v(y) <= c_r`` for linear statistics ``s_g``, where either every row
        of the family has the same ``c_r`` or the family has two rows whose ``c`` sum to >= 0
        (a two-sided bound). Only the net multiplier of each group then matters, which lets
        the exact solver keep its Newton systems regular; other rows are treated generically.
    atom_mass : torch.Tensor of shape (n_atoms,), optional
        :meth:`atom_mass`, when the caller has already computed it.
    """

    def __init__(self, coef, atom, h, keys, weight=None, pair_families=(), atom_mass=None):
        self.coef = coef
        self.atom = atom
        self.h = h
        self.keys = list(keys)
        self.weight = weight
        self.pair_families = pair_families
        self._mass = atom_mass  # atom_mass(), cached
        self._full_gram = None  # gram(), cached
        self._host_coef = None
        self._host_h = None
        if coef.shape[0] != h.shape[0] or len(self.keys) != h.shape[0]:
            raise ValueError(
                f"coef, h and keys must describe the same rows; got {coef.shape[0]}, "
                f"{h.shape[0]} and {len(self.keys)}."
            )

    @property
    def n_rows(self):
        return self.h.shape[0]

    @property
    def n_samples(self):
        return self.atom.shape[0]

    def atom_sums(self, y):
        """Weighted sums of ``y`` over the samples of every atom, shape (n_atoms,)."""
        if self.weight is not None:
            y = y * self.weight
        return _segment_sum(y, self.atom, self.n_atoms)

    def matvec(self, y):
        """``G @ y`` for ``y`` of shape (n,)."""
        return self.coef @ self.atom_sums(y)

    def host_matvec(self, y):
        """``G @ y`` as a numpy array: atom sums over the samples, the m rows on the host."""
        if _kernels.usable(y):
            sums = np.empty(self.n_atoms)
            _kernels.atom_sums(_kernels.view(y), self._host_atom, self._host_weight, sums)
        else:
            sums = _host_array(self.atom_sums(y))
        return self.host_coef @ sums

    def rmatvec(self, lam, out=None):
        """``G.T @ lam`` for ``lam`` of shape (m,), written into ``out`` when given."""
        return self._spread(lam @ self.coef, out)

    def clip_shift(self, z, lam, lo, hi, out):
        """``y = clip(z - G.T @ lam, lo, hi)``, written into ``out``; the dual solver's pass.

        ``lam`` is a numpy array of shape (m,), ``lo``/``hi`` floats or None. Returns
        ``(sums, free_mass, distance)``: the :meth:`atom_sums` of ``y`` and the total squared
        weight of every atom's samples strictly inside the bounds (numpy arrays, the input of
        :meth:`gram`), and ``1/2 ||y - z||^2``. On the CPU it is a single compiled pass.
        """
        shift = self.host_coef.T @ lam
        if _kernels.usable(z):
            sums, free_mass = np.empty(self.n_atoms), np.empty(self.n_atoms)
            distance = _kernels.clip_shift(
                _kernels.view(z), self._host_atom, shift, self._host_weight, *_open_bounds(lo, hi),
                out.numpy(), sums, free_mass)
            return sums, free_mass, distance
        y = torch.sub(z, self._spread(_device_tensor(shift, z.device), out), out=out)
        if lo is not None or hi is not None:
            y.clamp_(lo, hi)
        distance = 0.5 * float(torch.dist(y, z)) ** 2
        return _host_array(self.atom_sums(y)), self._free_mass(_free(y, lo, hi)), distance

    def free_sums(self, values, y, lo, hi):
        """``(G_F @ values, free_mass)`` over the coordinates ``F`` where ``y`` is strictly inside
        the bounds: the right-hand side and (through :meth:`gram`) the matrix of the implicit
        derivative. Numpy arrays of shapes (m,) and (n_atoms,)."""
        if _kernels.usable(y):
            sums, free_mass = np.empty(self.n_atoms), np.empty(self.n_atoms)
            _kernels.free_sums(_kernels.view(values), _kernels.view(y), self._host_atom,
                               self._host_weight, *_open_bounds(lo, hi), sums, free_mass)
            return self.host_coef @ sums, free_mass
        free = _free(y, lo, hi)
        return self.host_matvec(values if free is None else values * free), self._free_mass(free)

    def free_shift(self, values, y, u, lo, hi):
        """``values - G.T @ u`` on the coordinates where ``y`` is strictly inside the bounds, 0
        elsewhere (a new tensor); ``u`` is a numpy array of shape (m,)."""
        shift = self.host_coef.T @ u
        if _kernels.usable(y):
            out = torch.empty_like(y)
            _kernels.free_shift(_kernels.view(values), _kernels.view(y), self._host_atom, shift,
                                self._host_weight, *_open_bounds(lo, hi), out.numpy())
            return out
        out = values - self._spread(_device_tensor(shift, y.device))
        free = _free(y, lo, hi)
        return out if free is None else out.mul_(free)

    def _spread(self, atom_values, out=None):
        """Column ``i`` of the row combination ``atom_values``: ``weight[i] *
        atom_values[atom[i]]``."""
        values = torch.index_select(atom_values, 0, self.atom, out=out)
        return values if self.weight is None else values.mul_(self.weight)

    def _free_mass(self, free):
        """Total squared weight of every atom's samples flagged by ``free`` (None: all)."""
        if free is None:
            return self._square_mass
        w2 = free.to(torch.float64)
        if self.weight is not None:
            w2 = w2.mul_(self.weight**2)
        return _host_array(_segment_sum(w2, self.atom, self.n_atoms))

    @property
    def n_atoms(self):
        return self.coef.shape[1]

    @property
    def host_coef(self):
        """:attr:`coef` as a float64 numpy array on the host (a view on CPU)."""
        if self._host_coef is None:
            self._host_coef = _host_array(self.coef)
        return self._host_coef

    @property
    def host_h(self):
        """:attr:`h` (detached) as a float64 numpy array on the host."""
        if self._host_h is None:
            self._host_h = _host_array(self.h)
        return self._host_h

    @functools.cached_property
    def _host_atom(self):
        return _kernels.view(self.atom)

    @functools.cached_property
    def _host_weight(self):
        return np.empty(0) if self.weight is None else _kernels.view(self.weight)

    @functools.cached_property
    def _square_mass(self):
        """Total squared weight of every atom's samples (numpy)."""
        if self.weight is None:
            return _host_array(self.atom_mass())
        return _host_array(_segment_sum(self.weight**2, self.atom, self.n_atoms))

    def gram(self, free_mass=None):
        """``G[:, F] @ G[:, F].T`` from the per-atom squared weight ``free_mass`` of the
        coordinates ``F`` (as returned by :meth:`clip_shift` and :meth:`free_sums`).

        Returns a numpy array of shape (m, m) on the host: the solver's dense algebra on the m
        rows is tiny, and numpy does it with a fraction of the per-call overhead of tensor
        operations. Without ``free_mass``, the full ``G @ G.T`` (cached: solvers ask for it
        repeatedly).
        """
        if free_mass is None:
            if self._full_gram is None:
                self._full_gram = self.gram(self._square_mass)
            return self._full_gram
        coef = self.host_coef
        return (coef * free_mass) @ coef.T

    def atom_mass(self):
        """Total weight of the samples of every atom (their number without weights).

        Returns
        -------
        torch.Tensor of shape (n_atoms,), float64
        """
        if self._mass is None:
            weight = self.weight
            if weight is None:
                weight = torch.ones(self.n_samples, dtype=torch.float64, device=self.atom.device)
            self._mass = _segment_sum(weight.to(torch.float64), self.atom, self.coef.shape[1])
        return self._mass

    def dense(self):
        """The dense matrix ``G`` of shape (m, n); for small problems, checks and qpth."""
        G = self.coef[:, self.atom]
        return G if self.weight is None else G * self.weight

    def violation(self, y):
        """``max(G @ y - h)`` as a float (``-inf`` without rows): how far ``y`` is from the fair
        set."""
        if self.n_rows == 0:
            return float("-inf")
        return float(np.max(self.host_matvec(y.detach()) - self.host_h))


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

    #: label cells the means are taken in; ``None``: the whole group
    label_cells = None

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
        weight = None
        if sample_weight is not None:
            weight = torch.as_tensor(sample_weight, dtype=torch.float64, device=groups.device)
            if weight.shape != (n,) or not bool(torch.all(weight >= 0)):
                raise ValueError(
                    f"sample_weight must be a non-negative tensor of shape ({n},); "
                    f"got shape {tuple(weight.shape)}."
                )
        codes = groups
        if self.label_cells is not None:
            codes = torch.cat([groups, y_true.detach().round().long()[:, None]], dim=1)
        atom, table, counts = _atoms(codes)
        if weight is None:
            atom_mass = counts.to(torch.float64)
        else:
            atom_mass = _segment_sum(weight, atom, table.shape[0])
        # Which rows exist depends only on the atoms present (a handful, the same in most
        # batches), so that part is worked out once in Python and cached; every batch then
        # costs a few numpy operations on these small matrices (see ConstraintSet.gram).
        table_key = tuple(map(tuple, table.tolist()))
        mass = _host_array(atom_mass)
        positive = tuple(mass > 0)
        if reference_means and self.borrows_references:
            member, select, keys, offsets, families = _row_structure(
                type(self), table_key, positive, n_attributes, reference_means)
        else:
            member, select, keys, offsets, families = _cached_row_structure(
                type(self), table_key, positive, n_attributes)
        device = atom.device
        if not keys:
            return ConstraintSet(atom_mass.new_zeros((0, table.shape[0])), atom,
                                 atom_mass.new_zeros(0), keys, weight, atom_mass=atom_mass)
        group_mass = member @ mass
        # row g of `member / group_mass`: the averaging functional of group g over the atoms
        averages = member / group_mass[:, None]
        coef = _device_tensor(select @ averages, device)
        h = _device_tensor(np.full(len(keys), float(epsilon)) + offsets, device)
        if self.requires_y_true and self.label_cells is None:
            target = y_true if weight is None else y_true * weight
            h = h + coef @ _segment_sum(target.to(torch.float64), atom, table.shape[0])
        return ConstraintSet(coef, atom, h, keys, weight, families, atom_mass=atom_mass)

    #: whether a present group is compared with the reference mean of an absent one
    borrows_references = True

    @classmethod
    def _cell_rows(cls, a, label, present):
        """Rows of one (attribute, label cell) with groups ``present``: every ordered pair.

        Returns a list of ``(terms, key, pair)``; ``terms`` are ``(group index, sign)`` pairs,
        the row being the signed sum of those groups' means; ``pair`` is ``(family, u, v)``
        when the row belongs to a :attr:`ConstraintSet.pair_families` family (else None).
        """
        return [(((i, 1.0), (j, -1.0)), (a, present[i], present[j], label), (None, i, j))
                for i in range(len(present)) for j in range(len(present)) if i != j]

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


class MeanResidual(_GroupMeanConstraint):
    """Every group's mean residual is within epsilon of zero: ``|mean(y - y_true | g)| <= eps``.

    Together with bounds on the outputs it can be infeasible (a group whose mean target lies
    farther than epsilon outside the bounds); the projection then raises
    :class:`InfeasibleConstraintError` naming the group.
    """

    name = "mean_residual"
    requires_y_true = True

    borrows_references = False

    @classmethod
    def _cell_rows(cls, a, label, present):
        """``mean_g - target_g <= eps`` and ``target_g - mean_g <= eps`` for every group.

        The two rows of a group are opposite: they form a family of two pseudo-groups, so that
        the solver keeps only their net multiplier.
        """
        return ([(((i, 1.0),), (a, g, "+"), (g, "+", "-")) for i, g in enumerate(present)]
                + [(((i, -1.0),), (a, g, "-"), (g, "-", "+")) for i, g in enumerate(present)])


_BUILTINS = {cls.name: cls for cls in (DemographicParity, EqualizedOdds, EqualOpportunity,
                                       MeanResidual)}


def get_constraint(constraint):
    """Resolve a constraint given by name or as an :class:`AffineConstraint` instance.

    Parameters
    ----------
    constraint : str or AffineConstraint
        One of ``"demographic_parity"``, ``"equalized_odds"``, ``"equal_opportunity"``,
        ``"mean_residual"``, or an instance of an :class:`AffineConstraint` subclass.

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
    return float(cs.violation(torch.as_tensor(y, dtype=torch.float64, device=cs.coef.device)))


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
    if not isinstance(epsilon, numbers.Real) or not epsilon >= 0 or epsilon == float("inf"):
        raise ValueError(f"epsilon must be a finite number >= 0; got {epsilon!r}.")


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


def _row_structure(cls, table, positive, n_attributes, reference_means=None):
    """The rows of a group-mean constraint for a batch whose atoms are ``table``.

    Returns ``(member, select, keys, offsets, families)``, numpy arrays on the host: ``member``
    (n_groups, n_atoms) marks the atoms of every (attribute, label cell, group) present,
    ``select`` (m, n_groups) the signed group means that make each row, ``offsets`` (m,) what
    the reference means add to ``h``, ``families`` the :attr:`ConstraintSet.pair_families` (the
    in-batch group pairs of every attribute and label cell). ``positive`` flags the atoms with
    positive weight; the others belong to no group.
    """
    member, select, keys, offsets, families = [], [], [], [], []
    for a in range(n_attributes):
        for label in cls.label_cells or (None,):
            inside = [(label is None or row[-1] == label) and positive[j]
                      for j, row in enumerate(table)]
            present = sorted({row[a] for row, keep in zip(table, inside) if keep})
            first = len(member)
            member.extend([float(keep and row[a] == g) for row, keep in zip(table, inside)]
                          for g in present)
            cell_families = {}
            for terms, key, pair in cls._cell_rows(a, label, present):
                if pair is not None:
                    family, u, v = pair
                    cell_families.setdefault(family, []).append((len(keys), u, v))
                select.append({first + i: sign for i, sign in terms})
                keys.append(key)
                offsets.append(0.0)
            families.extend(map(tuple, cell_families.values()))
            absent = [(g, ref) for (a_, g, label_), ref in (reference_means or {}).items()
                      if a_ == a and label_ == label and g not in present]
            for i, u in enumerate(present if absent else ()):
                for v, ref in absent:
                    # mean_u - ref <= eps and ref - mean_u <= eps, keyed like in-batch pairs
                    select.extend([{first + i: 1.0}, {first + i: -1.0}])
                    keys.extend([(a, u, v, label), (a, v, u, label)])
                    offsets.extend([float(ref), -float(ref)])
    member = np.array(member, dtype=np.float64).reshape(len(member), len(table))
    select = np.array([[terms.get(g, 0.0) for g in range(len(member))] for terms in select],
                      dtype=np.float64).reshape(len(keys), len(member))
    for array in (member, select):
        array.flags.writeable = False  # cached and shared between batches
    return member, select, keys, np.array(offsets, dtype=np.float64), tuple(families)


_cached_row_structure = functools.lru_cache(maxsize=128)(_row_structure)


def _host_array(values):
    """A tensor as a float64 numpy array on the host (a view of a CPU float64 tensor)."""
    values = values.detach()
    if values.dtype != torch.float64:
        values = values.to(torch.float64)
    return values.numpy() if values.device.type == "cpu" else values.cpu().numpy()


def _device_tensor(array, device):
    """A numpy array as a tensor on ``device`` (sharing its memory on the CPU)."""
    tensor = torch.from_numpy(array)
    return tensor if device.type == "cpu" else tensor.to(device)


def _open_bounds(lo, hi):
    """Bounds as floats, infinite where missing (the compiled passes' convention)."""
    return -math.inf if lo is None else float(lo), math.inf if hi is None else float(hi)


def _free(y, lo, hi):
    """Mask of the coordinates strictly inside the bounds; None when there are none."""
    if lo is None and hi is None:
        return None
    if lo is None:
        return y < hi
    if hi is None:
        return y > lo
    return (y > lo) & (y < hi)


def _segment_sum(values, index, size):
    """``out[k] = sum(values[index == k])`` for ``k < size`` (differentiable in ``values``)."""
    return values.new_zeros(size).scatter_add_(0, index, values)


def _atoms(codes):
    """Index every row of ``codes`` (n, c) by its combination of values.

    Returns ``(atom, table, counts)``: ``table[atom[i]] == codes[i]`` and ``counts[k]`` rows
    have atom ``k``. When the code space is small (the usual case) the atoms are all its
    combinations, present or not (``counts`` 0): a mixed-radix code and one count, no sort and
    no renumbering. Otherwise, and for tiny batches where one sort is cheaper, the atoms are the
    distinct rows.
    """
    n, c = codes.shape
    if n == 0:
        return codes.new_zeros(0), codes.new_zeros((0, c)), codes.new_zeros(0)
    radix = _code_range(codes)[1] + 1
    space = radix**c
    if n <= 32 or space > min(4 * n, 1 << 12):
        table, atom, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
        return atom, table, counts
    # a fresh tensor: the constraint set outlives the call and must not alias the caller's codes
    atom = codes[:, 0].clone() if c == 1 else codes[:, 0]
    for column in codes.T[1:]:
        atom = torch.add(column, atom, alpha=radix)  # one fused pass per column
    return atom, _code_table(radix, c, codes.device), torch.bincount(atom, minlength=space)


@functools.lru_cache(maxsize=16)
def _code_table(radix, n_columns, device):
    """Every combination of ``n_columns`` codes below ``radix``, in mixed-radix order."""
    powers = radix ** torch.arange(n_columns - 1, -1, -1, device=device)
    return torch.arange(radix**n_columns, device=device)[:, None] // powers % radix
