"""The retention policy: examples of each rule, and its invariants for any input (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbbackup.errors import InternalError
from dbbackup.retention import (
    NEWEST,
    NO_RULES,
    NOT_KEPT,
    Decision,
    RetentionPolicy,
    SetInfo,
    decide,
    deletion_order,
    missing_parents,
)

pytestmark = pytest.mark.timeout(120)

NOW = datetime(2026, 11, 27, 14, 0, tzinfo=UTC)
CET = timezone(timedelta(hours=1))


def daily_sets(days: int, *, hour: int = 2, zone: timezone = UTC) -> list[SetInfo]:
    """One set per day at ``hour``, newest yesterday."""
    base = NOW.astimezone(zone).replace(hour=hour, minute=0, second=0)
    return [SetInfo(f"s{n:04d}", base - timedelta(days=n)) for n in range(1, days + 1)]


def kept(decisions: list[Decision]) -> set[str]:
    return {d.set_id for d in decisions if d.keep}


def by_id(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.set_id: d for d in decisions}


# -- examples ----------------------------------------------------------------------------


def test_no_rule_keeps_everything() -> None:
    sets = daily_sets(5)
    decisions = decide(sets, RetentionPolicy(), now=NOW)
    assert kept(decisions) == {s.id for s in sets}
    assert all(d.reasons == (NO_RULES,) for d in decisions)


def test_no_sets_no_decisions() -> None:
    assert decide([], RetentionPolicy(keep_last=3), now=NOW) == []


def test_keep_last_keeps_the_newest_n_with_their_rank() -> None:
    sets = daily_sets(10)
    decisions = decide(sets, RetentionPolicy(keep_last=3), now=NOW)
    assert kept(decisions) == {"s0001", "s0002", "s0003"}
    assert by_id(decisions)["s0001"].reasons == (NEWEST, "keep_last 3 (#1)")
    assert by_id(decisions)["s0003"].reasons == ("keep_last 3 (#3)",)
    assert by_id(decisions)["s0004"].reasons == (NOT_KEPT,)
    assert [d.set_id for d in decisions] == [s.id for s in sets]  # newest first


def test_keep_within_is_measured_from_now() -> None:
    sets = daily_sets(10)  # 36 h, 60 h, 84 h, ... before NOW
    decisions = decide(sets, RetentionPolicy(keep_within=3 * 86400), now=NOW)
    assert kept(decisions) == {"s0001", "s0002"}  # 36 h and 60 h old; 84 h is out
    assert "keep_within 3d" in by_id(decisions)["s0002"].reasons


def test_keep_daily_keeps_the_newest_set_of_each_day() -> None:
    base = datetime(2026, 11, 26, tzinfo=UTC)
    sets = [
        SetInfo("day1-late", base + timedelta(hours=20)),
        SetInfo("day1-early", base + timedelta(hours=2)),
        SetInfo("day0-late", base - timedelta(hours=4)),
        SetInfo("day0-early", base - timedelta(hours=20)),
        SetInfo("day-1", base - timedelta(hours=30)),
    ]
    decisions = decide(sets, RetentionPolicy(keep_daily=2), now=NOW)
    assert kept(decisions) == {"day1-late", "day0-late"}
    assert "daily 2026-11-25" in by_id(decisions)["day0-late"].reasons


def test_gaps_do_not_use_up_the_daily_allowance() -> None:
    sets = [SetInfo(f"s{n}", NOW - timedelta(days=3 * n)) for n in range(6)]
    decisions = decide(sets, RetentionPolicy(keep_daily=4), now=NOW)
    assert kept(decisions) == {"s0", "s1", "s2", "s3"}


def test_weekly_monthly_yearly_buckets() -> None:
    sets = daily_sets(800)
    decisions = decide(sets, RetentionPolicy(keep_weekly=4, keep_monthly=3, keep_yearly=3), now=NOW)
    reasons = [r for d in decisions for r in d.reasons]
    assert sum(r.startswith("weekly ") for r in reasons) == 4
    assert sum(r.startswith("monthly ") for r in reasons) == 3
    assert sum(r.startswith("yearly ") for r in reasons) == 3
    assert "weekly 2026-W48" in by_id(decisions)["s0001"].reasons  # 2026-11-26 is a Thursday of week 48
    assert "monthly 2026-10" in by_id(decisions)["s0027"].reasons  # 2026-10-31, newest of October
    assert "yearly 2025" in by_id(decisions)["s0331"].reasons  # 2025-12-31
    assert len(kept(decisions)) < 15


def test_periods_follow_the_wall_clock_of_the_set() -> None:
    # 00:30 in UTC+1 is still the previous day in UTC: the set's own date counts.
    late = SetInfo("cet", datetime(2026, 11, 26, 0, 30, tzinfo=CET))
    earlier = SetInfo("utc", datetime(2026, 11, 25, 22, 0, tzinfo=UTC))
    decisions = decide([late, earlier], RetentionPolicy(keep_daily=2), now=NOW)
    assert "daily 2026-11-26" in by_id(decisions)["cet"].reasons
    assert "daily 2026-11-25" in by_id(decisions)["utc"].reasons


def test_min_keep_tops_up_with_the_newest_expired_sets() -> None:
    sets = daily_sets(10)
    decisions = decide(sets, RetentionPolicy(keep_within=1, min_keep=4), now=NOW)
    assert kept(decisions) == {"s0001", "s0002", "s0003", "s0004"}
    assert by_id(decisions)["s0004"].reasons == ("min_keep 4",)


def test_newest_set_survives_any_policy() -> None:
    sets = daily_sets(3)
    decisions = decide(sets, RetentionPolicy(keep_within=1), now=NOW)
    assert kept(decisions) == {"s0001"}
    assert by_id(decisions)["s0001"].reasons == (NEWEST,)


def test_ancestors_of_a_kept_set_are_kept() -> None:
    full = SetInfo("full", NOW - timedelta(days=9))
    diff = SetInfo("diff", NOW - timedelta(days=5), parent="full")
    incr = SetInfo("incr", NOW - timedelta(days=1), parent="diff")
    old = SetInfo("old", NOW - timedelta(days=20))
    decisions = decide([full, diff, incr, old], RetentionPolicy(keep_last=1), now=NOW)
    assert kept(decisions) == {"incr", "diff", "full"}
    assert by_id(decisions)["full"].reasons == ("parent of diff",)
    assert by_id(decisions)["old"].keep is False


def test_deletion_goes_child_first() -> None:
    # A chain that expires entirely: clock skew makes the child look older than its parent.
    sets = [
        SetInfo("keep", NOW),
        SetInfo("parent", NOW - timedelta(days=3)),
        SetInfo("child", NOW - timedelta(days=4), parent="parent"),
        SetInfo("grandchild", NOW - timedelta(days=2), parent="child"),
        SetInfo("lonely", NOW - timedelta(days=1)),
    ]
    decisions = decide(sets, RetentionPolicy(keep_last=1), now=NOW)
    order = deletion_order(sets, decisions)
    assert set(order) == {"parent", "child", "grandchild", "lonely"}
    assert order.index("grandchild") < order.index("child") < order.index("parent")


def test_cycles_and_missing_parents_are_survivable() -> None:
    sets = [
        SetInfo("a", NOW - timedelta(days=2), parent="b"),
        SetInfo("b", NOW - timedelta(days=3), parent="a"),
        SetInfo("orphan", NOW - timedelta(days=4), parent="gone"),
        SetInfo("new", NOW),
    ]
    decisions = decide(sets, RetentionPolicy(keep_last=1), now=NOW)
    assert kept(decisions) == {"new"}
    assert sorted(deletion_order(sets, decisions)) == ["a", "b", "orphan"]
    assert missing_parents(sets) == {"orphan": "gone"}


def test_inputs_that_are_bugs_are_refused() -> None:
    with pytest.raises(InternalError):
        decide([SetInfo("x", NOW), SetInfo("x", NOW)], RetentionPolicy(keep_last=1), now=NOW)
    with pytest.raises(InternalError):
        decide([SetInfo("x", datetime(2026, 1, 1))], RetentionPolicy(keep_last=1), now=NOW)


def test_describe_and_json() -> None:
    policy = RetentionPolicy(keep_last=7, keep_within=86400 * 2, keep_monthly=6, min_keep=2)
    assert policy.describe() == "keep_last=7, keep_within=2d, keep_monthly=6, min_keep=2"
    assert policy.to_json()["keep_within_seconds"] == 172800
    decision = decide([SetInfo("x", NOW)], policy, now=NOW)[0]
    assert decision.to_json() == {
        "id": "x",
        "time": "2026-11-27T14:00:00+00:00",
        "action": "keep",
        "reasons": [NEWEST, "keep_last 7 (#1)", "keep_within 2d", "monthly 2026-11"],
    }


def test_a_long_chain_of_incrementals_is_ordered_without_recursion() -> None:
    sets = [SetInfo("new", NOW)]
    sets += [
        SetInfo(f"i{n:05d}", NOW - timedelta(days=1, seconds=5000 - n), parent=f"i{n - 1:05d}" if n else None)
        for n in range(5000)
    ]
    decisions = decide(sets, RetentionPolicy(keep_last=1), now=NOW)
    order = deletion_order(sets, decisions)
    assert order == [f"i{n:05d}" for n in reversed(range(5000))]


# -- invariants (property-based) -----------------------------------------------------------

ZONES = st.sampled_from([UTC, CET, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))])


@st.composite
def set_lists(draw: st.DrawFn) -> list[SetInfo]:
    count = draw(st.integers(min_value=0, max_value=40))
    ages = st.integers(min_value=-3600, max_value=3 * 365 * 86400)
    offsets = draw(st.lists(ages, min_size=count, max_size=count))
    sets: list[SetInfo] = []
    for n, offset in enumerate(offsets):
        zone = draw(ZONES)
        parent = None
        wants_parent = draw(st.booleans())
        if sets and wants_parent:
            parent = draw(st.sampled_from([s.id for s in sets] + ["missing"]))
        sets.append(SetInfo(f"set{n:03d}", (NOW - timedelta(seconds=offset)).astimezone(zone), parent))
    return sets


policies = st.builds(
    RetentionPolicy,
    keep_last=st.integers(0, 10),
    keep_within=st.sampled_from([0.0, 3600.0, 86400.0, 7 * 86400.0, 90 * 86400.0]),
    keep_daily=st.integers(0, 10),
    keep_weekly=st.integers(0, 6),
    keep_monthly=st.integers(0, 6),
    keep_yearly=st.integers(0, 3),
    min_keep=st.integers(1, 8),
)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(sets=set_lists(), policy=policies)
def test_every_set_gets_exactly_one_decision(sets: list[SetInfo], policy: RetentionPolicy) -> None:
    decisions = decide(sets, policy, now=NOW)
    assert sorted(d.set_id for d in decisions) == sorted(s.id for s in sets)
    assert all(d.reasons for d in decisions)


@PROPERTY_SETTINGS
@given(sets=set_lists(), policy=policies)
def test_the_newest_set_is_always_kept(sets: list[SetInfo], policy: RetentionPolicy) -> None:
    if not sets:
        return
    newest = max(sets, key=lambda s: (s.time, s.id))
    assert by_id(decide(sets, policy, now=NOW))[newest.id].keep


@PROPERTY_SETTINGS
@given(sets=set_lists(), policy=policies)
def test_at_least_min_keep_sets_survive(sets: list[SetInfo], policy: RetentionPolicy) -> None:
    assert len(kept(decide(sets, policy, now=NOW))) >= min(policy.min_keep, len(sets))


@PROPERTY_SETTINGS
@given(sets=set_lists(), policy=policies)
def test_no_kept_set_loses_an_ancestor(sets: list[SetInfo], policy: RetentionPolicy) -> None:
    decisions = by_id(decide(sets, policy, now=NOW))
    known = {s.id: s for s in sets}
    for info in sets:
        if decisions[info.id].keep and info.parent in known:
            assert decisions[info.parent].keep, f"{info.id} kept but its parent {info.parent} is not"


@PROPERTY_SETTINGS
@given(sets=set_lists(), policy=policies)
def test_rules_keep_what_they_promise(sets: list[SetInfo], policy: RetentionPolicy) -> None:
    decisions = by_id(decide(sets, policy, now=NOW))
    newest_first = sorted(sets, key=lambda s: (s.time, s.id), reverse=True)
    for info in newest_first[: policy.keep_last]:
        assert decisions[info.id].keep
    if policy.keep_within:
        for info in sets:
            if info.time >= NOW - timedelta(seconds=policy.keep_within):
                assert decisions[info.id].keep


@PROPERTY_SETTINGS
@given(sets=set_lists(), policy=policies)
def test_applying_the_policy_again_deletes_nothing_more(sets: list[SetInfo], policy: RetentionPolicy) -> None:
    first = by_id(decide(sets, policy, now=NOW))
    survivors = [s for s in sets if first[s.id].keep]
    assert kept(decide(survivors, policy, now=NOW)) == {s.id for s in survivors}


@PROPERTY_SETTINGS
@given(sets=set_lists(), policy=policies)
def test_deletion_order_removes_dependents_first(sets: list[SetInfo], policy: RetentionPolicy) -> None:
    decisions = decide(sets, policy, now=NOW)
    order = deletion_order(sets, decisions)
    assert sorted(order) == sorted(d.set_id for d in decisions if not d.keep)
    position = {set_id: n for n, set_id in enumerate(order)}
    for info in sets:
        # Parents are drawn among earlier sets only, so there are no cycles here.
        if info.id in position and info.parent in position:
            assert position[info.id] < position[info.parent]
