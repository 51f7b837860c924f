"""Exit codes, the error commands raise for the terminal, and one-line Redis failure messages."""

from __future__ import annotations

import redis

from ..errors import RedisStorageError

__all__ = ["EXIT_OK", "EXIT_FOUND", "EXIT_ERROR", "EXIT_INTERRUPTED", "CliError", "explain"]

EXIT_OK, EXIT_FOUND, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


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
    if isinstance(cause, redis.AuthenticationError) or "WRONGPASS" in str(cause):
        if "@" not in server:
            return (
                f"Redis at {server} requires a password ({text}); put it in the URL: "
                "redis://[user]:PASSWORD@host:port/db"
            )
        return f"authentication failed at {server}: wrong user name or password ({text})"
    if isinstance(cause, redis.exceptions.NoPermissionError):
        return (
            f"the Redis user lacks a permission at {server} ({text}); an ACL must allow "
            "the namespace's keys (~<namespace>:*) and the commands fleche-redis uses"
        )
    if isinstance(cause, redis.TimeoutError):
        return f"Redis at {server} did not answer in time ({text})"
    if isinstance(cause, (redis.ConnectionError, redis.exceptions.RedisClusterException)):
        return (
            f"cannot connect to Redis at {server} ({text}); is it running? "
            "Give its address with --url or REDIS_URL"
        )
    return str(error)
