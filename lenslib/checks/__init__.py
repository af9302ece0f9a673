"""Tools that check the tutorial notebooks: claim cells, prose numbers, hygiene.

These serve the notebooks and the test suite, not the analysis API.
"""
