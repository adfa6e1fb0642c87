"""Collection rules for the whole repository (the test helpers are in tests/conftest.py)."""

import importlib.util

# skfair/dask.py needs the dask extra: without it its doctests are not collected (the module
# raises ImportError, as it should for users).
collect_ignore = [] if all(importlib.util.find_spec(name) is not None
                           for name in ("dask", "distributed")) else ["skfair/dask.py"]
