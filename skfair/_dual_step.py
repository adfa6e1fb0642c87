"""The compiled arithmetic of one primal-dual step of a stream (:mod:`skfair._streaming`).

A stream's batches are small: one compiled call per step costs less than the tens of numpy and
torch calls on arrays of a few elements that the same arithmetic takes otherwise.
"""

import math

import numpy as np

from ._kernels import atom_shift, clip_shift, jit, row_values


@jit
def dual_step(z, atom, weight, rows, h, norms, gram, index, reference_rows, reference_signs,
              reference_groups, scaled_rows, scaled_present, scaled_absent, pairs, pair_groups,
              lo, hi, threshold, n, size_squares, eta0, previous_step, max_gain, epsilon,
              duals, has_dual, row_sums, recorded, group_totals, group_counts, pair_sums,
              pair_uses, y):
    """One primal-dual step (see :mod:`skfair._streaming`) of the batch ``z`` whose rows are
    ``rows`` (factored, over the atoms ``atom``, samples weighted by ``weight``) and ``h``;
    ``norms`` and ``gram`` are the diagonal of ``G G^T`` and ``G G^T``, the other arguments
    those of :class:`skfair._streaming._StepRows` and the stream's arrays: row ``r`` is entry
    ``index[r]`` of the multipliers ``duals`` and the row sums ``row_sums``, a group entry
    ``g`` has the pooled sum of outputs ``group_totals[g]`` and count ``group_counts[g]``, a
    reference pair ``p`` the sums ``pair_sums[p]`` and ``pair_uses[p]``.

    Writes the outputs into ``y``: ``clip(z - G^T (lam / scale), lo, hi)``, then ``1[y >
    threshold]`` unless ``threshold`` is NaN. Returns ``(step_size, largest, gap)``: the step's
    ``alpha_t`` (``size_squares`` includes this batch's ``n**2``), the largest updated
    multiplier (infinite when one overflows) and the batch's gap ``max(G y - h) + epsilon``.
    Unless a multiplier overflows, the updated multipliers are written to ``duals`` (flagging
    ``has_dual``), ``n (G y - h + epsilon)`` is added to ``row_sums`` (flagging ``recorded``)
    and ``n`` times the reference mean of each pair to its sums; otherwise nothing is written
    but ``y``.
    """
    m = index.size
    # the running means of the absent groups, and the divisors of the rows that use them
    h = h.copy()
    for i in range(reference_rows.size):
        g = reference_groups[i]
        h[reference_rows[i]] += reference_signs[i] * (group_totals[g] / group_counts[g])
    scale = norms.copy()
    for i in range(scaled_rows.size):
        scale[scaled_rows[i]] *= 1.0 + (group_counts[scaled_present[i]]
                                        / group_counts[scaled_absent[i]])
    lam, inverse = np.empty(m), np.zeros(m)
    for r in range(m):
        lam[r] = duals[index[r]]
        if scale[r] > 0:
            inverse[r] = 1.0 / scale[r]
    clip_shift(z, atom, atom_shift(rows, lam * inverse), weight, lo, hi, y)
    if threshold == threshold:
        for i in range(y.size):
            y[i] = 1.0 if y[i] > threshold else 0.0
    sums = np.zeros(rows.atom_ptr.size - 1)
    weighted = weight.shape[0] > 0
    for i in range(y.size):
        sums[atom[i]] += weight[i] * y[i] if weighted else y[i]
    violation = row_values(rows, sums, h)
    # alpha_t = eta0 / sqrt(sum_s n_s^2), no larger than the previous step (the bound needs a
    # non-increasing sequence) and capped by this batch's stable limit MAX_GAIN / (n ||M_t||)
    step_size = min(previous_step, eta0 / math.sqrt(size_squares))
    gain = 0.0
    for r in range(m):
        if lam[r] > 0 or violation[r] > 0:  # the rows taking part in the step
            total = 0.0
            for q in range(m):
                if lam[q] > 0 or violation[q] > 0:
                    total += abs(gram[r, q]) * inverse[q]
            gain = max(gain, total)
    if gain > 0:
        step_size = min(step_size, max_gain / (n * gain))
    rate = step_size * n
    largest, finite = 0.0, True
    for r in range(m):
        value = lam[r] + rate * violation[r]
        lam[r] = 0.0 if value <= 0.0 else value  # NaN stays NaN
        finite = finite and math.isfinite(lam[r])
        largest = max(largest, lam[r])
    if not finite:
        return step_size, np.inf, np.nan
    gap = -np.inf
    for r in range(m):
        duals[index[r]] = lam[r]
        has_dual[index[r]] = True
        value = violation[r] + epsilon
        row_sums[index[r]] += n * value
        recorded[index[r]] = True
        gap = max(gap, value)
    for i in range(pairs.size):
        g = pair_groups[i]
        pair_sums[pairs[i]] += n * (group_totals[g] / group_counts[g])
        pair_uses[pairs[i]] += n
    return step_size, largest, gap


@jit
def record_outputs(y, atom, n_atoms, present, combinations, groups, touched, combination_totals,
                   combination_counts, group_totals, group_counts, group_start,
                   group_combinations):
    """Add a batch's outputs ``y`` to the stream's pooled statistics: atom ``present[k]`` of
    the batch (``atom`` of each sample) is the stream's combination ``combinations[k]``, whose
    groups are ``groups[k]``; ``touched`` lists those groups once each, and group ``g``'s
    combinations are ``group_combinations[group_start[g]:group_start[g + 1]]``, in the order the
    stream met them. Each touched group's pooled sum of outputs is summed anew over its
    combinations in that order (:func:`pool_groups`), so that it does not depend on how the
    stream was batched. Returns how many groups the batch has that the stream had not seen."""
    sums, mass = np.zeros(n_atoms), np.zeros(n_atoms)
    for i in range(y.size):
        sums[atom[i]] += y[i]
        mass[atom[i]] += 1.0
    new = 0
    for k in range(present.size):
        c = combinations[k]
        combination_totals[c] += sums[present[k]]
        combination_counts[c] += mass[present[k]]
        for a in range(groups.shape[1]):
            g = groups[k, a]
            if group_counts[g] == 0:
                new += 1
            group_counts[g] += mass[present[k]]
    pool_groups(touched, group_start, group_combinations, combination_totals, group_totals)
    return new


@jit
def pool_groups(touched, group_start, group_combinations, combination_totals, group_totals):
    """Each ``touched`` group's pooled sum of outputs, summed over its combinations (see
    :func:`record_outputs`) in the order the stream met them."""
    for g in touched:
        total = 0.0
        for e in range(group_start[g], group_start[g + 1]):
            total += combination_totals[group_combinations[e]]
        group_totals[g] = total
