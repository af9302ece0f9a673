"""Where models come from: the bundled real models, their cache, a tiny random model, the hub.
"""
