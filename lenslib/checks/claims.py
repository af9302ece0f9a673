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

The helpers below give the literal form of the sentences tutorials write most (each returns
``(holds, evidence)`` for ``claim``):

>>> labels = ["0_pre", "1_pre", "2_pre", "final_post"]
>>> claim("P(answer) > 0.5 from 1_pre on", *from_layer_on(labels, [0.1, 0.6, 0.7, 0.9], "1_pre", lambda p: p > 0.5))
✓ P(answer) > 0.5 from 1_pre on (every layer from 1_pre on: 0.6, 0.7, 0.9)
>>> claim("most answers are right", *more_than_half([True, True, False]))
✓ most answers are right (2 of 3 (67%))
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence


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


# -- the literal forms of common sentences ---------------------------------------------------
# Each helper returns ``(holds, evidence)`` for ``claim(statement, *helper(...))``, and checks what
# the sentence literally says: "from layer X on" is every layer from X, "most" is more than half.


def _index(labels: Sequence[str], label: str) -> int:
    if label not in labels:
        raise ValueError(f"{label!r} is not one of the layers {list(labels)}")
    return list(labels).index(label)


def from_layer_on(
    labels: Sequence[str], values: Sequence[float], start: str, condition: Callable[[float], bool]
) -> tuple[bool, str]:
    """Whether ``condition`` holds at **every** layer from ``start`` to the last.

    >>> labels = ["0_pre", "1_pre", "2_pre", "final_post"]
    >>> from_layer_on(labels, [0.1, 0.6, 0.7, 0.9], "1_pre", lambda p: p > 0.5)
    (True, 'every layer from 1_pre on: 0.6, 0.7, 0.9')
    >>> from_layer_on(labels, [0.1, 0.6, 0.4, 0.9], "1_pre", lambda p: p > 0.5)[0]
    False
    """
    i = _index(labels, start)
    tail = [float(v) for v in values[i:]]
    failing = [labels[i + j] for j, v in enumerate(tail) if not condition(v)]
    shown = ", ".join(f"{v:.3g}" for v in tail)
    if failing:
        return False, f"fails at {', '.join(failing)}: {shown}"
    return True, f"every layer from {start} on: {shown}"


def first_layer_where(labels: Sequence[str], values: Sequence[float], condition: Callable[[float], bool]) -> Optional[str]:
    """The first layer whose value meets ``condition`` (``None`` if none does).

    >>> first_layer_where(["0_pre", "1_pre", "final_post"], [3, 1, 1], lambda rank: rank == 1)
    '1_pre'
    """
    return next((labels[i] for i, v in enumerate(values) if condition(float(v))), None)


def first_layer_from_which(labels: Sequence[str], values: Sequence[float], condition: Callable[[float], bool]) -> Optional[str]:
    """The first layer from which ``condition`` holds at every later layer too (``None`` if not
    even at the last).

    >>> first_layer_from_which(["0_pre", "1_pre", "2_pre"], [1, 2, 1], lambda rank: rank == 1)
    '2_pre'
    """
    start = None
    for i in range(len(values) - 1, -1, -1):
        if not condition(float(values[i])):
            break
        start = labels[i]
    return start


def more_than_half(flags: Sequence[bool], what: str = "") -> tuple[bool, str]:
    """Whether more than half of ``flags`` are true: what "most" means.

    >>> more_than_half([True, True, False])
    (True, '2 of 3 (67%)')
    >>> more_than_half([True, False])[0]         # a half is not most
    False
    """
    n, yes = len(flags), sum(bool(f) for f in flags)
    return yes * 2 > n, f"{yes} of {n}{' ' + what if what else ''} ({yes / max(n, 1):.0%})"


def share_at_least(flags: Sequence[bool], share: float, what: str = "") -> tuple[bool, str]:
    """Whether at least ``share`` (a fraction) of ``flags`` are true.

    >>> share_at_least([True, True, False, False], 0.5)
    (True, '2 of 4 (50%), at least 50%')
    """
    n, yes = len(flags), sum(bool(f) for f in flags)
    return yes >= share * n, f"{yes} of {n}{' ' + what if what else ''} ({yes / max(n, 1):.0%}), at least {share:.0%}"


def max_within(labels: Sequence[str], values: Sequence[float], allowed: Sequence[str]) -> tuple[bool, str]:
    """Whether the largest value sits at one of the ``allowed`` layers.

    >>> max_within(["0_pre", "1_pre", "2_pre"], [5.0, 9.0, 1.0], ["0_pre", "1_pre"])
    (True, 'largest at 1_pre (9)')
    """
    i = max(range(len(values)), key=lambda j: float(values[j]))
    return labels[i] in list(allowed), f"largest at {labels[i]} ({float(values[i]):.3g})"


def each_exceeds(labels: Sequence[str], values: Sequence[float], others: Sequence[str], than: Sequence[str]) -> tuple[bool, str]:
    """Whether every layer in ``others`` has a larger value than every layer in ``than``
    ("the first layers are above the middle ones" in its literal form).

    >>> each_exceeds(["a", "b", "c"], [9, 8, 2], ["a", "b"], ["c"])
    (True, 'min over a..b 8 > max over c..c 2')
    """
    low = min(float(values[_index(labels, label)]) for label in others)
    high = max(float(values[_index(labels, label)]) for label in than)
    return low > high, f"min over {others[0]}..{others[-1]} {low:.3g} > max over {than[0]}..{than[-1]} {high:.3g}"
