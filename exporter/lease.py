"""Kubernetes leader election: reads and writes the Lease for ``exporter.core.election``.

Only the leader holds the Alpaca stream (one connection per key). This adapter does the I/O through
lightkube's async client (httpx underneath, like the Yahoo poller; imported only when
``EXPORTER_LEADER_ELECTION=kubernetes``) and calls the daemon back when the role changes:
``on_leading()`` starts the stream, ``await on_standby()`` closes it with a close frame.

Timing is client-go's: a candidate tries every retry period with up to 120 % jitter (two replicas
starting together do not collide forever); a leader renews every retry period, and each attempt is
bounded by what is left of its renew deadline, so a hung API server cannot keep a leader past it. The
wait between attempts is cut short at the deadline, so the step-down happens on time, not at the next
retry.

The bearer token is read from ``EXPORTER_KUBERNETES_TOKEN_FILE`` when it exists, and read again when the
file changes (the kubelet rotates it) or the server answers 401; it never appears in logs or /status.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.core.election import Election, LeaseView, LeaseWrite
from exporter.timers import Timers

if TYPE_CHECKING:
    from lightkube import AsyncClient
    from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger("exporter.leader")

JITTER = 1.2  # client-go's JitterFactor for candidates


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    api_url: str
    namespace: str
    name: str
    identity: str
    lease_s: float
    renew_deadline_s: float
    retry_s: float
    token_file: Path
    ca_file: Path | None = None


class LeaseElector:
    def __init__(
        self,
        config: LeaseConfig,
        timers: Timers,
        on_leading: Callable[[], None],
        on_standby: Callable[[str], Awaitable[None]],
    ) -> None:
        self.config = config
        self.election = Election(config.identity, config.lease_s, config.renew_deadline_s, config.retry_s)
        self._timers = timers
        self._on_leading = on_leading
        self._on_standby = on_standby
        self._client: AsyncClient | None = None
        self._token_stamp: tuple[int, int] | None = None  # the token file's (mtime, size) when read
        self._lease: Lease | None = None  # the last version read or written: what a PUT replaces
        self._failing: str | None = None  # the current API error episode, logged once
        self.errors: Counter[str] = Counter()

    # ---- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        election, timers = self.election, self._timers
        # Import lightkube and build the client before the first attempt, whose start the renew deadline
        # counts from (the import takes a good part of a second).
        self.client()
        while True:
            await self._attempt()
            if election.check_deadline(timers.monotonic()):
                await self._step_down("renew deadline passed")
            wait = election.retry_s if election.is_leader else election.retry_s * (1 + JITTER * random.random())
            if election.is_leader:
                wait = min(wait, election.budget(timers.monotonic()))
            await timers.sleep(wait)
            if election.check_deadline(timers.monotonic()):
                await self._step_down("renew deadline passed")

    async def _attempt(self) -> None:
        election, timers = self.election, self._timers
        if _file_stamp(self.config.token_file) != self._token_stamp:
            await self.aclose()  # the token file changed (rotated, created, removed): build a client anew
        self.client()
        sent_at = timers.monotonic()
        was_leader = election.is_leader
        try:
            async with timers.timeout(election.budget(sent_at)):
                lease = await self._get()
                write = election.observed(self._view(lease), timers.monotonic())
                if write is not None:
                    written = await self._write(write, lease)
                    election.written(_version(written), sent_at, timers.monotonic())
                    self._lease = written
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure is one failed attempt; the deadline decides
            self._failed(exc)
        else:
            self._recovered()
        if election.is_leader and not was_leader:
            log.warning(
                "became the leader: holding lease %s/%s; starting the Alpaca stream",
                self.config.namespace,
                self.config.name,
                extra={"event": "leader_elected", "identity": election.identity},
            )
            self._on_leading()
        elif was_leader and not election.is_leader:
            await self._step_down(f"lease taken by {election.holder}")

    async def _step_down(self, reason: str) -> None:
        log.error(
            "stepping down: %s; closing the Alpaca stream",
            reason,
            extra={"event": "leader_stepped_down", "identity": self.election.identity, "reason": reason},
        )
        await self._on_standby(reason)

    async def release(self) -> None:
        """Hand the Lease over (after the stream is closed): the standby takes it at its next retry."""
        write = self.election.release()
        if write is None or self._lease is None:
            return
        try:
            async with self._timers.timeout(self.config.retry_s):
                await self._write(write, self._lease)
            log.info("released the lease", extra={"event": "leader_released", "identity": self.election.identity})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the lease then expires on its own
            log.warning(
                "could not release the lease (%s); the standby takes over when it expires",
                _describe(exc),
                extra={"event": "leader_release_failed"},
            )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # ---- API calls ----------------------------------------------------------------------------------
    def client(self) -> AsyncClient:
        if self._client is None:
            from lightkube import AsyncClient
            from lightkube.config.kubeconfig import KubeConfig
            from lightkube.config.models import Cluster, User

            config = self.config
            ca = config.ca_file if config.ca_file is not None and config.ca_file.is_file() else None
            cluster = Cluster(server=config.api_url, certificate_auth=str(ca) if ca is not None else None)
            # No token file (outside a pod, or automountServiceAccountToken off): no Authorization header.
            # lightkube reads the file at the first request and again on a 401; _attempt also rebuilds the
            # client when the file changes, so a rotated token is used at once.
            self._token_stamp = _file_stamp(config.token_file)
            user = User(token_file=str(config.token_file)) if self._token_stamp is not None else User()
            kubeconfig = KubeConfig.from_one(cluster=cluster, user=user, namespace=config.namespace)
            self._client = AsyncClient(kubeconfig, namespace=config.namespace, field_manager="alpaca-exporter")
        return self._client

    async def _get(self) -> Lease | None:
        from lightkube import ApiError
        from lightkube.resources.coordination_v1 import Lease

        try:
            return await self.client().get(Lease, self.config.name, namespace=self.config.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    async def _write(self, write: LeaseWrite, current: Lease | None) -> Lease:
        from lightkube.models.coordination_v1 import LeaseSpec
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.coordination_v1 import Lease

        now = _micro_time(datetime.now(UTC))
        old = current.spec if current is not None and current.spec is not None else LeaseSpec()
        acquired = old.acquireTime
        spec = LeaseSpec(
            holderIdentity=write.holder,
            leaseDurationSeconds=max(1, round(write.duration_s)),
            acquireTime=now if write.acquire or acquired is None else _micro_time(acquired),
            renewTime=now,
            leaseTransitions=write.transitions if write.transitions is not None else (old.leaseTransitions or 0),
        )
        client = self.client()
        if write.create or current is None:
            meta = ObjectMeta(name=self.config.name, namespace=self.config.namespace)
            return await client.create(Lease(metadata=meta, spec=spec))
        # PUT with the resourceVersion we read: 409 if anyone wrote in between.
        return await client.replace(Lease(metadata=current.metadata, spec=spec))

    def _view(self, lease: Lease | None) -> LeaseView | None:
        if lease is None:
            return None
        spec = lease.spec
        return LeaseView(
            holder=(spec.holderIdentity or "") if spec else "",
            duration_s=float((spec.leaseDurationSeconds or 0) if spec else 0),
            transitions=(spec.leaseTransitions or 0) if spec else 0,
            version=_version(lease),
        )

    # ---- errors -------------------------------------------------------------------------------------
    def _failed(self, exc: Exception) -> None:
        kind = _kind(exc)
        self.errors[kind] += 1
        if kind == "conflict":
            return  # another replica won the race: the normal way to lose, not an error
        if self._failing != kind:
            self._failing = kind
            log.warning(
                "lease %s/%s: %s",
                self.config.namespace,
                self.config.name,
                _describe(exc),
                extra={"event": "lease_error", "kind": kind, "leader": self.election.is_leader},
            )

    def _recovered(self) -> None:
        if self._failing is not None:
            log.info("lease API reachable again", extra={"event": "lease_recovered"})
            self._failing = None

    def status(self) -> dict[str, Any]:
        election = self.election
        return {
            "mode": "kubernetes",
            "identity": election.identity,
            "role": election.role.name.lower(),
            "holder": election.holder,
            "lease": f"{self.config.namespace}/{self.config.name}",
            "transitions": election.transitions,
            "api_errors": dict(self.errors),
        }


def _micro_time(moment: datetime) -> datetime:
    """A MicroTime the API server can parse. lightkube writes ``isoformat()``, which drops the fraction
    of a whole second (``...:05Z``), and the server's MicroTime wants exactly six digits (400 otherwise):
    one microsecond later says the same thing in a form it accepts."""
    return moment.replace(microsecond=1) if moment.microsecond == 0 else moment


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _version(lease: Lease) -> str:
    return (lease.metadata.resourceVersion or "") if lease.metadata is not None else ""


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    code = getattr(getattr(exc, "status", None), "code", None)
    if code == 409:
        return "conflict"
    if isinstance(code, int):
        return f"http_{code}"
    response = getattr(exc, "response", None)
    if response is not None and hasattr(response, "status_code"):
        return f"http_{response.status_code}"
    return "unreachable" if isinstance(exc, OSError) or "Connect" in type(exc).__name__ else type(exc).__name__


def _describe(exc: BaseException) -> str:
    """The error without echoing request headers (the bearer token) or bodies."""
    kind = _kind(exc)
    if kind == "timeout":
        return "no answer before the deadline"
    status = getattr(exc, "status", None)
    reason = getattr(status, "reason", None)
    return f"{kind}" + (f" ({reason})" if reason else "")
