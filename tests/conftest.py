import os

import numpy as np
import pandas as pd
import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason="slow: set CI=1 or pass --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def biased_frame(n=1200, seed=0, categorical=False):
    """A synthetic biased dataset: the positive rate depends on the protected groups.

    Columns: two numeric features, ``sex`` ("F"/"M") and ``race`` (two or three groups).
    """
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n, p=[0.4, 0.6])
    race = rng.choice(["a", "b", "c"] if categorical else ["a", "b"], n)
    x1, x2 = rng.normal(size=(2, n))
    shift = 1.2 * (sex == "M") + 0.8 * (race == "b") - 0.6 * (race == "c")
    logit = x1 + 0.5 * x2 + shift - 0.6
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    X = pd.DataFrame({"x1": x1, "x2": x2 + 0.3 * (sex == "M"), "sex": sex, "race": race})
    return X, pd.Series(y, name="y")


@pytest.fixture
def biased():
    return biased_frame()


def torch_objective(y, z, target, weight, loss, scale, penalty):
    """The estimators' training objective written with torch operators, as their ``_losses``
    and the unfused training step compute it: the reference of the compiled one."""
    import torch

    from skfair import _kernels

    if loss == _kernels.LOG_LOSS:
        clip = _kernels.PROBABILITY_CLIP
        losses = torch.nn.functional.binary_cross_entropy(y.clamp(clip, 1 - clip), target,
                                                          reduction="none")
    else:
        losses = ((y - target) / scale) ** 2
    losses = losses + penalty * (z - y) ** 2
    return (weight * losses).sum() / weight.sum()


def pytest_configure(config):
    # The long profile of the property-based guarantee suite (tests/test_guarantee_properties.py)
    # runs with --runslow, or with SKFAIR_GUARANTEE_LONG=1; read when that module is imported.
    if config.getoption("--runslow", default=False):
        os.environ.setdefault("SKFAIR_GUARANTEE_LONG", "1")
    # Property tests draw new examples on every local run (they keep finding the rare case);
    # in CI the same ones every time, so that a run's verdict is the commit's, not the draw's.
    if os.environ.get("CI"):
        from hypothesis import settings

        settings.register_profile("ci", derandomize=True, database=None)
        settings.load_profile("ci")
