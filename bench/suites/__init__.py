"""The suites: every module here that defines ``SUITE`` (a :class:`bench.harness.Suite`) is one.

Adding a suite is adding a module; :func:`all_suites` finds it.
"""

from __future__ import annotations

import importlib
import pkgutil


def all_suites() -> dict:
    """``{name: Suite}`` for every module of this package that defines ``SUITE``, by name."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        suite = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SUITE", None)
        if suite is not None:
            if suite.name in found:
                raise RuntimeError(f"two suites are named {suite.name!r}: rename one")
            found[suite.name] = suite
    return dict(sorted(found.items()))
