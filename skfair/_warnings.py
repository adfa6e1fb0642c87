"""Warnings that point at the user's own line."""

import sys
import warnings
from pathlib import Path

#: frames in these packages are skipped when a warning looks for the line that caused it
_INTERNAL = tuple(str(Path(str(module.__file__)).resolve().parent)
                  for module in (sys.modules["skfair"], __import__("sklearn")))


def warn(message, category):
    """``warnings.warn`` attributed to the first caller outside skfair and scikit-learn (the
    user's ``fit`` call, whatever the depth of the call chain inside)."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: the caller of this function
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(
            _INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
