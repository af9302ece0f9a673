"""Checks for the sentences a notebook states about its own outputs.

A tutorial's prose says things like "the answer emerges at layer 13". When a rerun changes the
output, that sentence must not silently become false. A notebook therefore puts each headline
claim in a short, visible check cell, which prints what it checked and fails the cell (and so
the nbmake test) when the claim no longer holds:

>>> from lenslib.checks.claims import claim
>>> claim("entropy falls from the first layer to the last", 8.1 > 0.4, f"{8.1:.1f} -> {0.4:.1f} nats")
✓ entropy falls from the first layer to the last (8.1 -> 0.4 nats)
>>> claim("two is more than three", 2 > 3)
Traceback (most recent call last):
...
lenslib.checks.claims.ClaimFailed: the prose says "two is more than three", but the outputs no longer show it. Rerun and rewrite the sentence beside this cell.

Numbers that the prose states are checked by ``tests/test_notebook_claims.py``: each must appear
in an output of an earlier cell, unless the markdown cell lists it as coming from outside the
notebook (a paper's figure, a model's size) in a comment ``<!-- outside: 2023, 262144 -->``.
"""

from __future__ import annotations


class ClaimFailed(AssertionError):
    """A sentence of a notebook's prose is no longer true of the notebook's outputs."""


def claim(statement: str, holds: bool, evidence: str = "") -> None:
    """Print ``✓ statement (evidence)`` if ``holds``, else raise :class:`ClaimFailed`.

    Args:
        statement: the sentence (or its gist) as the prose states it.
        holds: whether the outputs computed in the notebook bear it out.
        evidence: the figures checked, printed beside the tick so the reader sees them.
    """
    suffix = f" ({evidence})" if evidence else ""
    if not bool(holds):
        raise ClaimFailed(
            f'the prose says "{statement}", but the outputs no longer show it{suffix}. '
            "Rerun and rewrite the sentence beside this cell."
        )
    print(f"✓ {statement}{suffix}")
