"""One exact projection over a Dask collection (:mod:`skfair.dask`), on a real cluster.

A ``distributed.LocalCluster`` of two worker processes (one thread each) is started and closed by
this module. The global projection must equal :func:`skfair.layer.project` on the concatenated
data, and its outputs must meet the constraint when checked with independent group means.
"""

import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch

from skfair import FairNeuralClassifier, FairNeuralRegressor
from skfair.constraints import InfeasibleConstraintError, get_constraint, intersect_groups
from skfair.layer import GUARANTEE_TOL
from skfair.layer import project as layer_project

if os.environ.get("CI"):
    import distributed  # CI installs the dask extra: without it this module fails, not skips
else:
    distributed = pytest.importorskip("distributed")

import dask  # noqa: E402 - after the skip
import dask.array as da  # noqa: E402
import dask.dataframe as dd  # noqa: E402

import skfair.dask as sd  # noqa: E402
from tests.conftest import biased_frame  # noqa: E402

CONSTRAINTS = ["demographic_parity", "equalized_odds", "equal_opportunity", "mean_residual",
               "disparate_impact", "error_rate_parity", "false_positive_rate_parity"]


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def instance(seed, n=3000, n_attributes=None, k=None, spread=0.4, weighted=None):
    """A random problem: raw outputs, group codes (n, n_attributes), weights (or None) and
    binary labels; the groups' raw means differ."""
    rng = np.random.default_rng(seed)
    n_attributes = n_attributes or int(rng.integers(1, 3))
    k = k or int(rng.integers(2, 7))
    groups = rng.integers(0, k, size=(n, n_attributes))
    z = rng.normal(0.5, spread, n) + 0.15 * groups[:, 0]
    weight = rng.uniform(0.1, 2.0, n) if (weighted if weighted is not None
                                          else rng.uniform() < 0.5) else None
    labels = (rng.uniform(size=n) < 0.3 + 0.1 * groups[:, -1]).astype(np.float64)
    return z, groups, weight, labels


def reference(z, groups, constraint, epsilon, bounds, weight=None, y_true=None,
              intersectional=False):
    """:func:`skfair.layer.project` of the concatenated data, and the rows it projected on."""
    codes = torch.from_numpy(groups)
    if intersectional:
        codes = intersect_groups(codes)
    cs = get_constraint(constraint).build(
        codes, epsilon=epsilon, y_true=None if y_true is None else torch.from_numpy(y_true),
        sample_weight=None if weight is None else torch.from_numpy(weight))
    y, _ = layer_project(torch.from_numpy(z), cs, bounds)
    return y.numpy(), cs


def chunked(values, chunks):
    chunks = (tuple(chunks),) + ((values.shape[1],) if values.ndim == 2 else ())
    return da.from_array(values, chunks=chunks)


def assert_equal_to_reference(y, expected):
    """Equal to 1e-9 times the outputs' scale (1e-9 for outputs of magnitude one or less)."""
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-9 * scale)


def assert_parity(y, groups, epsilon, weight=None, bounds=None):
    """The largest gap of weighted group means per attribute, computed with pandas from the
    outputs alone, is at most epsilon (to the guarantee's tolerance); the bounds hold."""
    frame = pd.DataFrame(groups).add_prefix("a")
    frame["w"] = 1.0 if weight is None else weight
    frame["wy"] = frame["w"] * y
    scale = max(1.0, float(np.abs(y).max()))
    for column in frame.columns[:groups.shape[1]]:
        sums = frame.groupby(column)[["wy", "w"]].sum()
        means = (sums["wy"] / sums["w"])[sums["w"] > 0]
        assert means.max() - means.min() <= epsilon + 2 * GUARANTEE_TOL * scale
    if bounds is not None:
        assert y.min() >= bounds[0] and y.max() <= bounds[1]


# ---------------------------------------------------------------------------------------------
# The rows of the whole collection from its atoms' table (public constraint API only)
@pytest.mark.parametrize("name", CONSTRAINTS)
def test_rows_from_one_row_per_atom(name):
    """A batch of one row per atom, weighted by the atom's total weight (and, for
    ``mean_residual``, carrying the atom's mean target), gives the rows of the whole batch:
    the column of every sample, ``h`` and the keys."""
    z, groups, weight, labels = instance(3, n=2000, n_attributes=2, k=4, weighted=True)
    constraint = get_constraint(name)
    y_true = labels if constraint.label_cells is not None else z * 0.7
    full = constraint.build(torch.from_numpy(groups), epsilon=0.03,
                            y_true=torch.from_numpy(y_true), sample_weight=torch.from_numpy(weight))
    codes = np.column_stack([groups, labels]) if constraint.label_cells is not None else groups
    table, row = np.unique(codes, axis=0, return_inverse=True)
    mass = np.bincount(row, weights=weight)
    target = np.bincount(row, weights=weight * y_true) / mass
    small = constraint.build(
        torch.from_numpy(table[:, :groups.shape[1]].astype(np.int64)), epsilon=0.03,
        y_true=torch.from_numpy(table[:, -1] if constraint.label_cells is not None else target),
        sample_weight=torch.from_numpy(mass))
    assert list(small.keys) == list(full.keys)
    np.testing.assert_allclose(small.h.numpy(), full.h.detach().numpy(), rtol=1e-12, atol=1e-15)
    columns_full = full.coef.numpy()[:, full.atom.numpy()]
    columns_small = small.coef.numpy()[:, small.atom.numpy()][:, row]
    np.testing.assert_allclose(columns_small, columns_full, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------
# The global projection
@pytest.mark.parametrize("seed", range(8))
def test_equals_single_machine_projection(client, seed):
    """Random instances (1-2 attributes, 2-6 groups, weights or not, bounds (0, 1) or None,
    epsilon 0 or 0.05, unequal chunks): the projection of the concatenated data to 1e-9,
    and the constraint holds by independent group means."""
    z, groups, weight, _ = instance(seed)
    rng = np.random.default_rng(100 + seed)
    epsilon = (0.0, 0.05)[seed % 2]
    bounds = ((0.0, 1.0), None)[(seed // 2) % 2]
    cuts = np.sort(rng.choice(np.arange(1, len(z)), size=int(rng.integers(1, 6)), replace=False))
    chunks = np.diff(np.r_[0, cuts, len(z)])
    y, info = sd.project(chunked(z, chunks), chunked(groups, chunks), epsilon=epsilon,
                         bounds=bounds, sample_weight=None if weight is None
                         else chunked(weight, chunks))
    assert isinstance(y, da.Array) and y.chunks[0] == tuple(chunks)
    values = y.compute()
    expected, cs = reference(z, groups, "demographic_parity", epsilon, bounds, weight)
    assert_equal_to_reference(values, expected)
    assert_parity(values, groups, epsilon, weight, bounds)
    assert info["max_violation"] <= info["tolerance"]
    assert info["n_rows"] == cs.n_rows and info["n_samples"] == len(z)
    assert set(info["duals"]) == set(cs.keys)
    assert info["n_passes"] >= 1


@pytest.mark.parametrize("name", CONSTRAINTS[1:])
def test_other_constraints(client, name):
    """Label cells, targets in the rows, ratios and expected errors: the same projection."""
    z, groups, weight, labels = instance(11, n=2500, n_attributes=2, k=3, weighted=True)
    y_true = np.clip(z * 0.6 + 0.1, 0.0, 1.0) if name == "mean_residual" else labels
    chunks = (700, 0, 1300, 500)
    y, info = sd.project(chunked(z, chunks), chunked(groups, chunks), name, epsilon=0.02,
                         sample_weight=chunked(weight, chunks), y_true=chunked(y_true, chunks))
    expected, cs = reference(z, groups, name, 0.02, (0.0, 1.0), weight, y_true)
    values = y.compute()
    assert_equal_to_reference(values, expected)
    violation = float((cs.dense().numpy() @ values - cs.h.detach().numpy()).max())
    assert violation <= GUARANTEE_TOL


def test_intersectional_and_far_outputs(client):
    """Raw outputs far outside the bounds, and unbounded outputs of large spread, with the
    groups' combinations constrained: the same projection to 1e-9 of the outputs' scale."""
    z, groups, weight, _ = instance(5, n=3000, n_attributes=2, k=3, spread=30.0, weighted=True)
    chunks = (1000, 1000, 1000)
    for bounds in ((0.0, 1.0), (None, 1.0), None):
        y, _ = sd.project(chunked(z, chunks), chunked(groups, chunks), epsilon=0.01,
                          bounds=bounds, sample_weight=chunked(weight, chunks),
                          intersectional=True)
        expected, _ = reference(z, groups, "demographic_parity", 0.01, bounds, weight,
                                intersectional=True)
        assert_equal_to_reference(y.compute(), expected)


def test_absent_groups_empty_and_unequal_partitions(client):
    """Partitions that hold one group each (sorted data), empty partitions, and partitions of
    3 and 2,000 rows; a dask Series keeps its index and divisions."""
    z, groups, weight, _ = instance(7, n=3000, n_attributes=1, k=4, weighted=False)
    order = np.argsort(groups[:, 0], kind="stable")
    z, groups = z[order], groups[order]
    chunks = (0, 2000, 0, 3, 600, 397, 0)
    y, info = sd.project(chunked(z, chunks), chunked(groups, chunks), epsilon=0.0)
    expected, _ = reference(z, groups, "demographic_parity", 0.0, (0.0, 1.0))
    values = y.compute()
    assert y.chunks[0] == chunks
    assert_equal_to_reference(values, expected)
    assert_parity(values, groups, 0.0, bounds=(0.0, 1.0))
    # the same data as a dask DataFrame with a non-trivial index, 5 partitions
    frame = pd.DataFrame({"z": z, "g": groups[:, 0]}, index=np.arange(len(z)) * 3 + 7)
    ddf = dd.from_pandas(frame, npartitions=5)
    y, _ = sd.project(ddf["z"], ddf["g"], epsilon=0.0)
    assert isinstance(y, dd.Series) and y.npartitions == 5
    series = y.compute()
    pd.testing.assert_index_equal(series.index, frame.index)
    assert series.name == "z"
    assert_equal_to_reference(series.to_numpy(), expected)


def test_infeasible(client):
    """Group means that no outputs within the bounds can make equal: the same error as the
    single-machine path, before any iteration."""
    z, groups, _, _ = instance(2, n=1000, n_attributes=1, k=3)
    y_true = np.where(groups[:, 0] == 0, 3.0, 0.5)  # group 0's targets lie far above 1
    chunks = (500, 500)
    with pytest.raises(InfeasibleConstraintError):
        reference(z, groups, "mean_residual", 0.01, (0.0, 1.0), y_true=y_true)
    with pytest.raises(InfeasibleConstraintError) as caught:
        sd.project(chunked(z, chunks), chunked(groups, chunks), "mean_residual", epsilon=0.01,
                   y_true=chunked(y_true, chunks))
    assert caught.value.key[1] == 0


def test_invalid_inputs(client):
    z, groups, _, _ = instance(2, n=100, n_attributes=1, k=2)
    with pytest.raises(TypeError, match="z must be a dask"):
        sd.project(z, chunked(groups, (100,)), epsilon=0.1)
    with pytest.raises(ValueError, match="partitioned like z"):
        sd.project(chunked(z, (50, 50)), dd.from_pandas(pd.Series(groups[:, 0]), npartitions=3),
                   epsilon=0.1)
    bad = z.copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match="finite"):
        sd.project(chunked(bad, (50, 50)), chunked(groups, (50, 50)), epsilon=0.1)
    with pytest.raises(TypeError, match="built-in"):
        sd.project(chunked(z, (50, 50)), chunked(groups, (50, 50)), _Custom(), epsilon=0.1)


class _Custom(get_constraint("demographic_parity").__class__.__mro__[-3]):
    """A custom affine constraint (dense rows): not supported over a collection."""

    def rows(self, groups, *, epsilon, y_true=None, sample_weight=None):
        raise AssertionError("never built")


def test_client_receives_only_small_results(client, monkeypatch):
    """Every result brought to the client is a few atoms' numbers (or one per partition):
    nothing grows with n. The input is persisted on the workers first."""
    n = 400_000
    z = da.random.default_rng(0).normal(0.5, 0.4, size=n, chunks=50_000).persist()
    groups = da.random.default_rng(1).integers(0, 4, size=(n, 2), chunks=(50_000, 2)).persist()
    sizes = []
    compute = sd._compute

    def recording(*graphs):
        out = compute(*graphs)
        sizes.append(dask.sizeof.sizeof(out))
        return out

    monkeypatch.setattr(sd, "_compute", recording)
    y, info = sd.project(z, groups, epsilon=0.02)
    assert len(sizes) == info["n_passes"] + 1  # the scan, then the passes
    assert max(sizes) < 20_000, sizes  # bytes; z alone is 3.2 MB
    assert_parity(y.compute(), groups.compute(), 0.02)


# ---------------------------------------------------------------------------------------------
# Estimators
@pytest.fixture(scope="module")
def fitted():
    X, y = biased_frame(n=1500, seed=3, categorical=True)
    common = dict(protected_attributes=["sex", "race"], hidden_layer_sizes=(8,), max_epochs=3,
                  batch_size=256, epsilon=0.02, random_state=0)
    classifier = FairNeuralClassifier(**common).fit(X, y)
    regressor = FairNeuralRegressor(**common).fit(X, X["x1"] + y)
    return classifier, regressor


def group_codes(X):
    return np.column_stack([pd.factorize(X[c], sort=True)[0] for c in ("sex", "race")])


def test_estimator_global_equals_single_machine(client, fitted):
    """Partitions of 8,192 rows, the network's own chunks in predict: the raw outputs are the
    same bits as the whole X's, so the global predictions equal the estimator's on the whole
    collection to 1e-9, and the probabilities meet the constraint on it."""
    classifier, regressor = fitted
    X = biased_frame(n=2 * 8192 + 1500, seed=4, categorical=True)[0]
    ddf = dd.from_pandas(X, chunksize=8192)
    assert ddf.map_partitions(len).compute().tolist() == [8192, 8192, 1500]
    proba, info = sd.predict_proba(classifier, ddf, return_info=True)
    assert proba.shape == (len(X), 2)
    values = proba.compute()
    np.testing.assert_allclose(values, classifier.predict_proba(X), rtol=0, atol=1e-9)
    assert info["n_samples"] == len(X) and info["max_violation"] <= info["tolerance"]
    np.testing.assert_array_equal(sd.predict(classifier, ddf).compute(), classifier.predict(X))
    expected = regressor.predict(X)
    np.testing.assert_allclose(sd.predict(regressor, ddf).compute(), expected, rtol=0,
                               atol=1e-9 * max(1.0, np.abs(expected).max()))
    assert_parity(values[:, 1], group_codes(X), 0.02, bounds=(0.0, 1.0))
    # the same rows as a dask array (the protected columns' codes as numbers)
    numeric = X.assign(sex=(X["sex"] == "M").astype(float),
                       race=X["race"].map({"a": 0.0, "b": 1.0, "c": 2.0}))
    on_codes = FairNeuralClassifier(protected_attributes=[2, 3], hidden_layer_sizes=(8,),
                                    max_epochs=2, epsilon=0.02, random_state=0)
    on_codes.fit(numeric.to_numpy()[:1500], (numeric["x1"] > 0).to_numpy()[:1500])
    array = da.from_array(numeric.to_numpy(), chunks=(8192, 2))
    np.testing.assert_allclose(sd.predict_proba(on_codes, array).compute(),
                               on_codes.predict_proba(numeric.to_numpy()), rtol=0, atol=1e-9)


def test_estimator_any_partitions(client, fitted):
    """Any partitions: the exact projection of the partitions' raw outputs (the network's
    float32 arithmetic depends on the batch's shape, by its rounding), and the partition mode
    equals predicting every partition on its own."""
    classifier, _ = fitted
    X = biased_frame(n=3000, seed=5, categorical=True)[0]
    ddf = dd.from_pandas(X, npartitions=4)
    partitions = [ddf.get_partition(i).compute() for i in range(ddf.npartitions)]
    raw = np.concatenate([classifier._raw_outputs(p)[0].numpy() for p in partitions])
    expected, _ = reference(raw, group_codes(X), "demographic_parity", 0.02, (0.0, 1.0))
    values = sd.predict_proba(classifier, ddf).compute()
    np.testing.assert_allclose(values[:, 1], expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(values, classifier.predict_proba(X), rtol=0, atol=1e-6)
    local = sd.predict_proba(classifier, ddf, mode="partition").compute()
    np.testing.assert_array_equal(local, np.concatenate([classifier.predict_proba(p)
                                                         for p in partitions]))
    # fewer rows than b_tau: one batch of the estimator, as predict_proba does
    small = dd.from_pandas(X.iloc[:60], npartitions=2)
    np.testing.assert_allclose(sd.predict_proba(classifier, small).compute(),
                               classifier.predict_proba(X.iloc[:60]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="mode"):
        sd.predict_proba(classifier, ddf, mode="rows")


# ---------------------------------------------------------------------------------------------
# Fault tolerance
def test_worker_killed_between_passes(client, monkeypatch):
    """A worker process dies after the raw outputs were persisted (its nanny restarts it):
    distributed recomputes the lost partitions from their graph and the result is still exact."""
    n = 200_000
    z = da.random.default_rng(4).normal(0.5, 0.4, size=n, chunks=25_000)
    groups = da.random.default_rng(5).integers(0, 3, size=n, chunks=25_000)
    compute, calls, killed = sd._compute, [], []

    def killing(*graphs):
        calls.append(None)
        if len(calls) == 3:  # the scan and the first pass are done: kill one worker mid-run
            pid = min(client.run(os.getpid).values())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return compute(*graphs)

    monkeypatch.setattr(sd, "_compute", killing)
    y, _ = sd.project(z, groups, epsilon=0.0)
    values = y.compute()
    expected, _ = reference(z.compute(), groups.compute()[:, None], "demographic_parity", 0.0,
                            (0.0, 1.0))
    assert_equal_to_reference(values, expected)
    assert killed and len(calls) > 3
    client.wait_for_workers(2, timeout=60)
    assert killed[0] not in client.run(os.getpid).values()
