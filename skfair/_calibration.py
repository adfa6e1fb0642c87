r"""Row-by-row inference: fixed per-cell offsets (and decision thresholds) from one projection.

The exact projection of an unweighted batch moves every output of a *cell* (a combination of
protected groups, the atoms of :mod:`skfair.constraints`) by the same shift and clips it:
``y_i = clip(p_i - s_c, lo, hi)`` (the shift is ``(G^T lam)_c``, see :mod:`skfair._exact`). A
calibration batch's shifts, read back from its outputs, are *offsets* that any later row can
take on its own: its score then depends on its cell and its raw output only, not on the rows
beside it. On the calibration batch the offset outputs are its exact projection, so they meet
the constraint there (to the projection's tolerance). Labels likewise: the fair labels of the
calibration batch (:func:`skfair.decisions.fair_labels`) select the top scores of every cell,
so a threshold per cell between its last selected and first unselected score reproduces them
(exactly, unless two of the cell's scores tie at that place).

On new rows there is no per-batch guarantee; what holds is a statement about the population
the calibration rows were drawn from (independent draws, the same distribution as the new
rows). For a group ``g`` of ``n_g`` calibration rows spread over ``m_g`` cells, the share of
``g`` that lies in cell ``c`` with score above ``t`` is, by the Dvoretzky-Kiefer-Wolfowitz
inequality (Massart's constant) applied to the score set to ``-inf`` outside ``c``, within
``sqrt(ln(2 / delta') / (2 n_g))`` of its calibration value for *every* ``t`` at once, with
probability at least ``1 - delta'``. A group's selection rate under per-cell thresholds is the
sum of those shares over its cells, and its mean score ``lo + integral_lo^hi share(y > t) dt``
under per-cell offsets; so with a union bound over the ``M = sum_g m_g`` (group, cell) pairs
(``delta' = delta / M``), with probability at least ``1 - delta``, every group's population
rate (or mean score) is within ``d_g = w m_g sqrt(ln(2 M / delta) / (2 n_g))`` of its
calibration value, ``w`` being 1 for rates and ``hi - lo`` for scores. The population gap of
any pair ``(u, v)`` is then at most ``epsilon + d_u + d_v`` (plus the calibration gap's
rounding): :func:`gap_bound`. A new batch of finite size adds its own sampling error to that.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._bounds import Bounds
from ._host import host_vector
from .constraints import constraint_gap
from .layer import project


@dataclass(frozen=True)
class Calibration:
    """Offsets (and thresholds) of every cell met in a calibration batch.

    ``cells`` (n_cells, n_columns) are the cells' group codes (the constraint's columns: the
    attributes, or their intersection), ``offsets`` the shift of each cell's raw outputs,
    ``thresholds`` the decision threshold of each cell's offset scores (a label is 1 above it;
    None when labels are not calibrated), ``sizes`` the calibration rows per cell; ``gap`` and
    ``label_gap`` the constraint's gap of the offset outputs and of the thresholded labels on
    the calibration batch."""

    cells: np.ndarray
    offsets: np.ndarray
    thresholds: np.ndarray
    sizes: np.ndarray
    gap: float
    label_gap: float


def calibrate(out, groups, constraint, epsilon, bounds, solver, labels=None):
    """The :class:`Calibration` of one batch: raw outputs ``out`` (float64 tensor), constraint
    groups ``groups`` (int tensor (n, n_columns)). ``labels``, when given, is a function of the
    offset scores (numpy) and the group codes returning the batch's fair 0/1 labels, from which
    the thresholds are set."""
    codes = groups.cpu().numpy()
    cells, cell = np.unique(codes, axis=0, return_inverse=True)
    cell = cell.reshape(-1)
    cs = constraint.build(groups, epsilon=epsilon)
    y, _ = project(out, cs, bounds, solver)
    lo, hi = Bounds.of(bounds).box
    p = host_vector(out)
    offsets = _offsets(p, host_vector(y.to(torch.float64)), cell, len(cells), lo, hi)
    fair = np.clip(p - offsets[cell], lo, hi)
    gap = constraint_gap(constraint, torch.from_numpy(fair), groups)
    thresholds = label_gap = None
    if labels is not None:
        chosen = np.asarray(labels(fair, codes))
        thresholds = _thresholds(fair, cell, chosen, len(cells))
        decided = (fair > thresholds[cell]).astype(np.float64)
        label_gap = constraint_gap(constraint, torch.from_numpy(decided), groups)
    return Calibration(cells, offsets, thresholds, np.bincount(cell, minlength=len(cells)),
                       float(gap), label_gap if label_gap is None else float(label_gap))


def cell_index(calibration, groups, describe):
    """The calibration cell of every row of ``groups`` (int tensor); a cell the calibration
    batch did not hold is a :class:`ValueError` whose message names it (``describe(codes)``)."""
    codes = groups.cpu().numpy()
    known = {tuple(row): i for i, row in enumerate(calibration.cells.tolist())}
    rows, inverse = np.unique(codes, axis=0, return_inverse=True)
    index = np.empty(len(rows), dtype=np.int64)
    for j, row in enumerate(rows.tolist()):
        if tuple(row) not in known:
            raise ValueError(
                f"The group combination {describe(row)} was not in the calibration data, so it "
                f"has no offset: calibrate on data that holds it (calibrate(X)), or use "
                f"inference='batch'.")
        index[j] = known[tuple(row)]
    return index[inverse.reshape(-1)]


def offset_outputs(calibration, out, cell, bounds):
    """``clip(out - offset[cell])``: the row-by-row fair outputs (float64 tensor)."""
    shift = torch.from_numpy(calibration.offsets[cell]).to(out.device)
    return Bounds.of(bounds).clip(out - shift)


def gap_bound(calibration, epsilon, delta, width):
    """``epsilon + max_{u != v} (d_u + d_v)``: with probability at least ``1 - delta`` over the
    calibration draw, the population gap of the calibrated outputs (``width`` 1: selection rates;
    ``hi - lo``: mean scores) is at most this (module docstring). Per attribute (column of
    ``cells``), the groups of that column and their cells."""
    columns = calibration.cells.shape[1]
    terms = []  # per column, per group: (m_g, n_g)
    for a in range(columns):
        groups = {}
        for row, size in zip(calibration.cells[:, a].tolist(), calibration.sizes.tolist()):
            m, n = groups.get(row, (0, 0))
            groups[row] = (m + 1, n + size)
        terms.append(list(groups.values()))
    total_pairs = sum(m for column in terms for m, _ in column)
    bound = 0.0
    for column in terms:
        d = sorted((width * m * math.sqrt(math.log(2 * total_pairs / delta) / (2 * n))
                    for m, n in column), reverse=True)
        if len(d) > 1:
            bound = max(bound, d[0] + d[1])
    return float(epsilon) + bound


def _offsets(p, y, cell, n_cells, lo, hi):
    """The shift of every cell from raw outputs ``p`` and their projection ``y`` (``y =
    clip(p - s_c)``): ``p - y`` on a free output (the median over the cell's free outputs, equal
    up to rounding); for a cell whose outputs all lie on the bounds, the middle of the shifts
    that keep them there (any of them gives the same outputs)."""
    offsets = np.empty(n_cells)
    for c in range(n_cells):
        members = cell == c
        pc, yc = p[members], y[members]
        free = (yc > lo) & (yc < hi)
        if free.any():
            offsets[c] = float(np.median(pc[free] - yc[free]))
            continue
        # at lo: p - s <= lo, s >= p - lo; at hi: s <= p - hi
        low = float(np.max(pc[yc <= lo] - lo, initial=-math.inf))
        high = float(np.min(pc[yc >= hi] - hi, initial=math.inf))
        offsets[c] = (0.5 * (low + high) if math.isfinite(low) and math.isfinite(high)
                      else low if math.isfinite(low) else high)
    return offsets


def _thresholds(scores, cell, labels, n_cells):
    """Per cell, a threshold between its lowest selected and highest unselected score (the
    labels select a cell's top scores): ``scores > threshold`` reproduces ``labels`` where no
    two scores tie at that place. ``inf`` for a cell with none selected, ``-inf`` for one with
    all selected."""
    thresholds = np.empty(n_cells)
    for c in range(n_cells):
        members = cell == c
        chosen, rest = scores[members & (labels == 1)], scores[members & (labels == 0)]
        if not chosen.size:
            thresholds[c] = math.inf
        elif not rest.size:
            thresholds[c] = -math.inf
        else:
            low, high = rest.max(), chosen.min()
            middle = 0.5 * (low + high)
            thresholds[c] = middle if high > middle else low  # adjacent floats: the lower one
    return thresholds
