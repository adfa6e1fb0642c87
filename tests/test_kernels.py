"""The compiled passes over the samples (their agreement with the dense rows of every constraint
is in test_constraints.py)."""

import numba
import numpy as np
import torch

from skfair import _kernels


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

    assert _kernels._jit(add_one)(1.0) == 2.0


def test_clip_shift_with_one_sided_and_no_bounds():
    z = np.array([-1.0, 0.2, 0.7, 3.0])
    atom = np.array([0, 1, 0, 1])
    shift = np.array([0.1, -0.2])
    weight = np.array([1.0, 2.0, 0.5, 1.0])
    for lo, hi in [(0.0, 1.0), (-np.inf, 1.0), (0.0, np.inf), (-np.inf, np.inf)]:
        out, sums, free_mass = np.empty(4), np.empty(2), np.empty(2)
        distance = _kernels.clip_shift(z, atom, shift, weight, lo, hi, out, sums, free_mass)
        y = np.clip(z - weight * shift[atom], lo, hi)
        free = (y > lo) & (y < hi)
        np.testing.assert_allclose(out, y)
        np.testing.assert_allclose(sums, np.bincount(atom, weight * y, minlength=2))
        np.testing.assert_allclose(free_mass, np.bincount(atom, weight**2 * free, minlength=2))
        assert distance == 0.5 * np.sum((y - z) ** 2)


def test_host_vectors_share_memory_with_contiguous_tensors_and_copy_strided_ones():
    tensor = torch.arange(6, dtype=torch.float64, requires_grad=True)
    assert np.shares_memory(_kernels.host_vector(tensor), tensor.detach().numpy())
    strided = tensor.detach()[::2]
    copy = _kernels.host_vector(strided)
    assert copy.flags.c_contiguous
    np.testing.assert_array_equal(copy, [0.0, 2.0, 4.0])
