r"""Online primal-dual fairness for streams of small batches.

A batch of ``n_t >= b_tau`` rows is projected exactly (hard guarantee on that batch). A smaller
batch takes one primal-dual step with one multiplier ``lam_k >= 0`` per constraint row identity
``k`` (attribute, group pair, label cell). Write ``g_{t,k}`` for row ``k`` of the batch's ``G_t``
and ``v_{t,k} = (G_t y_t - h_t)_k`` (0 when row ``k`` is absent from the batch).

* primal, in closed form over the bounds: ``y_t = clip(z_t - G_t^T (lam / s_t), lo, hi)``, the
  minimiser of ``||y - z_t||^2 / 2 + sum_k (lam_k / s_{t,k}) (g_{t,k} y - h_{t,k})``, with
  ``s_{t,k} = ||g_{t,k}||^2``. Without clipping, row ``k``'s own multiplier lowers its value by
  exactly ``lam_k``, whatever ``n_t`` and the group sizes: ``lam`` is on the scale of the outputs.
  For a group-mean row ``(u, v)`` group ``u`` moves down by ``lam n_v / (n_u + n_v)`` and ``v`` up
  by ``lam n_u / (n_u + n_v)``, the split of the exact projection. (A training projection
  ``y = clip(z - G^T mu)`` has, on this scale, ``lam = mu ||g||^2``.)
* dual: ``lam_k <- max(0, lam_k + alpha_t n_t v_{t,k})`` with::

      alpha_t = min(alpha_{t-1}, eta0 / sqrt(sum_{s<=t} n_s^2), MAX_GAIN / (n_t ||M_t||_inf))

  where ``M_t = G_t G_t^T diag(1 / s_t)`` restricted to the rows taking part in the step (a
  positive multiplier or a violation) is the response of the rows' values to their multipliers
  (unit diagonal). So the loop gain ``alpha_t n_t ||M_t||`` is at most ``min(eta0 ||M_t||,
  MAX_GAIN)``: it does not grow with the batch size or shrink with the group sizes. For batches
  of constant size ``n`` (and ``eta0 ||M_t|| <= MAX_GAIN``), ``alpha_t = eta0 / (n sqrt(t))``.

Rows of groups absent from a batch are dropped, except that for the built-in group-mean
constraints a present group ``u`` is compared with the **running mean** of an absent group ``w``
over the stream so far (all outputs of ``w`` streamed before this batch): the rows
``mean_t(y | u) - R_w <= eps`` and ``R_w - mean_t(y | u) <= eps``, under the key of the pair
``(u, w)``. Their ``s`` is ``||g||^2 (1 + N_u / N_w)`` (pooled counts): ``u`` moves by
``lam N_w / (N_u + N_w)``, its share of the reduction in a batch of both groups in their pooled
proportion, so the same multiplier serves batches of one group and of several. A stream of
single rows moves toward fairness too.

Guarantee (finite T). ``alpha_t`` is non-increasing and ``lam_{t+1,k} >= lam_{t,k} + alpha_t n_t
v_{t,k}``, so by summation by parts, for every row::

    sum_t n_t v_{t,k}  <=  sum_t (lam_{t+1,k} - lam_{t,k}) / alpha_t
                        =  lam_{T+1,k} / alpha_T - lam_{1,k} / alpha_1
                           - sum_{t=2..T} lam_{t,k} (1 / alpha_t - 1 / alpha_{t-1})
                       <=  lam_max / alpha_T

with ``T`` the primal-dual steps taken, ``alpha_T`` the last one's step and ``lam_max`` the largest
multiplier reached (starting values included), on the scale of the outputs. Hence::

    (1 / N) sum_t n_t (G_t y_t)_k  <=  epsilon + lam_max / (alpha_T N)

with ``N`` the number of streamed rows. Exactly projected batches satisfy their rows outright and
count with ``v <= 0``. The left side, maximised over rows, is ``weighted_avg_fairness_gap``; the
right side's excess over epsilon is ``bound``. Unless the stability cap binds, ``1 / alpha_T =
sqrt(sum_t n_t^2) / eta0``, so ``bound <= lam_max sqrt(sum_t n_t^2) / (eta0 N)``, which is
``lam_max / (eta0 sqrt(T))`` for batches of constant size.

For rows with a reference mean the same bound holds with ``R_w`` in place of the batch mean of
``w``. For a stream whose batches each hold a single group of an attribute (e.g. single rows),
summing row ``(u, v)`` over the batches of ``u`` (values ``mean_t(u) - R_v``) and of ``v``
(``R_u - mean_t(v)``) gives, with ``N_uv`` the rows of ``u`` and ``v``::

    pooled_mean_u - pooled_mean_v  <=  epsilon + lam_max / (alpha_T N_uv) + reference_drift

where ``reference_drift`` is the largest distance between the average reference mean a pair used
(weighted by batch size) and that group's final pooled mean: it vanishes when the outputs are
stationary (rows of a group streamed before the other group's first output count in its pooled
mean but in no row of the pair). For batches of several groups whose composition varies across
the stream, the pooled gap is *not* what the algorithm controls (it weights each batch's groups by
their counts); it equals the guaranteed quantity when group ratios are constant.
``mean_batch_violation`` (each batch's own gap beyond epsilon, weighted by its size) measures how
fair the individual batches are.

Decisions (:class:`DecisionStream`): the same algorithm on probabilities, whose outputs are
the 0/1 decisions ``1[clip(p - G^T (lam / s)) > 1/2]`` (per-group threshold offsets) and whose
violations are the decisions' selection rates; the proof above uses only the dual update, so
the bound holds for the selection rates as it does for scores.

A batch with a non-finite output raises :class:`ValueError` before any state changes.
"""

import math
from typing import NamedTuple

import numpy as np
import torch

from . import _persistence, _rows
from ._bounds import Bounds
from ._constraint_set import NO_WEIGHT
from ._dual_step import dual_step, pool_groups, record_outputs
from ._host import device_tensor, host_vector
from ._kernels import Rows, row_gram, row_values, stat_squares, value_range
from .constraints import constraint_gap
from .decisions import fair_labels
from .layer import project

DEFAULT_ETA0 = 0.1
#: the default dual step of a :class:`DecisionStream`: a selection rate responds to a threshold
#: offset by the density of the probabilities near the threshold, less than a score's unit
#: response to its shift, so a larger step keeps the loop comparable
DEFAULT_DECISION_ETA0 = 0.3

#: the largest response of the active rows to one dual step: ``alpha_t n_t ||M_t||_inf``
MAX_GAIN = 0.5


def row_norms(cs):
    """Squared norm ``||g_k||^2`` of every row of a constraint set: a float64 numpy array (m,).

    A multiplier ``mu`` of the exact projection (``y = clip(z - G^T mu)``) is, on the scale of
    the stream's multipliers (``y = clip(z - G^T (lam / ||g||^2))``), ``lam = mu ||g||^2``: the
    reduction of the row's value that it makes on its own.
    """
    # from the factored rows: the two statistics of a row have disjoint supports
    rows = cs.host_rows
    squares = stat_squares(rows, cs.square_mass)
    return squares[rows.plus] + squares[rows.minus]


def warm_start_duals(solved, n_batches):
    """A stream's starting multipliers from an epoch of training projections: per row key,
    the multipliers ``mu`` of the ``(rows, mu, ...)`` in ``solved`` on the stream's scale
    (``mu ||g||^2``, :func:`row_norms`), averaged over the epoch's ``n_batches`` batches (a
    batch without the row counts as zero). Projections without multipliers (qpth's) count as
    zero too."""
    duals, norms = {}, {}
    for cs, lam, *_ in solved:
        if lam is None:
            continue
        # batches of one composition share their rows: one norm computation each
        scale = norms.get(id(cs))
        if scale is None:
            scale = norms[id(cs)] = row_norms(cs)
        for r in np.flatnonzero(lam).tolist():
            key = cs.keys[r]
            duals[key] = duals.get(key, 0.0) + lam[r] * scale[r] / n_batches
    return duals


def _row_values(y, cs):
    """``G y - h`` of the rows ``cs`` at the outputs ``y`` (a float64 numpy array)."""
    weight = cs.host_weight
    sums = np.bincount(cs.host_atom, weights=y * weight if weight.size else y,
                       minlength=cs.n_atoms)
    return row_values(cs.host_rows, sums, cs.host_h)


def _gram(cs):
    """``G G^T`` of a constraint set from its factored rows (column ``i`` of ``G`` is
    ``weight_i * coef[:, atom_i]``): a float64 numpy array (m, m); its diagonal is
    :func:`row_norms`."""
    return row_gram(cs.host_rows, cs.square_mass, np.arange(cs.n_rows))


#: an empty index array
_NONE = np.zeros(0, dtype=np.int64)

#: how many sets of atoms present a stream keeps the structure of the rows of
MAX_STRUCTURES = 1024
#: how many numbers the rows a stream keeps per batch composition may hold (their Gram matrices,
#: m x m each) before they are dropped (a stream of single rows has one composition per
#: combination of groups)
MAX_CACHED_NUMBERS = 1 << 21


class _Entries:
    """Numbers by key in numpy arrays, one entry per key ever met, so that the compiled step
    reads and writes them by entry: ``columns`` maps each array's name to its dtype."""

    def __init__(self, **columns):
        self.keys, self.index = [], {}
        self.columns = {name: np.zeros(0, dtype=dtype) for name, dtype in columns.items()}

    def entries(self, keys):
        """The entries of ``keys`` (an int64 array), new keys getting new (zero) ones."""
        index = self.index
        for key in keys:
            if key not in index:
                index[key] = len(self.keys)
                self.keys.append(key)
        if len(self.keys) > len(next(iter(self.columns.values()))):
            for name, old in self.columns.items():
                self.columns[name] = np.zeros(2 * len(self.keys), dtype=old.dtype)
                self.columns[name][:old.size] = old
        return np.array([index[key] for key in keys], dtype=np.int64)

    def items(self, column, present):
        """``(key, value)`` of ``column`` for the keys whose ``present`` is true (nonzero)."""
        values, entries = self.columns[column], np.flatnonzero(self.columns[present]).tolist()
        return zip([self.keys[i] for i in entries], values[entries].tolist())


class _Combinations(NamedTuple):
    """Where a batch's outputs go in the stream's pooled statistics: its atoms with samples
    ``present`` are the stream's combinations ``combinations`` (entries), of the groups
    ``groups`` (entries, one column per attribute); ``touched`` lists those groups once."""

    present: np.ndarray
    combinations: np.ndarray
    groups: np.ndarray
    touched: np.ndarray


class _StepRows(NamedTuple):
    """The rows of a primal-dual step's batch and what the step derives from them alone.

    ``rows`` (factored) over the atoms ``atom`` (None: the batch's combinations of groups) with
    sample ``weight``; ``h`` without the reference means; ``keys`` (a tuple); ``gram``, ``G
    G^T``, and its diagonal ``norms``; ``entries``: the rows' entries in the stream's multipliers
    and sums. The rows that compare a present group ``u`` with the running mean of an absent
    one ``w`` (entries of the stream's group statistics): row ``reference_rows[i]`` adds
    ``reference_signs[i]`` times the mean of ``reference_groups[i]`` to ``h``; the divisor of
    row ``scaled_rows[i]`` has the factor ``1 + N_u / N_w`` of ``scaled_present[i]`` and
    ``scaled_absent[i]``; each pair ``(u, w)`` is entry ``pairs[i]`` of the stream's reference
    sums, ``w`` ``pair_groups[i]``. ``outputs``: the :class:`_Combinations` of the batch (None:
    to be found).
    """

    rows: Rows
    atom: np.ndarray | None
    weight: np.ndarray
    h: np.ndarray
    keys: tuple
    gram: np.ndarray
    norms: np.ndarray
    entries: np.ndarray
    reference_rows: np.ndarray = _NONE
    reference_signs: np.ndarray = np.zeros(0)
    reference_groups: np.ndarray = _NONE
    scaled_rows: np.ndarray = _NONE
    scaled_present: np.ndarray = _NONE
    scaled_absent: np.ndarray = _NONE
    pairs: np.ndarray = _NONE
    pair_groups: np.ndarray = _NONE
    outputs: _Combinations | None = None


class _GroupMeanRows:
    """The structure of a stream's group-mean rows for the batches whose atoms ``table`` with
    samples are those of ``mass``, given the groups the stream has seen (:meth:`at`: the rows
    of one composition)."""

    def __init__(self, stream, table, mass):
        constraint = stream.constraint
        seen = stream._seen_groups()
        references = tuple((a, g, None) for a, g in seen) if constraint.borrows_references else ()
        member, plus, minus, family_size, family_start, reference_rows, keys = (
            _rows.row_structure(type(constraint), table, (mass > 0).tobytes(), len(table[0]),
                                references, constraint.ratio))
        self.keys = tuple(keys)
        self.index = stream._row_entries.entries(self.keys)
        self.h = np.full(len(self.keys), stream.epsilon)
        # the rows' statistics, in the layout of skfair._constraint_set.statistics: entry e of
        # statistic stat[e] on atom atom[e] is member[stat[e], atom[e]] / the group's mass
        self.inside = (member != 0).astype(np.float64)
        # (contiguous: one compiled signature whatever the number of entries)
        stat, atom = (np.ascontiguousarray(index) for index in np.nonzero(member))
        self.order = np.argsort(atom, kind="stable")
        self.stat, self.member = stat, member[stat, atom]
        self.template = Rows(np.r_[0, np.cumsum(np.bincount(stat, minlength=len(member)))],
                             atom, None,
                             np.r_[0, np.cumsum(np.bincount(atom, minlength=len(table)))],
                             stat[self.order], None, plus, minus, family_size, family_start)
        self.outputs = stream._combinations(table, mass)
        in_batch = [set(column) for column in zip(*(table[j] for j in self.outputs.present))]
        scaled, pairs = [], []
        if seen:
            for r, (a, u, v, *_) in enumerate(self.keys):
                if u in in_batch[a] and v not in in_batch[a]:
                    scaled.append((r, (a, u), (a, v)))
                    pairs.append(((a, u, v), (a, v)))
                elif v in in_batch[a] and u not in in_batch[a]:
                    scaled.append((r, (a, v), (a, u)))
        groups = stream._group_entries.entries
        self.reference_rows = np.array([r for r, _, _ in reference_rows], dtype=np.int64)
        self.reference_signs = np.array([sign for _, _, sign in reference_rows], dtype=float)
        self.reference_groups = groups([reference[:2] for _, reference, _ in reference_rows])
        self.scaled_rows = np.array([r for r, _, _ in scaled], dtype=np.int64)
        self.scaled_present = groups([u for _, u, _ in scaled])
        self.scaled_absent = groups([w for _, _, w in scaled])
        self.pairs = stream._pair_entries.entries([pair for pair, _ in pairs])
        self.pair_groups = groups([w for _, w in pairs])

    def at(self, mass):
        """The :class:`_StepRows` of the batches with atom sizes ``mass``."""
        coef = self.member / (self.inside @ mass)[self.stat]
        t = self.template
        rows = Rows(t.stat_ptr, t.stat_atom, coef, t.atom_ptr, t.atom_stat, coef[self.order],
                    t.plus, t.minus, t.family_size, t.family_start)
        gram = row_gram(rows, mass, np.arange(len(self.keys)))
        return _StepRows(rows, None, NO_WEIGHT, self.h, self.keys, gram, gram.diagonal().copy(),
                         self.index, self.reference_rows, self.reference_signs,
                         self.reference_groups, self.scaled_rows, self.scaled_present,
                         self.scaled_absent, self.pairs, self.pair_groups, self.outputs)


class PrimalDualStream:
    """State of one stream: multipliers, counters and pooled statistics.

    Parameters
    ----------
    constraint : AffineConstraint
        The fairness constraint (label-free: streams have no true labels).
    epsilon : float
    bounds : tuple or None
    eta0 : float
        Dual step at t = 1 as a share of the violation (see the module docstring).
    b_tau : int
        Batches with at least this many rows are projected exactly.
    solver : str
        Solver of the exact projections.
    dual_init : dict, optional
        Starting multipliers by row key (e.g. recorded from the training projections) on the
        stream's scale, the reduction of the row's value each one makes (see
        :func:`row_norms`).
    """

    #: the primal point of a step is the output itself (:class:`DecisionStream`: thresholded)
    THRESHOLD: float | None = None

    def __init__(self, constraint, epsilon, bounds, eta0, b_tau, solver="exact", dual_init=None):
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
        dual_init = {k: float(v) for k, v in (dual_init or {}).items()}
        self.lambda_max = max(dual_init.values(), default=0.0)
        self.n_steps = 0  # primal-dual steps taken
        self.size_squares = 0  # sum over the steps of n_t^2
        self.step_size = math.inf  # alpha_t of the last step (non-increasing)
        self.n_batches = 0
        self.n_samples = 0
        self.batch_gap_sum = 0.0  # sum_t n_t * (the batch's own gap)
        self.batch_violation_sum = 0.0  # sum_t n_t * max(0, gap - epsilon)
        self._load(dual_init, {}, {}, {}, {})

    # The multipliers, the rows' sums and the pooled statistics of the reference pairs, the
    # combinations of groups and the groups live in arrays (_Entries): a step reads and updates
    # them by entry in compiled calls. duals, row_sums, reference_sums, reference_uses and
    # atom_sums show them by key, and are what a stream stores (its arrays are not).
    def _load(self, duals, row_sums, reference_sums, reference_uses, atom_sums):
        """Start the arrays from the stored dicts, and the caches empty."""
        self._box = Bounds.of(self.bounds).box
        self._structures, self._compositions, self._cached_numbers = {}, {}, 0
        self._row_atoms = {}
        self._row_entries = _Entries(duals=np.float64, has_dual=bool, sums=np.float64,
                                     recorded=bool)
        self._fill(self._row_entries, duals, "duals", "has_dual")
        self._fill(self._row_entries, row_sums, "sums", "recorded")
        # sum_t n_t * the reference mean of w compared with u, and sum_t n_t, by (a, u, w)
        self._pair_entries = _Entries(sums=np.float64, uses=np.int64)
        self._fill(self._pair_entries, reference_sums, "sums")
        self._fill(self._pair_entries, reference_uses, "uses")
        # the pooled sum of outputs and count of every combination of groups and of every
        # group, and the combinations of each group (_group_members: the numbers of
        # combinations and groups it was built for, then group_start and group_combinations of
        # skfair._dual_step.record_outputs)
        self._combination_entries = _Entries(total=np.float64, count=np.float64)
        self._group_entries = _Entries(total=np.float64, count=np.float64)
        self._group_members = (0, 0, np.zeros(1, dtype=np.int64), _NONE)
        if atom_sums:
            table = tuple(atom_sums)
            totals, counts = (np.array(column, dtype=np.float64)
                              for column in zip(*atom_sums.values()))
            outputs = self._combinations(table, counts)
            combinations = self._combination_entries.columns
            combinations["total"][outputs.combinations] = totals
            combinations["count"][outputs.combinations] = counts
            groups = self._group_entries.columns
            np.add.at(groups["count"], outputs.groups, counts[:, None])
            pool_groups(outputs.touched, *self._group_members[2:], combinations["total"],
                        groups["total"])

    def _combinations(self, table, mass):
        """The :class:`_Combinations` of a batch whose atoms ``table`` hold ``mass`` samples
        (new combinations and groups get entries)."""
        present = np.flatnonzero(mass)
        codes = [table[j] for j in present.tolist()]
        combinations = self._combination_entries.entries(codes)
        groups = self._group_entries.entries(
            [group for row in codes for group in enumerate(row)]).reshape(len(codes),
                                                                          len(table[0]))
        sizes = (len(self._combination_entries.keys), len(self._group_entries.keys))
        if sizes != self._group_members[:2]:  # the combinations of every group, anew
            members = [[] for _ in range(sizes[1])]
            for c, row in enumerate(self._combination_entries.keys):
                for g in self._group_entries.entries(list(enumerate(row))).tolist():
                    members[g].append(c)
            self._group_members = sizes + (
                np.r_[0, np.cumsum([len(m) for m in members])].astype(np.int64),
                np.array([c for m in members for c in m], dtype=np.int64))
        return _Combinations(present, combinations, groups, np.unique(groups))

    def _seen_groups(self):
        """The groups with outputs in the stream, in the order their first combination was met:
        the reference means the rows of a batch may compare with."""
        combinations = self._combination_entries
        seen = np.flatnonzero(combinations.columns["count"]).tolist()
        return list(dict.fromkeys(group for c in seen for group in enumerate(
            combinations.keys[c])))

    @staticmethod
    def _fill(entries, values, column, flag=None):
        index = entries.entries(values)
        entries.columns[column][index] = list(values.values())
        if flag is not None:
            entries.columns[flag][index] = True

    @property
    def duals(self):
        """The multipliers by row key (those started from or stepped)."""
        return dict(self._row_entries.items("duals", "has_dual"))

    @property
    def row_sums(self):
        """``sum_t n_t (G_t y_t - h_t + epsilon)_k`` by row key ``k`` (the rows recorded)."""
        return dict(self._row_entries.items("sums", "recorded"))

    @property
    def reference_sums(self):
        """``sum_t n_t R_w`` by pair ``(a, u, w)`` (``u`` present, ``w`` absent, ``R_w`` the
        running mean of ``w`` its rows used)."""
        return dict(self._pair_entries.items("sums", "uses"))

    @property
    def atom_sums(self):
        """``[sum of outputs, count]`` by combination of group codes (those streamed)."""
        combinations = self._combination_entries
        totals, counts = (combinations.columns[name].tolist() for name in ("total", "count"))
        return {combinations.keys[i]: [totals[i], int(counts[i])]
                for i in np.flatnonzero(combinations.columns["count"]).tolist()}

    @property
    def reference_uses(self):
        """``sum_t n_t`` over the batches of the sums of :attr:`reference_sums`."""
        return dict(self._pair_entries.items("uses", "uses"))

    #: what a stream stores in another form (the arrays: as the dicts of the properties) or
    #: computes anew when loaded (:meth:`_load`)
    _NOT_STORED = ("_row_entries", "_pair_entries", "_combination_entries", "_group_entries",
                   "_group_members", "_box", "_structures", "_compositions", "_cached_numbers",
                   "_row_atoms")

    # Persistence: the sums are keyed by the rows' tuples, which skops cannot store as keys
    # (skfair._persistence).
    def __getstate__(self):
        state = {name: value for name, value in self.__dict__.items()
                 if name not in self._NOT_STORED}
        return _persistence.plain(dict(
            state, duals=self.duals, row_sums=self.row_sums, reference_sums=self.reference_sums,
            reference_uses=self.reference_uses, atom_sums=self.atom_sums))

    def __setstate__(self, state):
        state = _persistence.restored(state)
        stored = [state.pop(name) for name in ("duals", "row_sums", "reference_sums",
                                                "reference_uses", "atom_sums")]
        self.__dict__.update(state)
        self._load(*stored)

    def step(self, z, groups):
        """Fair outputs of one batch: exact projection or one primal-dual step.

        ``z``: float tensor (n,); ``groups``: LongTensor (n, n_attributes) of group codes.
        Returns float64 outputs. Raises :class:`ValueError`, leaving the state unchanged, when
        ``z`` holds NaN or an infinity.
        """
        n = z.shape[0]
        if n == 0:
            return z.to(torch.float64).clone()
        if z.dtype != torch.float64:
            z = z.to(torch.float64)
        host_z = host_vector(z)
        low, high = value_range(host_z)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("z must be finite; the outputs of this batch hold NaN or an "
                             "infinity (the stream's state is unchanged).")
        atoms = self._atoms(groups.numpy(force=True))
        if n >= self.b_tau:
            cs = self.constraint.build(groups, epsilon=self.epsilon)
            y = self._exact(z, cs, groups)
            y_host = host_vector(y)
            gap = 0.0
            if cs.n_rows:
                values = _row_values(y_host, cs) + self.epsilon
                entries = self._row_entries.entries(cs.keys).tolist()  # may grow the arrays
                sums, recorded = (self._row_entries.columns[name] for name in ("sums",
                                                                               "recorded"))
                for i, value in zip(entries, values.tolist()):
                    sums[i] += n * value
                    recorded[i] = True
                gap = float(values.max())
            self._record(y_host, atoms, gap)
            return y
        step_rows = self._step_rows(groups, atoms)
        if not step_rows.keys:  # a step without rows: no multiplier to move
            y = self._decide(Bounds.of(self.bounds).clip(z))
            self.n_steps += 1
            self._record(host_vector(y), atoms, 0.0)
            return y
        return device_tensor(self._primal_dual(host_z, step_rows, atoms), z.device)

    def _atoms(self, codes):
        """:func:`skfair._rows.atoms` of a batch's group ``codes``. A single row's are kept by
        its codes (a stream of single rows meets each combination of groups again and again;
        at most ``MAX_STRUCTURES`` are kept, of a few kilobytes each)."""
        if len(codes) != 1:
            return _rows.atoms(codes)
        key = (codes.dtype, codes.tobytes())
        atoms = self._row_atoms.get(key)
        if atoms is None:
            if len(self._row_atoms) >= MAX_STRUCTURES:
                self._row_atoms.clear()
            atoms = self._row_atoms[key] = _rows.atoms(codes)
        return atoms

    def _primal_dual(self, z, step_rows, atoms):
        """The primal-dual step of a batch ``z`` (a float64 numpy array) shorter than ``b_tau``
        with rows ``step_rows`` (its ``atoms``): its outputs; the state changes only once the
        step is known to be finite."""
        n = z.size
        size_squares = self.size_squares + n * n
        y = np.empty(n)
        rows, groups, pairs = (self._row_entries.columns, self._group_entries.columns,
                               self._pair_entries.columns)
        s = step_rows
        step_size, largest, gap = dual_step(
            z, atoms[0] if s.atom is None else s.atom, s.weight, s.rows, s.h, s.norms, s.gram,
            s.entries, s.reference_rows, s.reference_signs, s.reference_groups, s.scaled_rows,
            s.scaled_present, s.scaled_absent, s.pairs, s.pair_groups, *self._box,
            math.nan if self.THRESHOLD is None else self.THRESHOLD, n, float(size_squares),
            self.eta0, self.step_size, MAX_GAIN, self.epsilon, rows["duals"],
            rows["has_dual"], rows["sums"], rows["recorded"], groups["total"], groups["count"],
            pairs["sums"], pairs["uses"], y)
        if not math.isfinite(largest):  # float64 overflow (nothing written)
            raise ValueError("The stream's multipliers would overflow; its state is unchanged.")
        # the step is taken (multipliers and sums are written): the rest of the state
        self.n_steps += 1
        self.size_squares = size_squares
        self.step_size = step_size
        self.lambda_max = max(self.lambda_max, largest)
        self._record(y, atoms, gap, step_rows.outputs)
        return y

    def _step_rows(self, groups, atoms):
        """The :class:`_StepRows` of a primal-dual step's batch (``groups``, its ``atoms``). A
        group-mean constraint's compare the groups present with the running means of those
        absent: their structure depends on which atoms have samples only, and is kept by it."""
        if not isinstance(self.constraint, _rows.GroupMeanLayout):
            cs = self.constraint.build(groups, epsilon=self.epsilon)
            gram, keys = _gram(cs), tuple(cs.keys)
            return _StepRows(cs.host_rows, cs.host_atom, cs.host_weight, cs.host_h, keys, gram,
                             gram.diagonal().copy(), self._row_entries.entries(keys))
        _, table, mass = atoms
        key = (table, mass.tobytes())
        step_rows = self._compositions.get(key)
        if step_rows is None:
            pattern = (table, (mass > 0).tobytes())
            structure = self._structures.get(pattern)
            if structure is None:
                if len(self._structures) >= MAX_STRUCTURES:
                    self._structures.clear()
                structure = self._structures[pattern] = _GroupMeanRows(self, table, mass)
            step_rows = structure.at(mass)
            self._cached_numbers += step_rows.gram.size
            if self._cached_numbers > MAX_CACHED_NUMBERS:
                self._compositions.clear()
                self._cached_numbers = step_rows.gram.size
            self._compositions[key] = step_rows
        return step_rows

    def _exact(self, z, cs, groups):
        """The outputs of a batch of at least ``b_tau`` rows: its exact projection."""
        return project(z, cs, self.bounds, self.solver)[0]

    def _decide(self, y):
        """The outputs of a primal-dual step from its primal point ``y`` (a tensor)."""
        return y if self.THRESHOLD is None else (y > self.THRESHOLD).to(torch.float64)

    def _record(self, y, atoms, gap, outputs=None):
        """Add a batch's outputs ``y`` (a float64 numpy array; its ``atoms``) and its ``gap``
        (its rows' largest value) to the stream's statistics; ``outputs`` are its
        :class:`_Combinations` (None: to be found)."""
        n = y.size
        self.n_batches += 1
        self.n_samples += n
        self.batch_gap_sum += n * gap
        self.batch_violation_sum += n * max(0.0, gap - self.epsilon)
        atom, table, mass = atoms
        if outputs is None:
            outputs = self._combinations(table, mass)
        combinations, groups = self._combination_entries.columns, self._group_entries.columns
        if record_outputs(y, atom, len(table), outputs.present, outputs.combinations,
                          outputs.groups, outputs.touched, combinations["total"],
                          combinations["count"], groups["total"], groups["count"],
                          *self._group_members[2:]):
            # new groups: new reference rows for every composition
            self._structures.clear()
            self._compositions.clear()
            self._cached_numbers = 0

    def _pooled_gaps(self):
        """Per attribute, the constraint's gap on all streamed outputs pooled.

        Each combination of groups stands for its streamed rows by its mean with their count as
        weight, which leaves every weighted group mean, hence the gap, unchanged.
        """
        atom_sums = self.atom_sums
        if not atom_sums:
            return {}
        table = torch.tensor(list(atom_sums), dtype=torch.long)
        totals, counts = zip(*atom_sums.values())
        counts = torch.tensor(counts, dtype=torch.float64)
        means = torch.tensor(totals, dtype=torch.float64) / counts
        return {a: constraint_gap(self.constraint, means, table[:, [a]], sample_weight=counts)
                for a in range(table.shape[1])}

    def stats(self):
        """Summary of the stream; see the module docstring for the guarantee."""
        N = max(self.n_samples, 1)
        per_attribute = self._pooled_gaps()
        drift = 0.0
        uses, groups = self.reference_uses, self._group_entries
        pooled, counts = (groups.columns[name].tolist() for name in ("total", "count"))
        for (a, u, w), total in self.reference_sums.items():
            i = groups.index[(a, w)]
            drift = max(drift, abs(total / uses[(a, u, w)] - pooled[i] / counts[i]))
        bound = self.lambda_max / (self.step_size * N)  # 0 before the first step (alpha = inf)
        return {
            "weighted_avg_fairness_gap": max((s / N for s in self.row_sums.values()),
                                             default=0.0),
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


class DecisionStream(PrimalDualStream):
    """A stream of 0/1 decisions taken from probabilities, whose selection rates the constraint
    bounds (demographic parity or disparate impact of the labels).

    A batch of at least ``b_tau`` rows gets :func:`~skfair.decisions.fair_labels` of its
    probabilities: the rule holds on the batch exactly. A smaller one takes the primal-dual
    step of :class:`PrimalDualStream` on the probabilities ``p`` and decides ``y_i = 1`` where
    the step's primal point ``clip(p - G^T (lam / s))`` exceeds 1/2: each group's threshold is
    offset by its multipliers. The violation that moves the multipliers, and that the stream
    records, is the decisions' own (their selection rates), so the module's guarantee holds for
    them: the sample-weighted average of every row's value over the stream (a difference, or
    ratio row, of selection rates) is at most ``epsilon + lam_max / (alpha_T N)``. Nothing in
    that proof uses how the primal point is chosen; what the offsets add is that the
    multipliers stay bounded (a large enough offset selects no one of the group ahead and
    everyone of the group behind), so the bound shrinks as ``1 / sqrt(T)``. The multipliers
    start at zero.

    Parameters
    ----------
    constraint : DemographicParity or DisparateImpact
    epsilon : float
    eta0 : float
    b_tau : int
    """

    #: a sample is selected where its (offset) probability exceeds this
    THRESHOLD = 0.5

    def __init__(self, constraint, epsilon, eta0, b_tau):
        super().__init__(constraint, epsilon, (0.0, 1.0), eta0, b_tau)

    def _exact(self, z, cs, groups):
        """Labels of a batch of at least ``b_tau`` rows: the most accurate ones that meet the
        rule on the batch exactly."""
        labels = fair_labels(host_vector(z), groups.cpu().numpy(), min(self.epsilon, 1.0),
                             ratio=getattr(self.constraint, "ratio", None))
        return torch.as_tensor(labels, dtype=torch.float64, device=z.device)

