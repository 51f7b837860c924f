"""Admin: whole-store maintenance (gc, redigest; verify, repair and transform
exposed from storage), inspection of a namespace and progress bars.

It may import every layer below it (errors, runtime, metrics, transport,
storage, locks, cache), never cli or testing.  See ``docs/maintenance.md``.
"""
