"""The engine every method shares: tokens and positions, the bridge's hooks, the residual
forward, the tiled full-vocabulary statistics and their kernels, files.
"""
