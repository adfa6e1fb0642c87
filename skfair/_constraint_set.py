"""The stored form of one batch's constraint rows: :class:`ConstraintSet` and its host cache.

The rows ``G y <= h`` are kept factored (:class:`skfair._kernels.Rows`: every row the difference
of two statistics of the atoms' sums) together with the host arrays the compiled passes read
(:attr:`ConstraintSet.host_problem`); this module also holds the conversions between that form,
dense coefficients and differentiable tensor products. The built-in constraints make their sets
with :func:`host_set` (:mod:`skfair._rows`); a custom constraint's dense rows go through the
constructor.
"""

from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import torch
from scipy import sparse

from . import _kernels
from ._host import device_tensor, host_array, host_vector

__all__ = ["ConstraintSet"]


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

    def __init__(self, coef: torch.Tensor, atom: torch.Tensor, h: torch.Tensor,
                 keys: Iterable[Hashable], weight: torch.Tensor | None = None) -> None:
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
        self._host.update(coef=host_coef, rows=explicit_rows(host_coef))

    def _assign(self, atom, h, keys, weight, n_atoms):
        self.atom = atom
        self.h = h
        self._keys = keys
        self.weight = weight
        self._n_atoms = n_atoms
        self._coef = None
        self._host = {}  # numpy copies on the host, made on first use (or by the builders)

    @property
    def n_rows(self) -> int:
        return self.h.shape[0]

    @property
    def n_samples(self) -> int:
        return self.atom.shape[0]

    @property
    def n_atoms(self) -> int:
        return self._n_atoms

    @property
    def keys(self) -> Sequence[Hashable]:
        """The key of every row (a sequence; the built-in constraints make them on access)."""
        return self._keys

    @property
    def coef(self) -> torch.Tensor:
        """The coefficients of every row on every atom, a tensor of shape (m, n_atoms) on the
        device of :attr:`atom` (made on first access from the factored rows)."""
        if self._coef is None:
            self._coef = device_tensor(self.host_coef, self.atom.device)
        return self._coef

    def atom_sums(self, y: torch.Tensor) -> torch.Tensor:
        """Weighted sums of ``y`` over the samples of every atom, shape (n_atoms,)."""
        if self.weight is not None:
            y = y * self.weight
        return segment_sum(y, self.atom, self.n_atoms)

    def matvec(self, y: torch.Tensor) -> torch.Tensor:
        """``G @ y`` for ``y`` of shape (n,)."""
        return row_tensor(self.host_rows, self.atom_sums(y))

    def rmatvec(self, lam: torch.Tensor) -> torch.Tensor:
        """``G.T @ lam`` for ``lam`` of shape (m,)."""
        values = atom_tensor(self.host_rows, lam)[self.atom]
        return values if self.weight is None else values * self.weight

    def violation(self, y: torch.Tensor) -> float:
        """``max(G @ y - h)`` as a float (``-inf`` without rows): how far ``y`` is from the fair
        set."""
        return self.violation_and_range(y)[0]

    def violation_and_range(self, y: torch.Tensor) -> tuple[float, float, float]:
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
    def host_rows(self) -> _kernels.Rows:
        """The rows in the factored form of the compiled passes (:class:`skfair._kernels.Rows`)."""
        return self._host["rows"]

    @property
    def host_coef(self) -> np.ndarray:
        """:attr:`coef` as a float64 numpy array on the host (dense: checks and small sets)."""
        return self._cached("coef", lambda: dense_coef(self.host_rows, self.n_atoms))

    @property
    def host_h(self) -> np.ndarray:
        """:attr:`h` (detached) as a float64 numpy array on the host."""
        return self._cached("h", lambda: host_array(self.h))

    @property
    def host_atom(self) -> np.ndarray:
        """:attr:`atom` as an int64 numpy array on the host."""
        return self._cached("atom", lambda: host_vector(self.atom.long()))

    @property
    def host_weight(self) -> np.ndarray:
        """:attr:`weight` as a float64 numpy array on the host, empty without weights."""
        if self.weight is None:
            return NO_WEIGHT
        return self._cached("weight", lambda: host_vector(self.weight.to(torch.float64)))

    @property
    def host_mass(self) -> np.ndarray:
        """Total weight of the samples of every atom (their number without weights), a numpy
        array on the host."""
        return self._cached("mass", lambda: self._atom_totals(self.host_weight))

    @property
    def square_mass(self) -> np.ndarray:
        """Total squared weight of every atom's samples, a numpy array on the host."""
        if self.weight is None:
            return self.host_mass
        return self._cached("square_mass", lambda: self._atom_totals(self.host_weight**2))

    @property
    def host_problem(self) -> _kernels.Problem:
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

    def dense(self) -> torch.Tensor:
        """The dense matrix ``G`` of shape (m, n); for small problems, checks and qpth."""
        G = self.coef[:, self.atom]
        return G if self.weight is None else G * self.weight

def host_set(rows, atom, h, h_tensor, keys, device, weight, mass):
    """A :class:`ConstraintSet` built from host arrays that are consistent by construction (the
    built-in constraints compute them on the host): ``rows`` (:class:`skfair._kernels.Rows`),
    ``atom`` and ``mass`` (numpy), ``h_tensor`` the tensor of ``h`` on ``device``; ``h=None``
    when only its tensor is known (one that carries gradients)."""
    cs = ConstraintSet.__new__(ConstraintSet)
    cs._assign(device_tensor(atom, device), h_tensor, keys, weight, mass.size)
    cs._host.update(rows=rows, atom=atom, mass=mass)
    if h is not None:
        cs._host["h"] = h
        if weight is None:
            cs._host["problem"] = _kernels.Problem(atom, NO_WEIGHT, rows, h, mass, mass)
    return cs


def with_opposites(cs, rows):
    """``cs`` with the opposite ``-G_r y <= -h_r`` of each of ``rows`` (indices) added after the
    others, so that those rows hold with equality; keys are row numbers (for
    :func:`skfair._exact.recentred_solve`)."""
    host = cs.host_rows
    h = np.r_[cs.host_h, -cs.host_h[rows]]
    opposed = host._replace(plus=np.r_[host.plus, host.minus[rows]],
                            minus=np.r_[host.minus, host.plus[rows]])
    return host_set(opposed, cs.host_atom, h, torch.from_numpy(h), range(h.size), cs.atom.device,
                    cs.weight, cs.host_mass)


def explicit_rows(coef):
    """:class:`skfair._kernels.Rows` of explicit rows ``coef`` (m, n_atoms): one statistic per
    row."""
    m = coef.shape[0]
    return statistics(coef, np.arange(m, dtype=np.int64), np.full(m, -1, dtype=np.int64),
                       np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))


def statistics(stat, plus, minus, family_size, family_start):
    """:class:`skfair._kernels.Rows` from the dense statistics ``stat`` (n_stats, n_atoms)."""
    index, atoms = np.nonzero(stat)
    by_stat = np.bincount(index, minlength=stat.shape[0])
    by_atom = np.bincount(atoms, minlength=stat.shape[1])
    order = np.argsort(atoms, kind="stable")
    return _kernels.Rows(np.r_[0, np.cumsum(by_stat)], atoms, stat[index, atoms],
                         np.r_[0, np.cumsum(by_atom)], index[order], stat[index, atoms][order],
                         plus, minus, family_size, family_start)


def sparse_stats(rows, n_atoms):
    """The statistics of :class:`skfair._kernels.Rows` as a sparse matrix (n_stats + 1,
    n_atoms), the last row zero: "no statistic" (index -1), so that ``stats[rows.plus] -
    stats[rows.minus]`` are the rows' coefficients."""
    n_stats = rows.stat_ptr.size - 1
    return sparse.vstack([
        sparse.csr_matrix((rows.stat_coef, rows.stat_atom, rows.stat_ptr),
                          shape=(n_stats, n_atoms)),
        sparse.csr_matrix((1, n_atoms))]).tocsr()


def dense_coef(rows, n_atoms):
    """The dense coefficients (m, n_atoms) of :class:`skfair._kernels.Rows`."""
    n_stats = rows.stat_ptr.size - 1
    stat = np.zeros((n_stats + 1, n_atoms))  # the last one: "no statistic" (index -1)
    stat[np.repeat(np.arange(n_stats), np.diff(rows.stat_ptr)), rows.stat_atom] = rows.stat_coef
    return stat[rows.plus] - stat[rows.minus]


#: the host weight of unweighted sets (the compiled passes take an empty array for unit weights)
NO_WEIGHT = np.empty(0)


def row_tensor(rows, sums):
    """``G``'s rows applied to the atom sums ``sums`` (a tensor: differentiable in ``sums``)."""
    device = sums.device
    n_stats = rows.stat_ptr.size - 1
    index = _index_tensor(np.repeat(np.arange(n_stats), np.diff(rows.stat_ptr)), device)
    terms = _index_tensor(rows.stat_coef, device) * sums[_index_tensor(rows.stat_atom, device)]
    values = sums.new_zeros(n_stats + 1).index_add_(0, index, terms)  # the last: "none" (-1)
    return values[_index_tensor(rows.plus, device)] - values[_index_tensor(rows.minus, device)]


def atom_tensor(rows, lam):
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


def segment_sum(values, index, size):
    """``out[k] = sum(values[index == k])`` for ``k < size`` (differentiable in ``values``)."""
    return values.new_zeros(size).scatter_add_(0, index, values)
