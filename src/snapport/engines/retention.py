"""Retention: which sets of a repository a `forget` keeps, and the rule that keeps each (restic's policy).

Sets are grouped by their production host and what they hold (their components: the same writers' data on the
same volumes), so a policy counts each host's database backups apart from its home directories. Within a group,
newest first: `last N` keeps the N newest sets; `hourly N` keeps the newest set of each of the N most recent hours
that have one, and `daily`, `weekly` (ISO weeks), `monthly` and `yearly` likewise; a set is kept if any rule keeps
it, and every rule that does is named. Periods are in UTC, so that a policy means the same on every host. A set
whose description is unreadable is never removed by a policy (kept, rule `unreadable`): `verify` says what is
wrong with it, and only naming it (`forget --set ID`) removes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from snapport.engines.base import SetSummary
from snapport.errors import UsageError

_PERIODS: dict[str, Callable[[datetime], str]] = {
    "hourly": lambda t: t.strftime("%Y-%m-%dT%H"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2]),
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}
RULES = ("last", *_PERIODS)


@dataclass(frozen=True, slots=True)
class Policy:
    """How many sets each rule keeps per group (0: the rule is not used)."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        for rule in RULES:
            if getattr(self, rule) < 0:
                raise UsageError(f"--keep-{rule} must be 0 or more, not {getattr(self, rule)}")
        if not any(getattr(self, rule) for rule in RULES):
            raise UsageError("no retention rule given: name at least one --keep-* (nothing would be kept)")

    def __str__(self) -> str:
        return ", ".join(f"{rule} {getattr(self, rule)}" for rule in RULES if getattr(self, rule))


@dataclass(frozen=True, slots=True)
class RetentionGroup:
    """The sets of one production host that hold the same components."""

    host: str
    components: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """One set and what `forget` does with it: kept (by `reasons`, e.g. "daily 2026-12-07") or removed."""

    set: SetSummary
    group: RetentionGroup
    keep: bool
    reasons: tuple[str, ...] = ()


def group_of(summary: SetSummary) -> RetentionGroup:
    return RetentionGroup(summary.originating_host, tuple(sorted(summary.components)))


def plan(sets: Sequence[SetSummary], policy: Policy, *, host: str | None = None) -> tuple[Decision, ...]:
    """The decision for every set (of `host` only, when given), grouped, newest first within a group."""
    groups: dict[RetentionGroup, list[SetSummary]] = {}
    for summary in sets:
        if host is None or summary.originating_host == host:
            groups.setdefault(group_of(summary), []).append(summary)
    decisions: list[Decision] = []
    for group in sorted(groups, key=lambda g: (g.host, g.components)):
        members = groups[group]
        unreadable = [s for s in members if s.created is None or not s.readable]
        dated = sorted((s for s in members if s not in unreadable), key=_age_key, reverse=True)
        reasons: dict[uuid.UUID, list[str]] = {s.set_id: [] for s in dated}
        for n, summary in enumerate(dated[: policy.last]):
            reasons[summary.set_id].append(f"last {n + 1}")
        for rule, period in _PERIODS.items():
            seen: list[str] = []
            for summary in dated:
                assert summary.created is not None
                bucket = period(summary.created.astimezone(UTC))
                if bucket not in seen and len(seen) < getattr(policy, rule):
                    seen.append(bucket)
                    reasons[summary.set_id].append(f"{rule} {bucket}")
        decisions += [Decision(s, group, bool(reasons[s.set_id]), tuple(reasons[s.set_id])) for s in dated]
        decisions += [Decision(s, group, True, ("unreadable",)) for s in unreadable]
    return tuple(decisions)


def _age_key(summary: SetSummary) -> tuple[datetime, str]:
    assert summary.created is not None
    return summary.created, str(summary.set_id)
