"""The ``lenslib`` command: one module per subcommand, shared helpers in ``common``.
"""
