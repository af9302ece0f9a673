"""lenslib's benchmarks: one harness (``harness``, ``measure``, ``report``) and its suites (``suites/``).

Run one with ``python -m bench SUITE``; ``python -m bench --list`` lists them; see ``bench/README.md``.
"""
