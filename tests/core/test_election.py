"""Leader election rules (exporter/core/election.py): client-go's Lease semantics, on a moved clock."""

from __future__ import annotations

import pytest

from exporter.core.election import Election, LeaseView, LeaseWrite, Role

LEASE, DEADLINE, RETRY = 15.0, 10.0, 2.0


def elect(identity: str = "a") -> Election:
    return Election(identity, LEASE, DEADLINE, RETRY)


def view(holder: str, version: str, duration: float = LEASE, transitions: int = 0) -> LeaseView:
    return LeaseView(holder, duration, transitions, version)


def test_no_lease_yet_is_created_and_held() -> None:
    e = elect()
    assert e.observed(None, 0.0) == LeaseWrite(True, "a", LEASE, 0, acquire=True)
    e.written("1", sent_at=0.0, now=0.1)
    assert (e.role, e.is_leader, e.transitions, e.holder) == (Role.LEADER, True, 1, "a")


def test_our_own_lease_is_renewed_keeping_the_term() -> None:
    e = elect()
    e.written("1", 0.0, 0.0)
    assert e.observed(view("a", "1", transitions=3), 2.0) == LeaseWrite(False, "a", LEASE, 3, acquire=False)


def test_a_valid_lease_of_another_holder_is_left_alone_until_it_expires_on_our_clock() -> None:
    e = elect()
    assert e.observed(view("b", "7"), 100.0) is None  # first seen at 100
    assert e.observed(view("b", "7"), 114.9) is None  # unchanged for 14.9 s: still valid
    takeover = e.observed(view("b", "7", transitions=4), 115.0)
    assert takeover == LeaseWrite(False, "a", LEASE, 5, acquire=True)


def test_every_change_of_the_lease_restarts_its_expiry() -> None:
    e = elect()
    e.observed(view("b", "7"), 100.0)
    assert e.observed(view("b", "8"), 110.0) is None  # renewed: counted from 110 now
    assert e.observed(view("b", "8"), 124.9) is None
    assert e.observed(view("b", "8"), 125.0) is not None


def test_the_holders_own_duration_counts() -> None:
    e = elect()
    e.observed(view("b", "7", duration=60.0), 0.0)
    assert e.observed(view("b", "7", duration=60.0), 59.0) is None
    assert e.observed(view("b", "7", duration=60.0), 60.0) is not None


def test_a_released_lease_is_taken_at_once() -> None:
    e = elect()
    e.observed(view("b", "7"), 0.0)
    assert e.observed(view("", "8", duration=1.0, transitions=2), 0.5) == LeaseWrite(False, "a", LEASE, 3, True)


def test_the_leader_steps_down_at_its_renew_deadline_counted_from_the_send() -> None:
    e = elect()
    e.written("1", sent_at=10.0, now=10.5)
    assert e.budget(12.0) == pytest.approx(8.0)
    assert not e.check_deadline(19.99)
    assert e.check_deadline(20.0)
    assert (e.role, e.transitions) == (Role.STANDBY, 2)
    assert not e.check_deadline(30.0)  # already standby: nothing more to do
    assert e.budget(30.0) == DEADLINE  # a candidate's attempt may take the whole deadline


def test_the_step_down_comes_before_any_standby_can_take_over() -> None:
    # The standby saw our last renewal no earlier than we sent it; it can take over LEASE seconds later.
    leader, standby = elect("a"), elect("b")
    leader.written("5", sent_at=50.0, now=50.2)
    standby.observed(view("a", "5"), 50.1)
    step_down = next(t / 10 for t in range(500, 800) if leader.check_deadline(t / 10))
    takeover = next(t / 10 for t in range(500, 800) if standby.observed(view("a", "5"), t / 10) is not None)
    assert takeover - step_down >= LEASE - DEADLINE


def test_a_leader_that_finds_another_holder_has_lost_the_lease() -> None:
    e = elect()
    e.written("1", 0.0, 0.0)
    assert e.observed(view("b", "2"), 3.0) is None
    assert (e.role, e.holder, e.transitions) == (Role.STANDBY, "b", 2)


def test_release_hands_the_lease_over_and_only_a_leader_has_one() -> None:
    e = elect()
    assert e.release() is None
    e.written("1", 0.0, 0.0)
    assert e.release() == LeaseWrite(False, "", 1.0, None, acquire=True)
    assert e.role is Role.STANDBY


@pytest.mark.parametrize(("retry", "deadline", "lease"), [(2, 10, 10), (10, 10, 15), (0, 10, 15), (2, 16, 15)])
def test_timings_that_could_overlap_two_leaders_are_refused(retry: float, deadline: float, lease: float) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        Election("a", lease, deadline, retry)
