"""The transport (private): the only code that talks to Redis sockets and redis-py's internals.

Storages, caches, locks and maintenance send commands through
:func:`.request.send` (a group of commands, one request) and run them under
a storage's error policy with :class:`.channel.Channel`; nothing outside this
package touches a connection.  :mod:`.tracking` listens for the invalidations
that keep the storages' near caches coherent.  It imports only :mod:`fleche_redis.errors`,
:mod:`fleche_redis.metrics` and :mod:`fleche_redis.runtime`.
"""
