"""Command line: ``python -m fleche_redis <command>`` (also the ``fleche-redis`` script).

:func:`main` parses, runs the command and turns any failure into one line on
stderr and an exit code; the commands, options and exit codes are in docs/cli.md.
"""

from __future__ import annotations

import os
import sys

import redis

from ..errors import FlecheRedisError, UndecodableEntry
from .connect import redacted, url_of
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_FOUND,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    explain,
)
from .output import log_to_stderr
from .parser import build_parser

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FOUND", "EXIT_ERROR"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with log_to_stderr(getattr(args, "verbose", 0) or 0):
        try:
            return args.func(args)
        except CliError as e:
            message, code = str(e), e.code
        except FlecheRedisError as e:
            message, code = explain(e, getattr(e, "server", "?")), EXIT_ERROR
        except UndecodableEntry as e:  # unsigned, refused, corrupt: never unpickled
            key, reason = (*e.args, "?")[:2]
            message = (
                f"entry {key} is not readable here: {reason} (`fleche-redis verify` counts them)"
            )
            code = EXIT_FOUND
        except redis.exceptions.RedisClusterException as e:
            message, code = explain(e, redacted(url_of(args))), EXIT_ERROR
        except redis.RedisError as e:  # maintenance talks to Redis directly: no traceback either
            message, code = explain(e, redacted(url_of(args))), EXIT_ERROR
        except KeyboardInterrupt:
            message, code = "interrupted", EXIT_INTERRUPTED
        except BrokenPipeError:
            return _reader_gone()
    print(f"fleche-redis: {message}", file=sys.stderr)
    return code


def _reader_gone() -> int:
    """Stop quietly when the reader closed the pipe (``| head``), as a Unix tool does."""
    # Python would flush stdout again at exit and complain; point it at nothing.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
