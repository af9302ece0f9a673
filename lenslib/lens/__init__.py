"""The logit lens: one result type, the lens itself, answers of several tokens, model comparison.
"""
