"""When a create reaches a share of a plan limit (sentinel.platform.limits.crossed)."""

from __future__ import annotations

from sentinel.platform.limits import crossed


def test_quota_thresholds_fire_once_per_crossing() -> None:
    assert crossed(10, 7, 1) == [80]  # 7 -> 8 of 10
    assert crossed(10, 8, 1) == []
    assert crossed(10, 9, 1) == [100]
    assert crossed(10, 0, 10) == [80, 100]  # an import of 10 at once
    assert crossed(3, 2, 1) == [80, 100]  # 80 % of 3 rounds up to 3
    assert crossed(250, 199, 1) == [80]
    assert crossed(250, 200, 1) == []
