"""The logit-lens benchmark: cases (what is timed), measure (how), report (what is written).

Run it as ``python bench/lens_bench.py`` (see its docstring).
"""
