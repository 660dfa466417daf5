"""Leader election for an HA pair: client-go's Lease rules, without I/O.

Two replicas share one Alpaca key, and Alpaca allows one stream connection per key (a second gets 406,
and a connection dropped without a close frame holds the slot for ~90 s). So exactly one replica, the
leader, holds the stream; the standby serves everything else and takes over when the leader goes. The
leader is whoever holds a ``coordination.k8s.io/v1`` Lease. The adapter (``exporter/lease.py``) reads
and writes the Lease and asks this object what to do; this object never touches the network or a clock.

The rules are client-go's (``tools/leaderelection``), with one stricter choice:

1. Every retry period a candidate reads the Lease. None yet: create it, holding it. Held by us: renew.
   Held by someone else: wait until ``leaseDurationSeconds`` have passed since we **observed** its last
   change (our own monotonic clock, never the writer's ``renewTime``: the replicas' wall clocks need
   not agree). Released (empty holder) or expired: take it over, counting a transition.
2. Every write carries the ``resourceVersion`` we read, so of two replicas racing for an expired Lease
   the API server accepts one and answers the other 409: the loser simply stays standby.
3. A leader renews every retry period. If it has not renewed successfully for ``renew_deadline``
   seconds, counted from when it **sent** its last successful renewal, it steps down (closes its
   stream). The standby counts the lease from when it observed that renewal, which was after it was
   sent, so the step-down happens at least ``lease - renew_deadline`` seconds before any standby can
   take over: two streams never overlap. (client-go counts its deadline from the start of the retry
   loop, up to one retry period later than this; counting from the send keeps the margin exact.)
4. A leader stopping on purpose first closes its stream, then releases the Lease: empty holder and a
   one-second duration, so the standby takes over at its next retry instead of waiting for expiry.

``transitions`` counts this replica's own role changes (standby → leader and back); the Lease's
``leaseTransitions`` counts holder changes across the pair.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    STANDBY = 0
    LEADER = 1


@dataclass(frozen=True, slots=True)
class LeaseView:
    """What the adapter read: the Lease's holder, duration, transitions and resourceVersion."""

    holder: str
    duration_s: float
    transitions: int
    version: str


@dataclass(frozen=True, slots=True)
class LeaseWrite:
    """What to write. ``create``: POST a new Lease, else PUT over the version read. ``acquire``: a new
    term starts (the adapter sets ``acquireTime``); ``renewTime`` is always now."""

    create: bool
    holder: str
    duration_s: float
    transitions: int | None  # None: keep the Lease's
    acquire: bool


class Election:
    def __init__(self, identity: str, lease_s: float, renew_deadline_s: float, retry_s: float) -> None:
        if not 0 < retry_s < renew_deadline_s < lease_s:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration")
        self.identity = identity
        self.lease_s = lease_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_s = retry_s
        self.role = Role.STANDBY
        self.transitions = 0
        self.holder = ""  # the holder last observed (for /status)
        self._version = ""  # the resourceVersion last observed, and when
        self._observed_at = float("-inf")
        self._renewed_at = float("-inf")  # when the last successful write of ours was sent

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def observed(self, lease: LeaseView | None, now: float) -> LeaseWrite | None:
        """The Lease as just read (None: it does not exist). Returns the write to attempt, if any.

        A leader that finds someone else holding a valid lease has lost it and steps down here."""
        if lease is None:
            return LeaseWrite(True, self.identity, self.lease_s, 0, acquire=True)
        if lease.version != self._version:
            self._version = lease.version
            self._observed_at = now
        self.holder = lease.holder
        if lease.holder == self.identity:
            return LeaseWrite(False, self.identity, self.lease_s, lease.transitions, acquire=False)
        if lease.holder and now < self._observed_at + lease.duration_s:
            self._set_role(Role.STANDBY)
            return None
        return LeaseWrite(False, self.identity, self.lease_s, lease.transitions + 1, acquire=True)

    def written(self, version: str, sent_at: float, now: float) -> None:
        """Our write (sent at ``sent_at``) was accepted and the Lease is now at ``version``: we lead."""
        self._version = version
        self._observed_at = now
        self._renewed_at = sent_at
        self.holder = self.identity
        self._set_role(Role.LEADER)

    def budget(self, now: float) -> float:
        """How long the next read-and-write may take: a leader must finish before its renew deadline."""
        if self.is_leader:
            return max(0.0, self._renewed_at + self.renew_deadline_s - now)
        return self.renew_deadline_s

    def check_deadline(self, now: float) -> bool:
        """Step down if the renew deadline has passed. True when this call made us standby."""
        if self.is_leader and now >= self._renewed_at + self.renew_deadline_s:
            self._set_role(Role.STANDBY)
            return True
        return False

    def release(self) -> LeaseWrite | None:
        """The write that hands the Lease over on a graceful stop (None unless we hold it). Call after the
        stream is closed; we are standby from here on, whether or not the write succeeds."""
        if not self.is_leader:
            return None
        self._set_role(Role.STANDBY)
        return LeaseWrite(False, "", 1.0, None, acquire=True)

    def _set_role(self, role: Role) -> None:
        if role is not self.role:
            self.role = role
            self.transitions += 1
