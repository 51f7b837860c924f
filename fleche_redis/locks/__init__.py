"""Distributed locks: :class:`~.redlock.Redlock`, its watchdog, and the storage mixins.

See ``docs/locks.md``.
"""
