"""Turnout's own version, as the installed distribution records it."""

from __future__ import annotations


def package_version() -> str:
    """The installed distribution's version; from a checkout that was never installed, say so."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("turnout")
    except PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"
