"""The ``fleche-redis`` command line."""

from .commands import build_parser, main

__all__ = ["main", "build_parser"]
