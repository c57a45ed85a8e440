"""The bounded LRU cache behind the rollout engine's audio caches."""
from __future__ import annotations

import pytest

from antiphon.lru import LRUCache


def test_least_recently_used_goes_first_within_entries_and_bytes():
    c = LRUCache(max_entries=3, max_bytes=10, size=len)
    for k in "abc":
        c.put(k, k * 2)  # 2 bytes each
    assert c.get("a") == "aa"  # a is now the most recent: b goes first
    c.put("d", "dd")
    assert c.get("b") is None and [c.get(k) for k in "acd"] == ["aa", "cc", "dd"] and len(c) == 3
    c.put("e", "e" * 6)  # 12 bytes > 10: the oldest (a) goes, and that is enough
    assert c.nbytes == 10 and c.get("a") is None and [c.get(k) for k in "cde"] == ["cc", "dd", "eeeeee"]
    assert c.put("big", "x" * 11) == "x" * 11 and c.get("big") is None  # larger than the cache: not kept
    c.put("e", "ee")  # replacing a key re-counts its bytes
    assert c.nbytes == 6 and len(c) == 3
    c.clear()
    assert len(c) == 0 and c.nbytes == 0 and c.get("d") is None


@pytest.mark.parametrize("field, value", [("max_entries", 0), ("max_bytes", -1), ("max_entries", True)])
def test_bounds_must_be_positive_integers(field, value):
    kw = {"max_entries": 2, "max_bytes": 2, field: value}
    with pytest.raises(ValueError, match=field):
        LRUCache(size=len, **kw)
