"""Compiled passes over the n samples of a batch, on host (numpy) arrays.

Each function is one loop that does what would otherwise take several tensor operations (and as
many passes over memory and dispatches): the exact solver (:mod:`skfair._exact`) is a few such
passes plus small dense algebra, compiled as a whole.

Conventions: ``atom`` (int64) maps every sample to its atom, ``weight`` is the per-sample weight
or an empty array for unit weights, ``lo``/``hi`` are floats (infinite for a missing bound), and a
sample is *free* when its value lies strictly inside them. Accumulators are written, not added to.
Arguments that travel together are named tuples (:class:`Box`, :class:`Rows`, :class:`Problem`,
:class:`Loss`), which the compiled functions read like structs.
"""

import hashlib
import os
from collections import namedtuple
from pathlib import Path

import numba
import numpy as np


#: the bounds ``lo <= y <= hi`` as the compiled passes read them: floats, infinite where missing
Box = namedtuple("Box", "lo hi")


def jit(function):
    """``function`` compiled by numba; the machine code is cached on disk where numba finds a
    writable place (beside the module or in the user's cache directory), else compiled anew in
    each process rather than failing the import."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(function)


def retire_stale_machine_code(sources, record):
    """Make numba recompile when any of ``sources`` (the modules whose functions are compiled)
    changed since ``record`` (a file holding their fingerprint) was written.

    numba validates a function's cached machine code against its own source file only, but a
    compiled function here contains the functions of the other module it calls: after an edit
    of ``_kernels.py`` alone (a ``git pull`` in an editable install), the solver in
    ``_exact.py`` would run its cached copy of the old code. Touching every source file when
    their joint fingerprint changes invalidates all their caches, wherever numba keeps them.
    Nothing is done where the record cannot be written (a read-only installation, whose files
    an upgrade replaces together).
    """
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.read_bytes())
    fingerprint = digest.hexdigest()
    try:
        if record.exists() and record.read_text() == fingerprint:
            return False
        for source in sources:
            os.utime(source)
        record.parent.mkdir(exist_ok=True)
        record.write_text(fingerprint)
    except OSError:
        return False
    return True


def inline(function):
    """``function`` compiled into each compiled function that calls it (numba's inlining of its
    intermediate representation), never on its own: a helper that splits a compiled function
    for reading costs no compilation, cache entry or call of its own."""
    return numba.njit(inline="always", nogil=True)(function)


_PACKAGE = Path(__file__).resolve().parent
retire_stale_machine_code([_PACKAGE / "_kernels.py", _PACKAGE / "_exact.py",
                           _PACKAGE / "_dual_step.py"],
                          _PACKAGE / "__pycache__" / "numba-sources.sha256")


@jit
def clip_shift(z, atom, shift, weight, lo, hi, out):
    """``out = clip(z - weight * shift[atom], lo, hi)``."""
    weighted = weight.shape[0] > 0
    for i in range(z.shape[0]):
        w = weight[i] if weighted else 1.0
        out[i] = min(max(z[i] - w * shift[atom[i]], lo), hi)


@jit
def shifted_sums(z, atom, shift, weight, lo, hi, sums, free_mass):
    """For ``y = clip(z - weight * shift[atom], lo, hi)`` (:func:`clip_shift`, the same
    arithmetic), the atom sums of ``weight * y`` and of ``weight**2`` over the free samples;
    returns ``1/2 ||y - z||^2``. ``y`` itself is not written: the dual's evaluations need only
    these sums, and the solver writes the output once, after its iterations."""
    sums[:] = 0.0
    free_mass[:] = 0.0
    weighted = weight.shape[0] > 0
    distance = 0.0
    # Branch-free: whether a sample is clipped is unpredictable, and mispredicted branches cost
    # more than the arithmetic.
    for i in range(z.shape[0]):
        a = atom[i]
        w = weight[i] if weighted else 1.0
        value = min(max(z[i] - w * shift[a], lo), hi)
        sums[a] += w * value
        free_mass[a] += w * w * (lo < value < hi)
        distance += (value - z[i]) ** 2
    return 0.5 * distance


@jit
def free_sums(values, y, atom, weight, lo, hi, sums, free_mass):
    """Atom sums of ``weight * values`` and of ``weight**2`` over the samples free at ``y``."""
    sums[:] = 0.0
    free_mass[:] = 0.0
    weighted = weight.shape[0] > 0
    for i in range(y.shape[0]):
        a = atom[i]
        w = (weight[i] if weighted else 1.0) * (lo < y[i] < hi)
        sums[a] += w * values[i]
        free_mass[a] += w * w


@jit
def free_shift(values, y, atom, shift, weight, lo, hi, out):
    """``out = values - weight * shift[atom]`` on the samples free at ``y``, 0 elsewhere."""
    weighted = weight.shape[0] > 0
    for i in range(y.shape[0]):
        w = weight[i] if weighted else 1.0
        out[i] = (values[i] - w * shift[atom[i]]) * (lo < y[i] < hi)


#: the training loss of :func:`objective`: ``target`` and ``weight`` per sample, ``kind`` one of
#: the losses below, ``scale`` the unit of the squared error and ``penalty`` the weight of the
#: squared distortion ``(z - y)**2``
Loss = namedtuple("Loss", "target weight kind scale penalty")
#: the per-sample losses :func:`objective` knows: binary cross-entropy of probabilities, the
#: squared error in units of a scale, and binary cross-entropy of the probabilities of logits
LOG_LOSS, SQUARED_ERROR, LOGIT_LOG_LOSS = 0, 1, 2
#: the log loss clips probabilities to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP] (finite logs where
#: the projection puts a probability on 0 or 1)
PROBABILITY_CLIP = 1e-7


@jit
def objective(y, z, loss, grad_y, grad_z):
    """The training objective of a batch at its fair outputs ``y`` (raw outputs ``z``): the
    mean, weighted by ``loss.weight``, of ``loss(y_i, target_i) + penalty * (z_i - y_i)**2``
    (``loss`` a :class:`Loss`).

    Writes its partial gradient in ``y`` into ``grad_y`` and in ``z`` into ``grad_z`` (the
    penalty's). ``loss.kind`` is :data:`LOG_LOSS` (``y`` clipped to ``[PROBABILITY_CLIP, 1 -
    PROBABILITY_CLIP]``, each log bounded below by -100 and the derivative's denominator by
    1e-12, as in :func:`torch.nn.functional.binary_cross_entropy`), :data:`SQUARED_ERROR`
    (``((y - target) / scale)**2``) or :data:`LOGIT_LOG_LOSS` (the log loss of ``sigmoid(y)``
    for logits ``y``, as :func:`torch.nn.functional.binary_cross_entropy_with_logits`): the
    estimators' torch losses, computed in the same compiled call as the projection's gradient.
    """
    target, weight, kind, scale, penalty = loss
    total_weight = 0.0
    for i in range(y.shape[0]):
        total_weight += weight[i]
    # torch's order: sum(weight * terms) / total for the value, weight * (1 / total) per sample
    # for the gradient
    inverse = 1.0 / total_weight
    value = 0.0
    for i in range(y.shape[0]):
        distortion = z[i] - y[i]
        if kind == LOG_LOSS:
            p = min(max(y[i], PROBABILITY_CLIP), 1.0 - PROBABILITY_CLIP)
            # one logarithm for a 0/1 label (the other term is zero): most of the pass's time
            if target[i] == 1.0:
                term = -max(np.log(p), -100.0)
            elif target[i] == 0.0:
                term = -max(np.log1p(-p), -100.0)
            else:
                term = -(target[i] * max(np.log(p), -100.0)
                         + (1.0 - target[i]) * max(np.log1p(-p), -100.0))
            # (the clip passes the gradient where y lies within it, ends included)
            inside = PROBABILITY_CLIP <= y[i] <= 1.0 - PROBABILITY_CLIP
            slope = (p - target[i]) / max(p * (1.0 - p), 1e-12) if inside else 0.0
        elif kind == LOGIT_LOG_LOSS:
            # softplus(y) - target * y, in the form that neither overflows nor cancels
            term = max(y[i], 0.0) - target[i] * y[i] + np.log1p(np.exp(-abs(y[i])))
            slope = 1.0 / (1.0 + np.exp(-y[i])) - target[i]
        else:
            residual = (y[i] - target[i]) / scale
            term = residual * residual
            slope = 2.0 * residual / scale
        value += weight[i] * (term + penalty * distortion * distortion)
        share = weight[i] * inverse
        grad_y[i] = share * (slope - 2.0 * penalty * distortion)
        grad_z[i] = share * 2.0 * penalty * distortion
    return value / total_weight


#: The rows ``G y <= h`` as the compiled passes read them. Row ``r`` is the difference of two
#: *statistics* of the atom sums of ``y``, ``stat[plus[r]] - stat[minus[r]]`` (an index of -1
#: stands for no statistic), and the two have disjoint supports (every builder guarantees it).
#: The statistics are a sparse matrix over the atoms, stored by statistic (``stat_ptr``,
#: ``stat_atom``, ``stat_coef``) and by atom (``atom_ptr``, ``atom_stat``, ``atom_coef``). A
#: parity constraint on ``k`` groups is then ``k`` statistics (the group means) and ``k (k - 1)``
#: rows of two indices each: no product with a row costs more than its two statistics.
#: ``family_size[f]`` and ``family_start[f]`` describe the pair families: family ``f`` holds
#: every ordered pair of its ``k = family_size[f]`` members, pair ``(i, j)`` (``i != j``) being
#: row ``family_start[f] + i * (k - 1) + j - (j > i)``, with ``h`` of the form ``c + o_i - o_j``
#: (see :class:`skfair.constraints.ConstraintSet`); the rows of the families come first.
Rows = namedtuple("Rows", "stat_ptr stat_atom stat_coef atom_ptr atom_stat atom_coef plus minus "
                          "family_size family_start")

#: One constraint set as the compiled passes read it (:attr:`skfair.constraints.ConstraintSet.
#: host_problem`): the ``atom`` of every sample, the sample ``weight`` (empty for unit weights),
#: the :class:`Rows`, their bounds ``h``, and per atom the total weight ``mass`` and total
#: squared weight ``square_mass`` of its samples.
Problem = namedtuple("Problem", "atom weight rows h mass square_mass")


@jit
def violation_and_range(values, atom, weight, rows, h):
    """``(max(G @ values - h), min(values), max(values))`` with ``G`` in factored form
    (``-inf`` without rows; all three NaN if a value is NaN; the range is zeros for an empty
    array)."""
    sums = np.zeros(rows.atom_ptr.size - 1)
    weighted = weight.shape[0] > 0
    low, high = value_range(values)
    if low != low:
        return np.nan, low, high
    for i in range(values.shape[0]):
        sums[atom[i]] += (weight[i] if weighted else 1.0) * values[i]
    violation = -np.inf
    for value in row_values(rows, sums, h):
        violation = max(violation, value)
    return violation, low, high


@jit
def stat_values(rows, sums):
    """Every statistic at the atom sums ``sums``."""
    n_stats = rows.stat_ptr.size - 1
    out = np.zeros(n_stats)
    for s in range(n_stats):
        total = 0.0
        for e in range(rows.stat_ptr[s], rows.stat_ptr[s + 1]):
            total += rows.stat_coef[e] * sums[rows.stat_atom[e]]
        out[s] = total
    return out


@jit
def row_values(rows, sums, h):
    """``G y - h`` from the atom sums of ``y``."""
    values = stat_values(rows, sums)
    out = np.empty(rows.plus.size)
    for r in range(rows.plus.size):
        total = -h[r]
        if rows.plus[r] >= 0:
            total += values[rows.plus[r]]
        if rows.minus[r] >= 0:
            total -= values[rows.minus[r]]
        out[r] = total
    return out


@jit
def atom_shift(rows, lam):
    """``G.T @ lam`` per atom: how far the multipliers ``lam`` shift each atom's samples."""
    net = np.zeros(rows.stat_ptr.size - 1)
    for r in range(rows.plus.size):
        if lam[r] != 0.0:
            if rows.plus[r] >= 0:
                net[rows.plus[r]] += lam[r]
            if rows.minus[r] >= 0:
                net[rows.minus[r]] -= lam[r]
    shift = np.zeros(rows.atom_ptr.size - 1)
    for s in range(net.size):
        if net[s] != 0.0:
            for e in range(rows.stat_ptr[s], rows.stat_ptr[s + 1]):
                shift[rows.stat_atom[e]] += net[s] * rows.stat_coef[e]
    return shift


@jit
def row_gram(rows, mass, selected):
    """``G_S diag(mass) G_S^T`` on the rows ``selected`` (``mass`` per atom)."""
    return pair_gram(rows, mass, rows.plus[selected], rows.minus[selected])


@jit
def pair_gram(rows, mass, plus, minus):
    """The Gram matrix, weighted by ``mass`` per atom, of the vectors ``stat[plus[i]] -
    stat[minus[i]]`` (-1: none), through the products of their statistics: one pass over the
    atoms, each pair of statistics that share an atom counted once per atom."""
    k = plus.size
    local = np.full(rows.stat_ptr.size - 1, -1, np.int64)
    n_local = 0
    for i in range(k):
        for s in (plus[i], minus[i]):
            if s >= 0 and local[s] < 0:
                local[s] = n_local
                n_local += 1
    products = np.zeros((n_local, n_local))
    for a in range(rows.atom_ptr.size - 1):
        if mass[a] == 0.0:
            continue
        for e in range(rows.atom_ptr[a], rows.atom_ptr[a + 1]):
            p = local[rows.atom_stat[e]]
            if p < 0:
                continue
            for f in range(rows.atom_ptr[a], rows.atom_ptr[a + 1]):
                q = local[rows.atom_stat[f]]
                if q >= 0:
                    products[p, q] += rows.atom_coef[e] * mass[a] * rows.atom_coef[f]
    gram = np.zeros((k, k))
    for i in range(k):
        pi, mi = plus[i], minus[i]
        for j in range(i + 1):
            pj, mj = plus[j], minus[j]
            total = 0.0
            if pi >= 0 and pj >= 0:
                total += products[local[pi], local[pj]]
            if pi >= 0 and mj >= 0:
                total -= products[local[pi], local[mj]]
            if mi >= 0 and pj >= 0:
                total -= products[local[mi], local[pj]]
            if mi >= 0 and mj >= 0:
                total += products[local[mi], local[mj]]
            gram[i, j] = gram[j, i] = total
    return gram


@jit
def stat_squares(rows, mass):
    """``sum_a coef[s, a]**2 * mass[a]`` of every statistic ``s``, then 0 for "none" (index
    -1 reads the last entry): the diagonal of the statistics' Gram matrix."""
    n_stats = rows.stat_ptr.size - 1
    out = np.zeros(n_stats + 1)
    for s in range(n_stats):
        for e in range(rows.stat_ptr[s], rows.stat_ptr[s + 1]):
            out[s] += rows.stat_coef[e] ** 2 * mass[rows.stat_atom[e]]
    return out


@jit
def stat_ranges(rows, mass, lo, hi):
    """``(smallest, largest, size)`` of every statistic over outputs within ``[lo, hi]``
    (``mass``: total weight per atom), and its 1-norm ``sum |coef| * mass``."""
    n_stats = rows.stat_ptr.size - 1
    smallest, largest, size = np.zeros(n_stats), np.zeros(n_stats), np.zeros(n_stats)
    for s in range(n_stats):
        for e in range(rows.stat_ptr[s], rows.stat_ptr[s + 1]):
            share = rows.stat_coef[e] * mass[rows.stat_atom[e]]
            if share != 0.0:  # an infinite bound times zero contributes nothing
                smallest[s] += share * (lo if share > 0 else hi)
                largest[s] += share * (hi if share > 0 else lo)
                size[s] += abs(share)
    return smallest, largest, size


@jit
def value_range(values):
    """``(min, max)`` of ``values`` (NaN if one is NaN, zeros for an empty array)."""
    if values.shape[0] == 0:
        return 0.0, 0.0
    low, high = np.inf, -np.inf
    for i in range(values.shape[0]):
        value = values[i]
        low = min(low, value)
        high = max(high, value)
        if value != value:
            return np.nan, np.nan
    return low, high


@jit
def mixed_radix(codes, atom, counts):
    """Number every row of the integer matrix ``codes`` (at least one entry) by its
    combination of values: ``atom[i]`` = the mixed-radix number of row ``i`` in base ``radix
    = max + 1`` (first column most significant), ``counts[k]`` = how many rows have number ``k``.

    Returns ``(min, radix, space)`` with ``space = radix ** n_columns``; ``atom`` and
    ``counts[:space]`` are written only when ``min >= 0`` and ``space <= counts.size`` (else
    ``space`` is ``counts.size + 1``).
    """
    # over the flat codes: one loop that the compiler vectorizes (nested loops do not)
    flat = codes.ravel()
    low = high = flat[0]
    for k in range(flat.shape[0]):
        low = min(low, flat[k])
        high = max(high, flat[k])
    radix = high + 1
    space = 1
    for _ in range(codes.shape[1]):
        space *= radix
        if space > counts.size:  # (also keeps the product from overflowing)
            return low, radix, counts.size + 1
    if low < 0:
        return low, radix, space
    counts[:space] = 0.0
    for i in range(codes.shape[0]):
        code = 0
        for j in range(codes.shape[1]):
            code = code * radix + codes[i, j]
        atom[i] = code
        counts[code] += 1.0
    return low, radix, space


@jit
def first_unattainable(rows, mass, h, lo, hi):
    """The first row ``r`` whose smallest value over the box exceeds ``h[r]`` (beyond
    rounding), and that value; ``(-1, 0.0)`` when every row can be met. The two statistics of
    a row have disjoint supports: its smallest value is the smallest of the first minus the
    largest of the second."""
    smallest, largest, _ = stat_ranges(rows, mass, lo, hi)
    for r in range(rows.plus.size):
        value = 0.0
        if rows.plus[r] >= 0:
            value += smallest[rows.plus[r]]
        if rows.minus[r] >= 0:
            value -= largest[rows.minus[r]]
        if value > h[r] + 1e-9 * (1.0 + abs(h[r])):
            return r, value
    return -1, 0.0

