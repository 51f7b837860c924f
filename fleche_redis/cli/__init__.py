"""The ``fleche-redis`` command line: parse a command, run it against a namespace, report.

``main`` is the console script and what ``python -m fleche_redis`` runs; its
modules each have one job (parser, errors, connect, output, and the store,
maintenance, run and serve commands; see docs/cli.md).  The CLI sits on top:
it may import everything below it in the library, and the testing package's
embedded server for the demo and its process helpers (the binary, a free
port, a log's tail) for ``serve``; nothing imports the CLI.
"""

from .commands import build_parser, main

__all__ = ["main", "build_parser"]
