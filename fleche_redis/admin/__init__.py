"""Admin: the maintenance API (verify, repair, gc, transform, redigest, resign, done in
storage), inspection of a namespace from outside, and progress bars.

It may import every layer below it (errors, runtime, metrics, transport,
storage, locks, cache), never cli or testing.  See ``docs/maintenance.md``.
"""
