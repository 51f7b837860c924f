"""Exit codes, the error commands raise for the terminal, and one-line Redis failure messages."""

from __future__ import annotations

import redis

from ..errors import RedisStorageError
from ..transport.health import describe

__all__ = [
    "EXIT_OK",
    "EXIT_FOUND",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_BROKEN_PIPE",
    "CliError",
    "explain",
]

EXIT_OK, EXIT_FOUND, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a tool whose reader went away."""


class CliError(Exception):
    """A message for the person at the terminal and the exit code that goes with it."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def explain(error: BaseException, server: str) -> str:
    """One sentence a person can act on, for any failure to reach or use Redis."""
    cause = error.__cause__ if isinstance(error, RedisStorageError) else error
    server = getattr(error, "server", server)
    text = f"{type(cause).__name__}: {cause}"
    if isinstance(cause, redis.RedisError):
        said = describe(cause, server)  # the library's own words for a password or an ACL
        if said != text:
            return said
    if isinstance(cause, redis.TimeoutError):
        return f"Redis at {server} did not answer in time ({text})"
    if isinstance(cause, (redis.ConnectionError, redis.exceptions.RedisClusterException)):
        return (
            f"cannot connect to Redis at {server} ({text}); is it running? "
            "Give its address with --url or REDIS_URL"
        )
    return str(error)
