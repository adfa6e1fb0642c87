"""Collection rules for the whole repository (the test helpers are in tests/conftest.py)."""

import importlib.util
import sys

import pytest

# skfair/dask.py needs the dask extra: without it its doctests are not collected (the module
# raises ImportError, as it should for users).
collect_ignore = [] if all(importlib.util.find_spec(name) is not None
                           for name in ("dask", "distributed")) else ["skfair/dask.py"]


@pytest.fixture(autouse=True)
def _close_figures():
    """Close the figures a test or doctest opened: pyplot keeps them all, and past 20 it warns
    (an error under the suite's warning filter) in whichever test comes next."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
