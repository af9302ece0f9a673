"""Factual recall: the bundled prompt set and the lens run over it.
"""
