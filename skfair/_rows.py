"""The row builders of the built-in constraints: from a batch's group codes to its rows.

Samples that share every group code (and, where the rows split by label, the label) form an
*atom* (:func:`atoms`); a group-mean constraint's rows depend on the batch only through the total
weight of each atom, so their structure is cached by the atoms present (:func:`row_structure`)
and their statistics by the atoms' totals (:func:`batch_rows`). :func:`group_mean_set` assembles
them into a :class:`~skfair._constraint_set.ConstraintSet`; the math they encode is stated in
:mod:`skfair.constraints`.
"""

import functools
import itertools
import math
import numbers
import operator
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike

from . import _kernels
from ._constraint_set import host_set, row_tensor, segment_sum, statistics
from ._host import CPU, device_tensor, host_vector


class GroupMeanLayout:
    """What a constraint on group means tells the row builders, by its class attributes (the
    built-in constraints of :mod:`skfair.constraints` derive from it)."""

    #: whether a present group is compared with the reference mean of an absent one
    borrows_references = True

    #: how the groups of a cell are compared: every ordered pair (``"pairs"``: ``max - min <=
    #: epsilon``), each group on its own with two opposite rows (``"signs"``: ``|mean| <=
    #: epsilon``), every ordered pair by a ratio (``"ratios"``), or every ordered pair of the
    #: groups' expected errors, both labels in one cell (``"errors"``)
    layout = "pairs"
    #: the ratio of the ``"ratios"`` layout
    ratio = None


def group_mean_set(constraint, groups, *, epsilon, y_true=None, sample_weight=None,
                   reference_means=None):
    """The :class:`~skfair._constraint_set.ConstraintSet` of a group-mean ``constraint`` (a
    :class:`GroupMeanLayout`) for one batch, in factored form.

    ``reference_means`` (dict from ``(attribute, group, label)`` to a number) stands in for the
    mean of a group that is absent from the batch: a present group ``u`` is then compared with
    it, ``mean(y | u) - reference <= epsilon`` and the reverse, under the same row key as the
    in-batch comparison. The streaming algorithm passes the running means of the stream, so
    that a batch of a single row still moves toward fairness.
    """
    groups = as_group_matrix(groups)
    check_epsilon(epsilon)
    n, n_attributes = groups.shape
    if constraint.requires_y_true:
        y_true = check_y_true(y_true, n, binary=constraint.label_cells is not None)
    weight = check_weight(sample_weight, n, groups.device)
    codes = groups
    if constraint.label_cells is not None:
        codes = torch.cat([groups, y_true.detach().round().long()[:, None]], dim=1)
    # The rows are computed on the host (numpy, a compiled pass over the codes): they are
    # small, and the exact solver works there.
    atom, table, mass = atoms(codes.numpy(force=True))
    if weight is not None:
        mass = np.bincount(atom, weights=host_vector(weight), minlength=len(mass))
    references = tuple(reference_means or ()) if constraint.borrows_references else ()
    rows, h, h_tensor, keys, reference_rows = batch_rows(
        type(constraint), table, mass.tobytes(), n_attributes, references, float(epsilon),
        constraint.ratio)
    device = groups.device
    if reference_rows:
        h = h.copy()
        for r, reference, sign in reference_rows:
            h[r] += sign * float(reference_means[reference])
        h_tensor = torch.from_numpy(h)
    h_tensor = h_tensor if device == CPU else h_tensor.to(device)
    if constraint.requires_y_true and constraint.label_cells is None and keys:
        # h holds the group means of the targets: a tensor, so that gradients reach y_true
        target = y_true if weight is None else y_true * weight
        sums = segment_sum(target.to(torch.float64), device_tensor(atom, device), len(mass))
        h, h_tensor = None, h_tensor + row_tensor(rows, sums)
    return host_set(rows, atom, h, h_tensor, keys, device, weight, mass)


def as_group_matrix(groups: torch.Tensor | ArrayLike) -> torch.Tensor:
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


def code_range(codes):
    """``(min, max)`` of group codes, raising unless they are non-negative (one pass)."""
    if not codes.numel():
        return 0, -1
    low, high = (int(v) for v in torch.aminmax(codes))
    if low < 0:
        raise ValueError("groups must hold non-negative group codes.")
    return low, high


def check_epsilon(epsilon):
    if type(epsilon) is float and 0.0 <= epsilon < math.inf:
        return  # the common case, without the costlier abstract-class check below
    if (not isinstance(epsilon, numbers.Real) or isinstance(epsilon, bool) or not epsilon >= 0
            or epsilon == float("inf")):
        raise ValueError(f"epsilon must be a finite number >= 0; got {epsilon!r}.")


def check_weight(sample_weight, n, device):
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


def check_y_true(y_true, n, binary):
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
def row_structure(cls, table, positive, n_attributes, references=(), ratio=None):
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
    *`` that mean added to ``h``. ``keys`` name the rows (:class:`RowKeys`). ``positive``
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
    _check_pair_rows(cls, families)
    member = np.array(member, dtype=np.float64).reshape(len(member), len(table))
    plus, minus, family_size, family_start = _row_indices(families, generic)
    end = family_start[-1]
    reference_rows = tuple((end + r, row[3], row[4]) for r, row in enumerate(generic)
                           if row[3] is not None)
    keys = RowKeys(tuple(spec for _, spec in families), family_start,
                   tuple(row[2] for row in generic))
    for array in (member, plus, minus, family_size, family_start):
        array.flags.writeable = False  # cached and shared between batches
    return member, plus, minus, family_size, family_start, reference_rows, keys


def _check_pair_rows(cls, families):
    """Raise when the pair ``families`` (``(members, spec)`` each) make more than
    :data:`MAX_PAIR_ROWS` rows."""
    largest = max(families, key=lambda family: len(family[0]), default=None)
    n_pairs = sum(len(members) * (len(members) - 1) for members, _ in families)
    if n_pairs > MAX_PAIR_ROWS:
        a, label = largest[1][1], largest[1][2] if largest[1][0] == "pairs" else None
        raise ValueError(
            f"{cls.name} over {len(largest[0]):,} groups present together (attribute {a}"
            f"{'' if label is None else f', label {label}'}) needs {n_pairs:,} pair rows, more "
            f"than the {MAX_PAIR_ROWS:,} skfair builds for one batch (a number per pair); use "
            f"fewer or coarser groups, e.g. marginal instead of intersectional fairness.")


def _row_indices(families, generic):
    """``(plus, minus, family_size, family_start)`` (:class:`skfair._kernels.Rows`) of the pair
    ``families`` (every ordered pair of members) followed by the ``generic`` rows."""
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
    return plus, minus, family_size, family_start


#: the most pair rows a batch's constraint may have: each costs a few numbers (its groups, bound,
#: residual and multiplier), about 60 bytes
MAX_PAIR_ROWS = 20_000_000


class RowKeys(Sequence):
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

    __hash__ = None  # type: ignore[assignment]  # equal to a list, so unhashable like one

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
def batch_rows(cls, table, mass_key, n_attributes, references, epsilon, ratio=None):
    """The rows of a group-mean constraint for a batch whose atoms ``table`` have the total
    weights ``mass_key`` (the bytes of a float64 array): ``(rows, h, h as a CPU tensor, keys,
    reference_rows)`` (see :func:`row_structure`; ``rows`` a :class:`skfair._kernels.Rows`).

    Cached: the rows depend on the batch's composition only, and the batches of a training
    epoch keep every group's share (the estimators stratify them), so the same compositions
    come back. The arrays and tensors are shared between sets and never modified.
    """
    mass = np.frombuffer(mass_key)
    member, plus, minus, family_size, family_start, reference_rows, keys = row_structure(
        cls, table, (mass > 0).tobytes(), n_attributes, references, ratio)
    # row g of `member / group_mass`: the averaging functional of group g over the atoms
    # (times the ratio, for the scaled means of the "ratios" layout)
    stat = member / ((member != 0) @ mass)[:, None] if member.size else member
    rows = statistics(stat, plus, minus, family_size, family_start)
    h = np.full(plus.size, epsilon)
    if cls.layout == "errors":
        # error_g = positives_g + mean_g((1 - 2 y) p): the rows' bounds carry the shares of
        # positives, read from the atoms' labels (their last code)
        inside = (member != 0).astype(np.float64)
        label = np.array([row[-1] for row in table], dtype=np.float64)
        share = np.r_[(inside @ (mass * label)) / (inside @ mass), 0.0]  # "none": 0
        h = h + share[minus] - share[plus]
    return rows, h, torch.from_numpy(h), keys, reference_rows


def atoms(codes):
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
    return atom, code_table(int(radix), c), counts[:space]


@functools.lru_cache(maxsize=16)
def code_table(radix, n_columns):
    """Every combination of ``n_columns`` codes below ``radix``, in mixed-radix order."""
    return tuple(itertools.product(range(radix), repeat=n_columns))
