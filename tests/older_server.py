"""fakeredis answering as an older Redis: the commands that Redis had not yet are unknown.

fakeredis implements every command whatever ``version=`` says, and has no
``INFO``.  :func:`older_server` gives a ``FakeServer`` that refuses, with
Redis's own "unknown command" reply, each command of :data:`SINCE` newer than
its version, and answers ``INFO server`` with that version (and ``MEMORY
USAGE``, which fakeredis lacks too, with 64 bytes), so the package meets a
server as old as the one named.  The table is the "Available since"
of the Redis command reference, kept apart from the package's own list
(``fleche_redis.transport.compat.NEEDS``) so the tests check that list
rather than repeat it.
"""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from fakeredis._commands import Signature
from fakeredis._helpers import SimpleError

try:  # fakeredis >= 2.35
    from fakeredis._socket._base import BaseFakeSocket
except ImportError:  # pragma: no cover - fakeredis 2.33 and 2.34
    from fakeredis._basefakesocket import BaseFakeSocket  # type: ignore[no-redef]

__all__ = ["SINCE", "older_server"]

SINCE: dict[str, tuple[int, ...]] = {
    "smismember": (6, 2),
    "zmscore": (6, 2),
    "getex": (6, 2),
    "getdel": (6, 2),
    "copy": (6, 2),
    "lmove": (6, 2),
    "blmove": (6, 2),
    "zrangestore": (6, 2),
    "zunion": (6, 2),
    "zinter": (6, 2),
    "zdiff": (6, 2),
    "hrandfield": (6, 2),
    "zrandmember": (6, 2),
    "lpos": (6, 0, 6),
    "hello": (6, 0),
    "acl": (6, 0),
    "client tracking": (6, 0),
    "client id": (5, 0),
    "memory": (4, 0),
    "unlink": (4, 0),
}
"""Command (as fakeredis names it) -> the Redis version that added it."""

_INFO = Signature("info", "info", (), (bytes,))
_MEMORY = Signature("memory", "memory", (), (bytes,))


def older_server(monkeypatch: pytest.MonkeyPatch, version: tuple[int, ...]) -> Any:
    """A ``FakeServer`` that answers as Redis *version* (for the test using *monkeypatch*)."""
    server = fakeredis.FakeServer(version=version)
    server.emulated_version = version
    original = BaseFakeSocket._name_to_func

    def name_to_func(self: Any, cmd_name: str) -> Any:
        emulated = getattr(self._server, "emulated_version", None)
        if emulated is None:
            return original(self, cmd_name)
        if cmd_name == "info":
            dotted = ".".join(map(str, (*emulated, 0, 0)[:3]))
            return (lambda *sections: f"# Server\r\nredis_version:{dotted}\r\n".encode()), _INFO
        if cmd_name == "memory" and emulated >= SINCE["memory"]:
            return (lambda *args: 64), _MEMORY
        if SINCE.get(cmd_name, (0,)) > emulated:
            raise SimpleError(f"ERR unknown command '{cmd_name}', with args beginning with: ")
        return original(self, cmd_name)

    monkeypatch.setattr(BaseFakeSocket, "_name_to_func", name_to_func)
    return server
