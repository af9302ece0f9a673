"""Causal and attribution tools: direct logit attribution (``attribution``), activation patching
of the residual stream (``patching``) and of components (``components``, on the engine in
``sites``), a lens on each component (``component_lens``) and attention patterns (``attention``).
"""
