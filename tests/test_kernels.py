"""The compiled passes over the samples (their agreement with the dense rows of every constraint
is in test_constraints.py)."""

import numba
import numpy as np
import pytest
import torch
from conftest import torch_objective

from skfair import _kernels
from skfair._host import host_vector
from skfair._constraint_set import dense_coef, explicit_rows, statistics


def test_without_a_writable_cache_the_loops_still_compile(monkeypatch):
    """A read-only install without a home directory: numba cannot cache, the import must not
    fail."""
    real_njit = numba.njit

    def njit(*args, **options):
        if options.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return real_njit(*args, **options)

    monkeypatch.setattr(numba, "njit", njit)

    def add_one(x):
        return x + 1.0

    assert _kernels.jit(add_one)(1.0) == 2.0


def test_clip_shift_and_its_sums_with_one_sided_and_no_bounds():
    z = np.array([-1.0, 0.2, 0.7, 3.0])
    atom = np.array([0, 1, 0, 1])
    shift = np.array([0.1, -0.2])
    weight = np.array([1.0, 2.0, 0.5, 1.0])
    for lo, hi in [(0.0, 1.0), (-np.inf, 1.0), (0.0, np.inf), (-np.inf, np.inf)]:
        out, sums, free_mass = np.empty(4), np.empty(2), np.empty(2)
        _kernels.clip_shift(z, atom, shift, weight, lo, hi, out)
        distance = _kernels.shifted_sums(z, atom, shift, weight, lo, hi, sums, free_mass)
        y = np.clip(z - weight * shift[atom], lo, hi)
        free = (y > lo) & (y < hi)
        np.testing.assert_allclose(out, y)
        np.testing.assert_allclose(sums, np.bincount(atom, weight * y, minlength=2))
        np.testing.assert_allclose(free_mass, np.bincount(atom, weight**2 * free, minlength=2))
        assert distance == 0.5 * np.sum((y - z) ** 2)


def test_host_vectors_share_memory_with_contiguous_tensors_and_copy_strided_ones():
    tensor = torch.arange(6, dtype=torch.float64, requires_grad=True)
    assert np.shares_memory(host_vector(tensor), tensor.detach().numpy())
    strided = tensor.detach()[::2]
    copy = host_vector(strided)
    assert copy.flags.c_contiguous
    np.testing.assert_array_equal(copy, [0.0, 2.0, 4.0])


def test_ranges_propagate_nan_and_are_zero_when_empty():
    assert _kernels.value_range(np.array([0.5, -2.0, 3.0])) == (-2.0, 3.0)
    assert all(np.isnan(_kernels.value_range(np.array([0.5, np.nan, 3.0]))))
    assert _kernels.value_range(np.empty(0)) == (0.0, 0.0)
    coef, h = explicit_rows(np.array([[1.0, -1.0]])), np.array([0.1])
    atom, values = np.array([0, 1, 1]), np.array([0.5, 0.2, 0.4])
    violation, low, high = _kernels.violation_and_range(values, atom, np.empty(0), coef, h)
    assert violation == pytest.approx(0.5 - 0.6 - 0.1) and (low, high) == (0.2, 0.5)
    violation, _, _ = _kernels.violation_and_range(values, atom, np.array([2.0, 1.0, 0.5]),
                                                   coef, h)
    assert violation == pytest.approx(1.0 - 0.4 - 0.1)
    nan = np.array([0.5, np.nan, 0.4])
    assert all(np.isnan(_kernels.violation_and_range(nan, atom, np.empty(0), coef, h)))


def test_mixed_radix_codes_and_counts():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, (50, 2))
    codes[0] = (2, 1)  # the largest code is 2: radix 3, 9 combinations
    atom, counts = np.empty(50, dtype=np.int64), np.full(12, -1.0)
    assert _kernels.mixed_radix(codes, atom, counts) == (codes.min(), 3, 9)
    np.testing.assert_array_equal(atom, codes[:, 0] * 3 + codes[:, 1])
    np.testing.assert_array_equal(counts[:9], np.bincount(atom, minlength=9))
    assert (counts[9:] == -1.0).all()  # beyond the code space: untouched


def test_mixed_radix_reports_too_large_spaces_and_negative_codes():
    codes = np.array([[0, 0, 0], [6, 0, 1]])
    atom, counts = np.full(2, -1), np.full(300, -1.0)
    # 7**3 = 343 combinations do not fit 300 counts: nothing written
    assert _kernels.mixed_radix(codes, atom, counts) == (0, 7, 301)
    assert (atom == -1).all() and (counts == -1.0).all()
    # a code space past the int64 range stops growing once it exceeds the counts
    huge = np.array([[0] * 40, [2**40] * 40])
    assert _kernels.mixed_radix(huge, np.empty(2, dtype=np.int64), counts)[2] == 301
    assert _kernels.mixed_radix(np.array([[-1, 2]]), atom, counts)[0] == -1
    assert (atom == -1).all()


def test_factored_rows_match_their_dense_matrix():
    """Rows that are differences of two statistics (or one, or none): every compiled product
    equals numpy's on the dense matrix."""
    rng = np.random.default_rng(1)
    n_stats, n_atoms, m = 5, 7, 12
    stat = np.where(rng.uniform(size=(n_stats, n_atoms)) < 0.5, rng.normal(size=(n_stats, n_atoms)),
                    0.0)
    plus, minus = rng.integers(-1, n_stats, m), rng.integers(-1, n_stats, m)
    rows = statistics(stat, plus, minus, np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))
    padded = np.vstack([stat, np.zeros(n_atoms)])
    dense = padded[plus] - padded[minus]
    np.testing.assert_array_equal(dense_coef(rows, n_atoms), dense)
    sums, lam, h = rng.normal(size=n_atoms), rng.uniform(size=m), rng.normal(size=m)
    mass, chosen = rng.uniform(0.5, 2.0, n_atoms), np.array([0, 3, 4, 9])
    np.testing.assert_allclose(_kernels.row_values(rows, sums, h), dense @ sums - h, atol=1e-13)
    np.testing.assert_allclose(_kernels.atom_shift(rows, lam), dense.T @ lam, atol=1e-13)
    np.testing.assert_allclose(_kernels.row_gram(rows, mass, chosen),
                               dense[chosen] @ np.diag(mass) @ dense[chosen].T, atol=1e-13)
    np.testing.assert_allclose(_kernels.stat_squares(rows, mass), np.r_[stat**2 @ mass, 0.0],
                               atol=1e-13)


def test_first_unattainable_row_with_open_bounds():
    """A row's smallest value over the box; a zero coefficient times an infinite bound adds
    nothing (not NaN)."""
    coef = explicit_rows(np.array([[1.0, 0.0], [-1.0, 0.0]]))
    mass = np.array([1.0, 1.0])
    # y in [0.2, inf): row 0 (y_0 <= h) needs h >= 0.2, row 1 (-y_0 <= h) can always hold
    assert _kernels.first_unattainable(coef, mass, np.array([0.3, -5.0]), 0.2, np.inf) == (-1, 0.0)
    assert _kernels.first_unattainable(coef, mass, np.array([0.1, -5.0]), 0.2, np.inf) == (0, 0.2)
    # y in (-inf, 1]: row 1 needs h >= -1
    assert _kernels.first_unattainable(coef, mass, np.array([0.0, -2.0]), -np.inf, 1.0) == (1, -1.0)


@pytest.mark.parametrize("penalty", [0.0, 3.0])
@pytest.mark.parametrize("loss", [_kernels.LOG_LOSS, _kernels.SQUARED_ERROR])
def test_objective_is_the_estimators_torch_loss(loss, penalty):
    """The compiled training objective and its two partial gradients equal the torch formula
    the estimators use (binary cross-entropy of clipped probabilities; squared error in units
    of a scale), including probabilities on the bounds and on the clip's ends."""
    rng = np.random.default_rng(0)
    clip = _kernels.PROBABILITY_CLIP
    if loss == _kernels.LOG_LOSS:
        y = np.r_[0.0, 1.0, 1e-9, clip, 1 - clip, 1 - 1e-9, rng.uniform(0, 1, 10)]
        target = rng.integers(0, 2, y.size).astype(float)
        scale = 1.0
    else:
        y = rng.normal(0, 3, 16)
        target = rng.normal(0, 3, 16)
        scale = 2.5
    z = y + rng.normal(0, 0.2, y.size)
    weight = rng.uniform(0.2, 3.0, y.size)
    grad_y, grad_z = np.empty(y.size), np.empty(y.size)
    value = _kernels.objective(y, z, _kernels.Loss(target, weight, loss, scale, penalty), grad_y,
                               grad_z)

    y_t, z_t = (torch.tensor(v, requires_grad=True) for v in (y, z))
    want = torch_objective(y_t, z_t, torch.tensor(target), torch.tensor(weight), loss, scale,
                           penalty)
    want.backward()
    assert value == pytest.approx(float(want.detach()), rel=1e-14)
    np.testing.assert_allclose(grad_y, y_t.grad.numpy(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grad_z, z_t.grad.numpy(), rtol=1e-13, atol=1e-15)


def test_stale_machine_code_is_retired_when_a_compiled_module_changes(tmp_path):
    """A change of any compiled module touches all of them (so numba, which checks each
    function's cache against its own file only, recompiles the callers too); no change, no
    touch."""
    import os

    sources = [tmp_path / "_kernels.py", tmp_path / "_exact.py"]
    for source in sources:
        source.write_text(f"# {source.name}\n")
    record = tmp_path / "__pycache__" / "numba-sources.sha256"
    assert _kernels.retire_stale_machine_code(sources, record) and record.is_file()

    def age():
        for source in sources:
            os.utime(source, (1e9, 1e9))

    age()
    assert not _kernels.retire_stale_machine_code(sources, record)
    assert [s.stat().st_mtime for s in sources] == [1e9, 1e9]
    sources[0].write_text("# _kernels.py, edited\n")
    age()
    assert _kernels.retire_stale_machine_code(sources, record)
    assert all(s.stat().st_mtime > 1e9 for s in sources)  # the unchanged _exact.py too
    assert not _kernels.retire_stale_machine_code(sources, record)
