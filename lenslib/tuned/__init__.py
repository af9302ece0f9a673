"""The tuned lens: translators, residual collection, fitting, evaluation, its corpus and cache.
"""
