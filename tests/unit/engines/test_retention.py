"""Which sets a retention policy keeps, and the rule named for each (engines/retention.py)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from snapport.engines import SetSummary
from snapport.engines.retention import Policy, plan
from snapport.errors import UsageError

START = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday


def _set(created: datetime | None, host: str = "db1", components: tuple[str, ...] = ("data",)) -> SetSummary:
    return SetSummary(uuid.uuid4(), host, created, components, readable=created is not None)


def _kept(sets: list[SetSummary], policy: Policy, host: str | None = None) -> dict[uuid.UUID, tuple[str, ...]]:
    return {d.set.set_id: d.reasons for d in plan(sets, policy, host=host) if d.keep}


def test_keep_last_keeps_the_newest_of_each_group_only() -> None:
    db = [_set(START + timedelta(hours=h)) for h in range(5)]
    logs = [_set(START + timedelta(hours=h), components=("logs",)) for h in range(3)]
    other = [_set(START + timedelta(hours=h), host="web1") for h in range(2)]
    kept = _kept(db + logs + other, Policy(last=2))
    assert set(kept) == {s.set_id for s in (db[4], db[3], logs[2], logs[1], other[1], other[0])}
    assert kept[db[4].set_id] == ("last 1",) and kept[db[3].set_id] == ("last 2",)


def test_daily_keeps_the_newest_set_of_each_of_the_latest_days() -> None:
    sets = [_set(START + timedelta(days=d, hours=h)) for d in range(4) for h in (1, 13)]
    kept = _kept(sets, Policy(daily=2))
    assert kept == {sets[7].set_id: ("daily 2026-01-04",), sets[5].set_id: ("daily 2026-01-03",)}


def test_every_rule_that_keeps_a_set_is_named() -> None:
    sets = [_set(START + timedelta(days=d)) for d in range(10)]
    kept = _kept(sets, Policy(last=1, daily=3, weekly=2, monthly=1, yearly=1))
    newest = sets[-1].set_id
    assert kept[newest] == ("last 1", "daily 2026-01-10", "weekly 2026-W02", "monthly 2026-01", "yearly 2026")
    # week 1 of 2026 is Dec 29 .. Jan 4: its newest set is Jan 4's
    assert kept[sets[3].set_id] == ("weekly 2026-W01",)
    assert len(kept) == 4


def test_hourly_buckets_are_utc_whatever_the_timezone_of_the_time() -> None:
    plus_two = datetime(2026, 1, 1, 12, 30, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    (decision,) = plan([_set(plus_two)], Policy(hourly=1))
    assert decision.reasons == ("hourly 2026-01-01T12",)


def test_host_limits_the_plan_to_that_hosts_sets() -> None:
    sets = [_set(START, host="db1"), _set(START, host="web1")]
    assert [d.set.originating_host for d in plan(sets, Policy(last=1), host="web1")] == ["web1"]


def test_an_unreadable_set_is_kept_and_says_why() -> None:
    sets = [_set(None), _set(START), _set(START + timedelta(hours=1))]
    kept = _kept(sets, Policy(last=1))
    assert kept == {sets[0].set_id: ("unreadable",), sets[2].set_id: ("last 1",)}


@pytest.mark.parametrize("policy", [{}, {"last": 0, "daily": 0}, {"daily": -1}])
def test_a_policy_that_keeps_nothing_or_a_negative_count_is_refused(policy: dict[str, int]) -> None:
    with pytest.raises(UsageError):
        Policy(**policy)


def test_random_histories_keep_exactly_what_each_rule_asks() -> None:
    rng = random.Random(20261207)
    for _ in range(200):
        sets = [_set(START + timedelta(minutes=rng.randrange(0, 60 * 24 * 90))) for _ in range(rng.randrange(1, 40))]
        policy = Policy(last=rng.randrange(0, 4), daily=rng.randrange(0, 5), monthly=rng.randrange(1, 3))
        kept = _kept(sets, policy)
        newest_first = sorted(sets, key=lambda s: (s.created, str(s.set_id)), reverse=True)
        expected = {s.set_id for s in newest_first[: policy.last]}
        for width, count in ((10, policy.daily), (7, policy.monthly)):  # YYYY-MM-DD and YYYY-MM prefixes
            seen: list[str] = []
            for s in newest_first:
                assert s.created is not None
                bucket = s.created.isoformat()[:width]
                if bucket not in seen and len(seen) < count:
                    seen.append(bucket)
                    expected.add(s.set_id)
        assert set(kept) == expected
