"""The back of Turnout: runtimes that execute models, and the worker processes that host them.

Nothing here imports ``gateway``: the gateway drives the runtimes, never the reverse.
"""
