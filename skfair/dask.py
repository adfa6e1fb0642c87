"""Fair outputs over a Dask collection: one exact projection of the whole collection.

:func:`project` computes the same projection as :func:`skfair.layer.project` on the concatenated
data, ``y* = argmin ||y - z||^2 / 2  s.t.  G y <= h, lo <= y <= hi``, without ever bringing the
``n`` outputs to one machine: the rows ``G y <= h`` of a built-in group-mean constraint read the
outputs only through their sums over *atoms* (the samples that share every group code, and the
label where the constraint compares label cells), so

* the rows are built on the client from one small table, one row per atom present, weighted by
  the atom's total weight: the same ``coef``, ``h`` and row keys as the whole collection gives;
* the dual has one multiplier per row (``m`` of them); for multipliers ``lam >= 0`` every sample
  moves by its atom's shift, ``y_i(lam) = clip(z_i - w_i (coef^T lam)_{a_i}, lo, hi)``, and the
  dual function, its gradient ``coef @ S - h`` and a generalised Hessian ``-coef diag(M)
  coef^T`` need per atom only ``S_a = sum w_i y_i``, ``M_a = sum w_i^2 [y_i not clipped]`` and the
  total ``sum (y_i - z_i)^2 / 2``: one pass over the data per evaluation, a map over the
  partitions (numpy, on the workers, where the raw outputs are persisted) and a tree reduction
  of arrays of ``3 n_atoms`` numbers;
* the client maximises the dual over ``lam >= 0``: a projected, regularised semismooth Newton
  method with an Armijo search along the projected path (one pass for the full step, one more
  pass that tries a ladder of shorter steps at once when it is refused).

The guarantee is checked from the outputs, never taken from the solver: the pass at the final
multipliers computes the outputs exactly as the returned collection does (the same function of
the same persisted raw outputs and the same shifts), and its rows must hold to
:data:`skfair.layer.GUARANTEE_TOL` times the outputs' scale ``max(1, |y|, |h|)`` (the rule of
:class:`~skfair.FairnessLayer`) and the outputs lie within the bounds; otherwise the iteration
goes on, and :class:`RuntimeError` is raised, nothing returned, when it cannot get there.
Constraints that no outputs within the bounds can meet raise
:class:`~skfair.constraints.InfeasibleConstraintError`, decided before any iteration on the
atoms' totals (every total between ``lo`` and ``hi`` times an atom's weight is attainable).

The client holds ``O(m + n_atoms)`` numbers per pass (plus one length per partition); the raw
outputs stay on the workers, and the fair outputs are returned as a lazy collection aligned with
the input's partitions, computed from the persisted raw outputs when asked for.

:func:`predict_proba` and :func:`predict` do the same for a fitted
:class:`~skfair.FairNeuralClassifier` or :class:`~skfair.FairNeuralRegressor` over a
``dask.dataframe.DataFrame`` or a dask array: the network runs per partition on the workers,
then one projection of the whole collection with the estimator's constraint, epsilon and
bounds (``mode="global"``), or each partition is predicted on its own (``mode="partition"``).

Needs the ``dask`` extra (``pip install "skfair[dask]"``). The functions run on whatever
scheduler dask uses: a ``distributed.Client`` when one is active.
"""

import collections
import math
import numbers
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"skfair.dask needs dask: pip install 'skfair[dask]' ({exc})") from None

from .classifier import FairNeuralClassifier
from .constraints import (AffineConstraint, DemographicParity, DisparateImpact, EqualizedOdds,
                          EqualOpportunity, ErrorRateParity, FalsePositiveRateParity,
                          InfeasibleConstraintError, MeanResidual, intersect_groups)
from .layer import GUARANTEE_TOL, FairnessLayer
from .regressor import FairNeuralRegressor

if TYPE_CHECKING:  # for the annotations: dask.dataframe is imported where frames are handled
    import dask.dataframe as dd

__all__ = ["predict", "predict_proba", "project"]

#: the built-in constraints, whose rows depend on a batch only through its atoms' totals (and,
#: for ``mean_residual``, the atoms' weighted target sums)
BUILT_IN = (DemographicParity, DisparateImpact, EqualizedOdds, EqualOpportunity, ErrorRateParity,
            FalsePositiveRateParity, MeanResidual)
#: most passes over the data one projection may take
MAX_PASSES = 100
#: how far (relative to the outputs' scale) the next Newton step may still move an output when
#: the iteration stops (the guarantee, on the rows' values, is checked separately)
SOLVE_TOL = 1e-11
#: the least regularisation of the Newton model, relative to its diagonal were every sample free
MIN_REGULARISATION = 1e-10
#: rounding of a float64 sum, per square root of the number of summands
ROUNDING = 1e-15
#: sufficient increase of the Armijo search
ARMIJO = 1e-4
#: the shorter steps tried in one pass when the full Newton step is refused
LADDER = tuple(0.3 ** k for k in range(1, 11))
#: partial results combined per task of a tree reduction
FAN_IN = 8


def project(z: "da.Array | dd.Series", groups: "da.Array | dd.Series | dd.DataFrame",
            constraint: str | AffineConstraint = "demographic_parity", *, epsilon: float,
            bounds: tuple[float | None, float | None] | None = (0.0, 1.0),
            sample_weight: "da.Array | dd.Series | None" = None,
            y_true: "da.Array | dd.Series | None" = None, intersectional: bool = False,
            dual_init: Mapping[Hashable, float] | None = None,
            max_passes: int = MAX_PASSES) -> "tuple[da.Array | dd.Series, dict[str, Any]]":
    """Project the raw outputs of a whole Dask collection onto its fair set, exactly.

    The result is the projection :func:`skfair.layer.project` (and
    :class:`~skfair.FairnessLayer`) computes when given the concatenated data as one batch,
    ``argmin ||y - z||^2 / 2`` over the outputs whose group means meet the constraint on the
    *whole collection* and that lie within the bounds, with the same guarantee (checked from the
    outputs). The raw outputs are persisted on the workers; each pass over them is a map over
    the partitions and a tree reduction of ``3 n_atoms`` numbers; the client solves the
    ``m``-dimensional dual and never holds more than ``O(m + n_atoms)`` numbers (and the
    partitions' lengths).

    Parameters
    ----------
    z : dask.array.Array of shape (n,) or dask.dataframe.Series
        Raw outputs, finite.
    groups : dask.array.Array of shape (n,) or (n, n_attributes), dask Series or DataFrame
        Non-negative integer group codes, one column per protected attribute, partitioned like
        ``z`` (the same chunks, or the same number of partitions of the same lengths).
    constraint : str or AffineConstraint, default="demographic_parity"
        A built-in constraint (name or instance, see :mod:`skfair.constraints`); custom
        :class:`~skfair.constraints.AffineConstraint` subclasses, whose rows may read every
        sample, are not supported.
    epsilon : float
        Allowed unfairness.
    bounds : tuple of (float or None, float or None) or None, default=(0.0, 1.0)
        Box on the outputs; ``None`` for unbounded outputs.
    sample_weight : dask collection of shape (n,), optional
        Weights of the samples in the group means (finite, non-negative), partitioned like ``z``.
    y_true : dask collection of shape (n,), optional
        True targets, for the constraints that need them (binary labels for the label cells of
        ``equalized_odds`` and ``equal_opportunity``).
    intersectional : bool, default=False
        With several attributes, constrain every combination of groups.
    dual_init : dict, optional
        Multipliers to start from, by row key (``info["duals"]`` of an earlier projection); rows
        not in it start from zero.
    max_passes : int, default=100
        Most passes over the data (evaluations of the dual); :class:`RuntimeError` when the
        guarantee is not met within them.

    Returns
    -------
    y : dask.array.Array or dask.dataframe.Series
        The fair outputs, float64, lazy, with the partitions (and index) of ``z``: computed
        from the persisted raw outputs and the final shifts when asked for.
    info : dict
        ``n_passes`` (passes over the data by the solver; the scan that finds the atoms is one
        more), ``n_iter`` (Newton iterations), ``max_violation`` (``max(G y - h)`` of the
        returned outputs, from the final pass), ``tolerance`` (what it was checked against),
        ``duality_gap`` (``-lam . (G y - h)``: an upper bound on ``||y - y*||^2 / 2`` when ``y``
        is feasible), ``duals`` (the multiplier of every row by its key), ``n_rows``,
        ``n_atoms``, ``n_samples``.

    Raises
    ------
    InfeasibleConstraintError
        When no outputs within the bounds meet the rows.
    RuntimeError
        When the guarantee is not met within ``max_passes`` passes.
    ValueError
        For invalid inputs (not finite, misaligned partitions, negative codes or weights).

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from skfair.dask import project
    >>> z = da.from_array(np.array([0.9, 0.8, 0.3, 0.2]), chunks=2)
    >>> groups = da.from_array(np.array([0, 0, 1, 1]), chunks=2)
    >>> y, info = project(z, groups, epsilon=0.1)
    >>> values = y.compute()
    >>> round(float(values[:2].mean() - values[2:].mean()), 6)
    0.1
    """
    layer = FairnessLayer(constraint, epsilon=epsilon, bounds=bounds,
                          intersectional=intersectional)  # validates the three
    _check_passes(max_passes)
    kind = _check_supported(layer.constraint)
    _check_collection(z, "z")
    parts = {"z": _partitions(z, "z")}
    for name, value in (("groups", groups), ("sample_weight", sample_weight),
                        ("y_true", y_true)):
        if value is not None:
            _check_collection(value, name)
            parts[name] = _partitions(value, name, like=z)
            if len(parts[name]) != len(parts["z"]):
                raise ValueError(f"{name} must be partitioned like z: it has "
                                 f"{len(parts[name])} partitions, z has {len(parts['z'])}.")
    if groups is None:
        raise ValueError("groups must be a dask collection of group codes; got None.")
    if layer.constraint.requires_y_true and y_true is None:
        raise ValueError(f"y_true is required by the constraint {layer.constraint!r}; got None.")
    series = _is_frame(z)
    blocks = [dask.delayed(_block)(zp, gp, *(parts[k][i] if k in parts else None
                                             for k in ("sample_weight", "y_true")),
                                   kind, series, i)
              for i, (zp, gp) in enumerate(zip(parts["z"], parts["groups"]))]
    solution = _solve(blocks, layer, dual_init, max_passes)
    if series:
        y = _as_series(solution, z)
    else:
        y = _as_array(solution, None)
    return y, solution.info


def predict_proba(estimator: FairNeuralClassifier, X: "dd.DataFrame | da.Array", *,
                  mode: Literal["global", "partition"] = "global", return_info: bool = False,
                  max_passes: int = MAX_PASSES
                  ) -> da.Array | tuple[da.Array, dict[str, Any] | None]:
    """Fair probabilities of a fitted :class:`~skfair.FairNeuralClassifier` for a Dask
    collection.

    Parameters
    ----------
    estimator : FairNeuralClassifier
        Fitted.
    X : dask.dataframe.DataFrame or dask.array.Array of shape (n, n_features)
        The rows to score, as the estimator takes them (the same columns as in fit).
    mode : {"global", "partition"}, default="global"
        ``"global"``: the network runs per partition on the workers, then the outputs of the
        whole collection are projected at once (:func:`project` with the estimator's constraint,
        epsilon and bounds): the result equals ``estimator.predict_proba(X.compute())`` to
        rounding, and the constraint holds on the whole collection (and on nothing smaller).
        Use it when the guarantee is meant for the population scored (a nightly run, an audit):
        it costs a handful of passes over the persisted outputs and the workers' memory for
        them (about 20 bytes per row). ``"partition"``: every partition is predicted on its
        own by ``estimator.predict_proba``, each one fair by itself as a batch of the
        estimator (exactly, when it has at least ``b_tau`` rows), the union of them not: the
        cheap alternative (one pass, nothing kept), like dask-ml's ``ParallelPostFit``, right
        when each partition is the unit decisions are made on (a day, a branch), or when
        partitions are large and alike so that their gaps are what matters. Row-by-row
        predictions (``inference="individual"``, label-dependent constraints, no protected
        attributes) do not depend on the other rows: both modes then give the same result.
    return_info : bool, default=False
        Also return the projection's diagnostics (:func:`project`; None without a global
        projection).
    max_passes : int, default=100
        See :func:`project`.

    Returns
    -------
    proba : dask.array.Array of shape (n, 2)
        Probabilities of ``classes_[0]`` and ``classes_[1]``, lazy.
    info : dict or None
        Only with ``return_info``.
    """
    return _predict(estimator, X, "predict_proba", mode, return_info, max_passes)


def predict(estimator: FairNeuralClassifier | FairNeuralRegressor,
            X: "dd.DataFrame | da.Array", *, mode: Literal["global", "partition"] = "global",
            return_info: bool = False, max_passes: int = MAX_PASSES
            ) -> da.Array | tuple[da.Array, dict[str, Any] | None]:
    """Fair predictions of a fitted :class:`~skfair.FairNeuralClassifier` (labels: the fair
    probability above 0.5) or :class:`~skfair.FairNeuralRegressor` (values) for a Dask
    collection.

    ``mode`` is described in :func:`predict_proba`. A classifier with ``guarantee="labels"``
    decides labels under the constraint per batch: over a whole collection that is not
    implemented (``mode="global"`` raises :class:`NotImplementedError`; ``mode="partition"``
    decides every partition as a batch).

    Returns
    -------
    y : dask.array.Array of shape (n,)
        Lazy.
    info : dict or None
        Only with ``return_info``.
    """
    return _predict(estimator, X, "predict", mode, return_info, max_passes)


# ---------------------------------------------------------------------------------------------
# Inputs
def _check_supported(constraint):
    """What the partitions must provide for ``constraint``: ``"labels"`` (binary labels in the
    atoms), ``"targets"`` (the atoms' target sums) or None."""
    if not isinstance(constraint, BUILT_IN):
        raise TypeError(
            f"constraint must be one of the built-in group-mean constraints over a Dask "
            f"collection (their rows depend on the samples only through the groups' totals); "
            f"got {constraint!r}.")
    if constraint.label_cells is not None:
        return "labels"
    return "targets" if constraint.requires_y_true else None


def _is_frame(x):
    import dask.dataframe as dd

    return isinstance(x, (dd.DataFrame, dd.Series))


def _check_collection(x, name):
    if not (isinstance(x, da.Array) or _is_frame(x)):
        raise TypeError(f"{name} must be a dask array, Series or DataFrame; got "
                        f"{type(x).__name__}.")


def _partitions(x, name, like=None):
    """The partitions of a dask collection as a list of Delayed; arrays chunked along rows
    only (like ``like``'s rows when ``like`` is an array with known chunks)."""
    if _is_frame(x):
        return list(x.to_delayed())
    if x.ndim not in (1, 2):
        raise ValueError(f"{name} must have 1 or 2 dimensions; got shape {x.shape}.")
    if x.ndim == 2:
        x = x.rechunk({1: -1})
    if isinstance(like, da.Array) and not any(math.isnan(c) for c in like.chunks[0]) \
            and x.chunks[0] != like.chunks[0]:
        if x.shape[0] != like.shape[0]:
            raise ValueError(f"{name} must have one row per output: {x.shape[0]} rows for "
                             f"{like.shape[0]} outputs.")
        x = x.rechunk({0: like.chunks[0]})
    blocks = x.to_delayed()
    return list(blocks[:, 0] if x.ndim == 2 else blocks)


def _values_of(part):
    """A partition (numpy array, pandas object) as a numpy array."""
    return part.to_numpy() if hasattr(part, "to_numpy") else np.asarray(part)


def _block(z, groups, weight, y_true, kind, series, position):
    """One partition, as kept on the workers: float64 raw outputs, the partition's atoms (its
    distinct rows of codes, label last when the constraint compares label cells) and the atom
    of every sample, the weights, and the atoms' totals for the scan."""
    index = z.index if series else None
    z = np.ascontiguousarray(_values_of(z), dtype=np.float64)
    n = z.shape[0]
    if z.ndim != 1:
        raise ValueError(f"z must have one value per row; partition {position} has shape "
                         f"{z.shape}.")
    codes = _values_of(groups)
    codes = codes[:, None] if codes.ndim == 1 else codes
    if codes.shape[0] != n:
        raise ValueError(f"groups must be partitioned like z: partition {position} has "
                         f"{codes.shape[0]} rows of groups for {n} outputs.")
    if codes.size and codes.dtype.kind not in "iu":
        raise ValueError(f"groups must hold integer group codes; got dtype {codes.dtype}.")
    codes = codes.astype(np.int64)
    if codes.size and codes.min() < 0:
        raise ValueError("groups must hold non-negative group codes.")
    if not np.isfinite(z).all():
        raise ValueError(f"z must be finite; partition {position} contains NaN or inf.")
    if weight is not None:
        weight = np.ascontiguousarray(_values_of(weight), dtype=np.float64).reshape(-1)
        if weight.shape != (n,):
            raise ValueError(f"sample_weight must be partitioned like z: partition {position} "
                             f"has {weight.shape[0]} weights for {n} outputs.")
        if not (np.isfinite(weight) & (weight >= 0)).all():
            raise ValueError("sample_weight must be finite and non-negative; it holds a "
                             "negative value, NaN or inf.")
    target = None
    if kind is not None:
        y_true = np.asarray(_values_of(y_true), dtype=np.float64).reshape(-1)
        if y_true.shape != (n,):
            raise ValueError(f"y_true must be partitioned like z: partition {position} has "
                             f"{y_true.shape[0]} targets for {n} outputs.")
        if not np.isfinite(y_true).all():
            raise ValueError("y_true must be finite; it contains NaN or inf.")
        if kind == "labels":
            if not ((y_true == 0) | (y_true == 1)).all():
                raise ValueError("y_true must hold binary labels 0/1 for this constraint.")
            codes = np.column_stack([codes, y_true.astype(np.int64)])
        else:
            target = y_true if weight is None else y_true * weight
    table, inverse = _distinct_rows(codes)
    size = table.shape[0]
    mass = np.bincount(inverse, weights=weight, minlength=size).astype(np.float64)
    square = mass if weight is None else np.bincount(inverse, weights=weight * weight,
                                                     minlength=size)
    reach = np.ones(size)
    if weight is not None:
        reach = np.zeros(size)
        np.maximum.at(reach, inverse, weight)
    return {"z": z, "inverse": inverse, "table": table, "weight": weight, "index": index,
            "n": n, "position": position, "mass": mass, "square": square, "reach": reach,
            "target": None if target is None else np.bincount(inverse, weights=target,
                                                              minlength=size)}


def _distinct_rows(codes):
    """``(table, inverse)``: the distinct rows of ``codes`` (n, c) in lexicographic order and
    the index of every row's one, in the smallest unsigned dtype that holds it."""
    n, c = codes.shape
    if n == 0:
        return np.zeros((0, c), dtype=np.int64), np.zeros(0, dtype=np.uint8)
    high = codes.max(axis=0) + 1
    space = int(np.prod(high.astype(object)))
    if space <= max(1 << 16, n):  # a mixed-radix code and its histogram: no sort
        code = np.zeros(n, dtype=np.int64)
        for j in range(c):
            code = code * int(high[j]) + codes[:, j]
        present = np.flatnonzero(np.bincount(code, minlength=space))
        lookup = np.zeros(space, dtype=np.int64)
        lookup[present] = np.arange(present.size)
        inverse = lookup[code]
        table = np.stack(np.unravel_index(present, tuple(int(v) for v in high)), axis=1)
    else:
        table, inverse = np.unique(codes, axis=0, return_inverse=True)
        inverse = inverse.reshape(n)
    dtype = np.min_scalar_type(max(table.shape[0] - 1, 0))
    return table.astype(np.int64).reshape(-1, c), inverse.astype(dtype)


# ---------------------------------------------------------------------------------------------
# The passes (run on the workers)
def _compute(*graphs):
    """Compute small results on the current scheduler (every transfer to the client goes
    through here: what it returns has ``O(m + n_atoms)`` numbers, or one per partition)."""
    return dask.compute(*graphs)


def _tree(parts, combine):
    """A tree reduction of Delayed ``parts`` by ``combine(*several)``."""
    parts = list(parts)
    if not parts:
        return dask.delayed(combine)()
    while len(parts) > 1:
        parts = [dask.delayed(combine)(*parts[i:i + FAN_IN])
                 for i in range(0, len(parts), FAN_IN)]
    return parts[0]


def _summary(block):
    """The scan of one block: its atoms' totals by code row, and its length by position."""
    rows = {}
    for r, key in enumerate(map(tuple, block["table"].tolist())):
        rows[key] = (block["mass"][r], block["square"][r],
                     0.0 if block["target"] is None else block["target"][r], block["reach"][r])
    return rows, {block["position"]: block["n"]}


def _merge_summaries(*parts):
    rows, lengths = {}, {}
    for part_rows, part_lengths in parts:
        for key, values in part_rows.items():
            old = rows.get(key)
            rows[key] = values if old is None else (*(a + b for a, b in zip(old[:3], values)),
                                                    max(old[3], values[3]))
        lengths.update(part_lengths)
    return rows, lengths


def _global_rows(block, table):
    """The row of ``table`` (the collection's atoms) of every atom of ``block``."""
    index = {key: r for r, key in enumerate(map(tuple, table.tolist()))}
    return np.array([index[key] for key in map(tuple, block["table"].tolist())],
                    dtype=np.int64)


def _fair_values(block, table, shift, low, high):
    """``(y, u)``: the outputs of a block for per-atom ``shift`` (one value per row of
    ``table``), ``y = clip(u, low, high)`` with ``u = z - w * shift[atom]``. The one function
    that makes outputs: the passes check what the returned collection computes."""
    local = shift[_global_rows(block, table)] if block["n"] else np.zeros(0)
    moved = local[block["inverse"]]
    if block["weight"] is not None:
        moved = moved * block["weight"]
    u = block["z"] - moved
    return np.clip(u, low, high), u


def _pass(block, table, shifts, low, high):
    """One pass over a block for each row of ``shifts`` (k, n_atoms): per candidate, the atoms'
    ``S = sum w y``, ``M = sum w^2 [y free]`` (rows 0 and 1 of ``sums``), and ``(sum (y - z)^2 /
    2, min y, max y)``."""
    k, size = shifts.shape
    sums = np.zeros((k, 2, size))
    extra = np.tile([0.0, math.inf, -math.inf], (k, 1))
    if not block["n"]:
        return sums, extra
    rows = _global_rows(block, table)
    weight, inverse, local_size = block["weight"], block["inverse"], block["table"].shape[0]
    square = None if weight is None else weight * weight
    for c in range(k):
        y, u = _fair_values(block, table, shifts[c], low, high)
        free = ((u > low) & (u < high)).astype(np.float64)
        sums[c, 0, rows] = np.bincount(inverse, weights=y if weight is None else y * weight,
                                       minlength=local_size)
        sums[c, 1, rows] = np.bincount(inverse, weights=free if square is None else
                                       free * square, minlength=local_size)
        gap = y - block["z"]
        extra[c] = (0.5 * np.dot(gap, gap), y.min(), y.max())
    return sums, extra


def _merge_passes(*parts):
    sums = sum(p[0] for p in parts)
    extra = np.column_stack([sum(p[1][:, 0] for p in parts),
                             np.min([p[1][:, 1] for p in parts], axis=0),
                             np.max([p[1][:, 2] for p in parts], axis=0)])
    return sums, extra


# ---------------------------------------------------------------------------------------------
# The client: rows from the atoms' table, then the dual iteration
class _Solution:
    """Persisted blocks, the atoms' table, the final shifts and bounds, the lengths and info."""

    def __init__(self, blocks, table, shift, low, high, lengths, info):
        self.blocks, self.table, self.shift = blocks, table, shift
        self.low, self.high, self.lengths, self.info = low, high, lengths, info

    def parts(self, make=None):
        """One Delayed per block: the fair outputs (``make(values)`` when given)."""
        return [dask.delayed(_output_part)(b, self.table, self.shift, self.low, self.high,
                                           make) for b in self.blocks]


def _output_part(block, table, shift, low, high, make):
    y = _fair_values(block, table, shift, low, high)[0]
    return y if make is None else make(y)


def _as_array(solution, make, columns=None):
    """The blocks' outputs as one dask array, one chunk per partition (empty ones kept)."""
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    parts = solution.parts(make)
    dtype = np.float64 if make is None else make.dtype
    name = "skfair-fair-outputs-" + tokenize(*(p.key for p in parts), columns)
    tail = () if columns is None else (0,)
    graph = HighLevelGraph.from_collections(
        name, {(name, i, *tail): p.key for i, p in enumerate(parts)}, dependencies=parts)
    chunks = (tuple(solution.lengths),) + (() if columns is None else ((columns,),))
    return da.Array(graph, name, chunks, dtype=dtype)


def _as_series(solution, z):
    import dask.dataframe as dd
    import pandas as pd

    parts = [dask.delayed(_series_part)(p, b, z.name)
             for p, b in zip(solution.parts(), solution.blocks)]
    meta = pd.Series([], dtype=np.float64, name=z.name, index=z._meta.index)
    return dd.from_delayed(parts, meta=meta, divisions=z.divisions, verify_meta=False)


def _series_part(values, block, name):
    import pandas as pd

    return pd.Series(values, index=block["index"], name=name)


def _solve(blocks, layer, dual_init, max_passes):
    """Persist ``blocks``, scan them, build the rows and maximise the dual: a
    :class:`_Solution` whose outputs met the guarantee."""
    (blocks,) = dask.persist(blocks)
    rows, lengths = _compute(_tree([dask.delayed(_summary)(b) for b in blocks],
                                   _merge_summaries))[0]
    lengths = [lengths[i] for i in range(len(blocks))]
    keys = sorted(rows)
    width = len(keys[0]) if keys else 0
    table = np.array(keys, dtype=np.int64).reshape(len(keys), width)
    totals = np.array([rows[k] for k in keys], dtype=np.float64).reshape(len(keys), 4)
    mass, square, target, reach = totals.T
    coef, h, row_keys = _rows(layer, table, mass, target)
    low, high = _open(layer.bounds)
    n = int(sum(lengths))
    info = {"n_rows": len(row_keys), "n_atoms": len(keys), "n_samples": n}
    if n:
        _check_feasible(coef, h, row_keys, mass, low, high, layer.bounds)
    lam = np.zeros(len(row_keys))
    if dual_init:
        lam = np.maximum([float(dual_init.get(k, 0.0)) for k in row_keys], 0.0)
    problem = _Problem(table, coef, h, square, reach, low, high, n)
    shift, found = _dual_ascent(blocks, problem, lam, max_passes)
    found["duals"] = dict(zip(row_keys, found.pop("lam").tolist()))
    return _Solution(blocks, table, shift, low, high, lengths, {**found, **info})


def _rows(layer, table, mass, target):
    """``(coef, h, keys)`` of the whole collection, from its atoms' table: the rows the
    constraint builds for a batch of one sample per atom weighted by the atom's total weight,
    whose group totals are the collection's (``coef`` has one column per row of ``table``)."""
    constraint = layer.constraint
    if not table.shape[0]:
        return np.zeros((0, 0)), np.zeros(0), []
    label = constraint.label_cells is not None
    groups = torch.from_numpy(table[:, :-1] if label else table)
    if layer.intersectional:
        groups = intersect_groups(groups)  # codes of the collection's largest code per column
    y_true = None
    if label:
        y_true = torch.from_numpy(table[:, -1].astype(np.float64))
    elif constraint.requires_y_true:
        y_true = torch.from_numpy(np.divide(target, mass, out=np.zeros_like(target),
                                            where=mass > 0))
    cs = constraint.build(groups, epsilon=layer.epsilon, y_true=y_true,
                          sample_weight=torch.from_numpy(mass))
    coef = cs.coef.detach().cpu().numpy().astype(np.float64)[:, cs.atom.cpu().numpy()]
    return coef, cs.h.detach().cpu().numpy().astype(np.float64), list(cs.keys)


def _open(bounds):
    lo, hi = bounds if bounds is not None else (None, None)
    return -math.inf if lo is None else float(lo), math.inf if hi is None else float(hi)


def _check_feasible(coef, h, keys, mass, low, high, bounds):
    """Raise :class:`InfeasibleConstraintError` when no outputs within the bounds meet the rows:
    decided on the atoms' totals ``T_a`` (each attainable from ``low`` to ``high`` times the
    atom's weight), one row at a time, then all together (a linear program)."""
    if not h.size or (math.isinf(low) and math.isinf(high)):
        return
    with np.errstate(invalid="ignore"):
        bottom, top = np.where(mass > 0, low * mass, 0.0), np.where(mass > 0, high * mass, 0.0)
        smallest = np.where(coef > 0, coef * bottom, np.where(coef < 0, coef * top, 0.0)).sum(1)
    scale = max(1.0, float(np.abs(h).max()), abs(low) if math.isfinite(low) else 0.0,
                abs(high) if math.isfinite(high) else 0.0)
    bad = np.flatnonzero(smallest > h + 1e-12 * scale)
    if bad.size:
        r = bad[0]
        raise InfeasibleConstraintError(
            f"The fairness constraint cannot be met within bounds {bounds}: row {keys[r]!r} "
            f"needs a value <= {h[r]:.6g} but its smallest attainable value is "
            f"{smallest[r]:.6g}; widen the bounds or increase epsilon.", key=keys[r])
    from scipy.optimize import linprog

    m, size = coef.shape
    box = [(None if math.isinf(a) else a, None if math.isinf(b) else b)
           for a, b in zip(bottom, top)]
    found = linprog(np.r_[np.zeros(size), np.ones(m)], A_ub=np.hstack([coef, -np.eye(m)]),
                    b_ub=h, bounds=box + [(0.0, None)] * m, method="highs")
    if found.status == 0 and found.fun > 1e-7 * scale:
        weights = np.abs(found.ineqlin.marginals)
        conflicting = [keys[r] for r in np.flatnonzero(weights > 1e-9 * weights.max())]
        shown = ", ".join(map(repr, conflicting[:10])) + (", ..." if len(conflicting) > 10
                                                          else "")
        raise InfeasibleConstraintError(
            f"The fairness constraint cannot be met within bounds {bounds}: its rows {shown} "
            f"contradict each other (each one alone can hold); widen the bounds, increase "
            f"epsilon or drop one of them.", key=conflicting[0])


class _Evaluator:
    """Passes over the persisted blocks: the dual's value, gradient and Hessian data at given
    multipliers (several candidates per pass)."""

    def __init__(self, blocks, table, coef, h, low, high, max_passes):
        self.blocks, self.table, self.coef, self.h = blocks, table, coef, h
        self.low, self.high, self.max_passes, self.n_passes = low, high, max_passes, 0

    def __call__(self, lams):
        """A list of :class:`_Point`, one per row of ``lams`` (k, m)."""
        if self.n_passes >= self.max_passes:
            raise _OutOfPasses
        shifts = np.ascontiguousarray(np.atleast_2d(lams) @ self.coef)
        sums, extra = _compute(_tree([dask.delayed(_pass)(b, self.table, shifts, self.low,
                                                          self.high) for b in self.blocks],
                                     _merge_passes))[0]
        self.n_passes += 1
        return [_Point(lam, shift, s[0], s[1], e, self.coef, self.h)
                for lam, shift, s, e in zip(np.atleast_2d(lams), shifts, sums, extra)]


class _OutOfPasses(Exception):
    pass


class _Point:
    """The dual at multipliers ``lam``: outputs' atom sums ``S``, free weights ``M``, the
    value ``D = Q + lam . g`` and gradient ``g = coef S - h``, the outputs' range."""

    def __init__(self, lam, shift, S, M, extra, coef, h):
        self.lam, self.shift, self.S, self.M = lam, shift, S, M
        self.q, self.low, self.high = extra
        self.g = coef @ S - h
        self.value = self.q + float(lam @ self.g)
        self.scale = max(1.0, abs(self.low) if math.isfinite(self.low) else 0.0,
                         abs(self.high) if math.isfinite(self.high) else 0.0,
                         float(np.abs(h).max()) if h.size else 0.0)

    def projected(self):
        """The projected gradient: ``g`` where ``lam > 0``, ``max(g, 0)`` at zero."""
        return np.where(self.lam > 0, self.g, np.maximum(self.g, 0.0))


#: the client's picture of the collection's problem: the atoms' ``table``, the rows ``coef``
#: (one column per atom) and ``h``, per atom the sum of the squared weights (``square``) and
#: the largest weight (``reach``: what a unit shift moves its outputs by), the bounds as
#: floats (``low``, ``high``) and the number of samples ``n``
_Problem = collections.namedtuple("_Problem", "table coef h square reach low high n")


def _dual_ascent(blocks, problem, lam, max_passes):
    """Maximise the dual over ``lam >= 0`` until the outputs meet the guarantee and the next
    Newton step would move no output by more than ``SOLVE_TOL`` times their scale; returns
    ``(shift, info)``."""
    table, coef, h, square, reach, low, high, n = problem
    evaluate = _Evaluator(blocks, table, coef, h, low, high, max_passes)
    free_curvature = np.einsum("ra,a,ra->r", coef, square, coef)  # diag(H) were all free
    noise = ROUNDING * math.sqrt(max(n, 1))
    n_iter, stalled, converged = 0, False, True
    try:
        point = evaluate(lam)[0]
        while True:
            tol = GUARANTEE_TOL * point.scale
            feasible = (point.g.max(initial=-math.inf) <= tol and low <= point.low
                        and point.high <= high)
            step = _newton_step(point, coef, free_curvature)
            move = 0.0 if step is None else float(np.abs(step @ coef * reach).max(initial=0.0))
            if feasible and move <= (SOLVE_TOL + noise) * point.scale:
                break
            if feasible and stalled:
                converged = False  # at the rounding level of the dual: the guarantee holds
                break
            point, stalled = _line_search(evaluate, point, step, noise)
            n_iter += 1
    except _OutOfPasses:
        raise RuntimeError(
            f"The fairness projection over the collection did not meet the guarantee within "
            f"{max_passes} passes over the data (max violation {point.g.max(initial=0):.3g}, "
            f"tolerance {GUARANTEE_TOL * point.scale:.3g}); raise max_passes.") from None
    violation = float(point.g.max(initial=-math.inf))
    return point.shift, {"n_passes": evaluate.n_passes, "n_iter": n_iter,
                         "converged": converged, "max_violation": violation, "tolerance": tol,
                         "duality_gap": float(-point.lam @ point.g), "lam": point.lam}


def _newton_step(point, coef, free_curvature):
    """The regularised Newton step at ``point`` (None when the projected gradient is zero):
    ``x - lam`` for the maximiser ``x >= 0`` of the dual's model ``g.(x - lam) - (x - lam)^T
    (H + mu D) (x - lam) / 2`` with ``H = coef diag(M) coef^T``, ``D`` its diagonal were every
    sample free and ``mu`` the projected gradient's size relative to the outputs' scale (capped
    at 1). The model's non-negativity is solved exactly (a non-negative least squares problem
    in the ``m`` multipliers), so rows that depend on each other (every ordered pair of
    groups) move together; near the solution ``mu`` vanishes and the step is Newton's, exact
    once the clipped samples are known; where every sample of the rows' atoms is clipped
    (``H`` = 0) it moves the outputs by about their scale."""
    from scipy.linalg import cho_factor, solve_triangular
    from scipy.optimize import nnls

    lam, g = point.lam, point.g
    size = np.abs(point.projected()).max(initial=0.0)
    if not size > 0:
        return None
    mu = min(1.0, max(size / point.scale, MIN_REGULARISATION))
    diagonal = np.maximum(free_curvature, free_curvature.max(initial=0.0) * 1e-12)
    model = (coef * point.M) @ coef.T + mu * np.diag(diagonal)
    model = (model + model.T) / 2
    linear = g + model @ lam
    try:
        upper, _ = cho_factor(model, lower=False)
        upper = np.triu(upper)
        x = nnls(upper, solve_triangular(upper, linear, trans="T"), maxiter=50 * lam.size)[0]
    except (np.linalg.LinAlgError, RuntimeError, ValueError):
        x = np.maximum(lam + g / (mu * diagonal), 0.0)  # a scaled gradient step
    return x - lam


def _line_search(evaluate, point, step, noise):
    """The next point along the segment ``lam + t step`` (``t`` in (0, 1], within ``lam >= 0``
    since ``lam + step`` is): the full step when it passes the Armijo test (one pass), else
    the longest of :data:`LADDER` that does (one more pass for all of them). Returns ``(point,
    stalled)``; stalled (and ``point`` unchanged) when no step increases the dual beyond its
    rounding nor, within it, decreases the projected gradient."""
    slope = float(point.g @ step)

    def accepted(new, t):
        slack = noise * (abs(point.q) + abs(new.q) + abs(point.value) + abs(new.value))
        gain = new.value - point.value
        if gain >= ARMIJO * t * slope and gain > 0:
            return True
        # at the rounding level of the dual's value: judge by the projected gradient
        return gain >= -slack and (np.abs(new.projected()).max(initial=0.0)
                                   < np.abs(point.projected()).max(initial=0.0))

    if step is None:
        return point, True
    full = evaluate(np.maximum(point.lam + step, 0.0))[0]
    if accepted(full, 1.0):
        return full, False
    trials = evaluate(np.array([np.maximum(point.lam + t * step, 0.0) for t in LADDER]))
    for trial, t in zip(trials, LADDER):
        if accepted(trial, t):
            return trial, False
    return point, True


# ---------------------------------------------------------------------------------------------
# Estimators
def _predict(estimator, X, method, mode, return_info, max_passes):
    from sklearn.utils.validation import check_is_fitted

    if mode not in ("global", "partition"):
        raise ValueError(f"mode must be 'global' or 'partition'; got {mode!r}.")
    _check_passes(max_passes)
    if method == "predict_proba" and not hasattr(estimator, "predict_proba"):
        raise TypeError(f"predict_proba needs a classifier; got {type(estimator).__name__}.")
    check_is_fitted(estimator)
    _check_collection(X, "X")
    if isinstance(X, da.Array):
        if X.ndim != 2:
            raise ValueError(f"X must have shape (n, n_features); got {X.shape}.")
        X = X.rechunk({1: -1})
        parts = list(X.to_delayed()[:, 0])
    else:
        parts = list(X.to_delayed())
    columns = 2 if method == "predict_proba" else None
    if mode == "partition" or not _projects(estimator):
        out = [dask.delayed(_predict_part)(estimator, p, method) for p in parts]
        arrays = [da.from_delayed(o, shape=(math.nan,) if columns is None else (math.nan, 2),
                                  dtype=np.float64 if columns else _label_dtype(estimator))
                  for o in out]
        y = da.concatenate(arrays) if arrays else da.zeros((0,) if columns is None
                                                           else (0, 2), chunks=1)
        return (y, None) if return_info else y
    decides = getattr(estimator, "_decides", None)
    if method == "predict" and decides is not None and decides(True):
        raise NotImplementedError(
            "predict over a whole collection with guarantee='labels' (fair decisions of every "
            "row at once) is not implemented: use mode='partition' (every partition decided "
            "as a batch), or the fair probabilities of predict_proba.")
    constraint = estimator.constraint_
    layer = FairnessLayer(constraint, epsilon=float(estimator.epsilon),
                          bounds=estimator.bounds_)
    _check_supported(constraint)
    blocks = [dask.delayed(_estimator_block)(estimator, p, i) for i, p in enumerate(parts)]
    solution = _solve_estimator(blocks, parts, layer, estimator, max_passes)
    make = _Maker(estimator, method)
    y = _as_array(solution, make, columns)
    return (y, solution.info) if return_info else y


def _projects(estimator):
    """Whether the estimator's predictions of a batch depend on the batch as a whole (an exact
    projection with a label-free constraint); row-by-row ones do not."""
    return (estimator.protected_attributes is not None and estimator._streams_outputs()
            and estimator.inference != "individual")


def _label_dtype(estimator):
    classes = getattr(estimator, "classes_", None)
    return np.float64 if classes is None else classes.dtype


def _predict_part(estimator, X, method):
    return getattr(estimator, method)(X)


def _estimator_block(estimator, X, position):
    """A block of the estimator's raw outputs (before the layer) and group codes."""
    out, groups = estimator._raw_outputs(X)
    codes = groups.cpu().numpy()
    return _block(out.cpu().numpy(), codes, None, None, None, False, position)


def _solve_estimator(blocks, parts, layer, estimator, max_passes):
    """:func:`_solve`, except for a collection of fewer than ``b_tau`` rows (the partitions
    ``parts`` of X), which the estimator predicts as one batch, as ``estimator.predict_proba``
    does (in one task: the rows are fewer than ``b_tau``)."""
    (blocks,) = dask.persist(blocks)
    lengths = list(_compute([dask.delayed(_length)(b) for b in blocks])[0])
    if sum(lengths) >= estimator.b_tau:
        return _solve(blocks, layer, None, max_passes)
    info = {"n_rows": None, "n_atoms": None, "n_samples": int(sum(lengths)), "n_passes": 0,
            "note": f"fewer than b_tau={estimator.b_tau} rows: predicted as one batch of the "
                    f"estimator"}
    return _SmallSolution(parts, estimator, lengths, info)


class _SmallSolution:
    """The outputs of a collection shorter than ``b_tau``: the estimator's own for the
    concatenated partitions of X, split back into the partitions."""

    def __init__(self, parts, estimator, lengths, info):
        self.X, self.estimator, self.lengths, self.info = parts, estimator, lengths, info

    def parts(self, make=None):
        whole = dask.delayed(_small_batch)(self.estimator, self.X)
        offsets = np.r_[0, np.cumsum(self.lengths)].tolist()
        return [dask.delayed(_slice)(whole, a, b, make)
                for a, b in zip(offsets[:-1], offsets[1:])]


def _length(block):
    return block["n"]


def _small_batch(estimator, parts):
    """The estimator's fair values of the concatenated partitions (the network sees them as
    one batch, as in ``estimator.predict_proba(X)``)."""
    import pandas as pd

    X = pd.concat(parts) if isinstance(parts[0], (pd.DataFrame, pd.Series)) \
        else np.concatenate(parts)
    return estimator._predict_values(X)


def _slice(values, start, stop, make):
    y = values[start:stop]
    return y if make is None else make(y)


class _Maker:
    """The estimator's output of a block from its fair values."""

    def __init__(self, estimator, method):
        self.estimator = estimator
        self.classes = getattr(estimator, "classes_", None)
        self.method = method
        self.dtype = np.float64 if method == "predict_proba" or self.classes is None \
            else self.classes.dtype

    def __call__(self, values):
        if self.classes is None:
            return values
        p = self.estimator._probabilities(values)  # (the fair values may be logits)
        if self.method == "predict_proba":
            return np.column_stack([1 - p, p])
        return self.classes[(p > 0.5).astype(int)]


def _check_passes(max_passes):
    if not isinstance(max_passes, numbers.Integral) or isinstance(max_passes, bool) \
            or max_passes < 1:
        raise ValueError(f"max_passes must be a positive integer; got {max_passes!r}.")
