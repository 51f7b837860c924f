"""``configured_cache("nonexistent")`` said the cache was "not a Cache over ValueRedis".

fleche falls back to a memory cache for a name it does not find; the error now
says the section is missing.
"""

from __future__ import annotations

import pytest

from fleche_redis import configured_cache


def test_a_missing_section_is_named(tmp_path, monkeypatch):
    import fleche.config

    monkeypatch.setattr(fleche.config, "_live_caches", {})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "fleche.toml").write_text(
        '[other]\nvalues.type = "memory"\ncalls.type = "memory"\n'
    )
    with pytest.raises(
        ValueError, match="has no cache 'nonexistent' \\(cache 'nonexistent' not found"
    ):
        configured_cache("nonexistent")
    with pytest.raises(ValueError, match="is Cache\\(ValueMemory, CallMemory\\), not a Cache over"):
        configured_cache("other")  # a section that exists, of other storages
