"""Pausing Python's cyclic garbage collector around bulk allocation that makes no cycles.

Creating many container objects (lists, dicts, modules) sets off the collector's full
collections, each of which walks every object the process holds; with a model, TransformerLens
and transformers loaded that is about half a million objects. Where the new objects cannot form
reference cycles, pausing collection loses nothing and skips that walk.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def collection_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block, restoring the caller's setting after.

    >>> import gc
    >>> with collection_paused():
    ...     gc.isenabled()
    False
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
