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
(:class:`ConstraintSet`, whose stored form is described in :mod:`skfair._constraint_set`; the
built-in constraints' rows are made by :mod:`skfair._rows`): no ``k (k - 1) x n_atoms`` matrix
is formed unless asked for, and the exact solver's linear algebra works on the groups; what
grows with ``k^2`` is one number per row (its bound, residual and multiplier).

Group means are weighted by ``sample_weight`` when it is given.
"""

import numbers
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from typing import TypeAlias

import torch
from numpy.typing import ArrayLike

from ._constraint_set import ConstraintSet
from ._rows import (GroupMeanLayout, as_group_matrix, check_weight, code_range,
                    group_mean_set)

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


#: what :meth:`AffineConstraint.rows` returns: ``(G, h)``, or ``(G, h, keys)`` naming the rows
_DenseRows: TypeAlias = (tuple[torch.Tensor, torch.Tensor]
             | tuple[torch.Tensor, torch.Tensor, Sequence[Hashable]])


class InfeasibleConstraintError(ValueError):
    """No output within the bounds satisfies the constraint; ``key`` names the row."""

    def __init__(self, message: str, key: Hashable | None = None) -> None:
        super().__init__(message)
        self.key = key


def intersect_groups(groups: torch.Tensor | ArrayLike,
                     cardinalities: Sequence[int] | None = None) -> torch.Tensor:
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
    groups = as_group_matrix(groups)
    code_range(groups)
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

    requires_y_true: bool = False
    label_cells: tuple[int, ...] | None = None

    @abstractmethod
    def rows(self, groups: torch.Tensor, *, epsilon: float, y_true: torch.Tensor | None = None,
             sample_weight: torch.Tensor | None = None) -> _DenseRows:
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

    def build(self, groups: torch.Tensor | ArrayLike, *, epsilon: float,
              y_true: torch.Tensor | None = None,
              sample_weight: torch.Tensor | None = None) -> ConstraintSet:
        """The :class:`ConstraintSet` of one batch (called once per batch by every consumer)."""
        groups = as_group_matrix(groups)
        code_range(groups)
        check_weight(sample_weight, groups.shape[0], groups.device)
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


class _GroupMeanConstraint(GroupMeanLayout, AffineConstraint):
    """Constraints on the (weighted) group means of the outputs, built in factored form
    (:func:`skfair._rows.group_mean_set`)."""

    def rows(self, groups: torch.Tensor, *, epsilon: float, y_true: torch.Tensor | None = None,
             sample_weight: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, Sequence[Hashable]]:
        cs = self.build(groups, epsilon=epsilon, y_true=y_true, sample_weight=sample_weight)
        return cs.dense(), cs.h, cs.keys

    def build(self, groups: torch.Tensor | ArrayLike, *, epsilon: float,
              y_true: torch.Tensor | ArrayLike | None = None,
              sample_weight: torch.Tensor | ArrayLike | None = None) -> ConstraintSet:
        """Rows in factored form."""
        return group_mean_set(self, groups, epsilon=epsilon, y_true=y_true,
                              sample_weight=sample_weight)

    def __repr__(self) -> str:
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

    def __init__(self, ratio: float = 0.8) -> None:
        if (not isinstance(ratio, numbers.Real) or isinstance(ratio, bool)
                or not 0 < ratio <= 1):
            raise ValueError(f"ratio must be a number in (0, 1]; got {ratio!r}.")
        self.ratio = float(ratio)

    def __repr__(self) -> str:
        return f"DisparateImpact(ratio={self.ratio!r})"


_BUILTINS = {cls.name: cls for cls in (DemographicParity, EqualizedOdds, EqualOpportunity,
                                       FalsePositiveRateParity, ErrorRateParity, MeanResidual,
                                       DisparateImpact)}


def get_constraint(constraint: str | AffineConstraint) -> AffineConstraint:
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


def constraint_gap(constraint: str | AffineConstraint, y: torch.Tensor | ArrayLike,
                   groups: torch.Tensor | ArrayLike, *, y_true: torch.Tensor | None = None,
                   sample_weight: torch.Tensor | None = None) -> float:
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
