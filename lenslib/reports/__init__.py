"""Standalone HTML reports (the command line's ``--html``).
"""
