"""Causal and attribution tools: direct logit attribution and activation patching.
"""
