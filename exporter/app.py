"""The daemon: wires the adapters, the core and the endpoints into one supervised asyncio process.

Data flows one way: the Alpaca client and the Yahoo poller ``emit`` events onto one queue; one router
task feeds them to the core (the single writer, so no locks) and acts on its effects — logging
transitions, switching the poller's rate, asking the client to reconnect a stale stream. A ticker keeps
the core's timers moving. Every long-running task is supervised: a crash is logged, counted and the task
restarted after a pause, never silently lost. SIGTERM, SIGINT and SIGHUP stop everything within a few
seconds, closing the stream with a proper close frame; a DNS lookup hung in a resolver thread does not hold
the exit up. Every wait goes through one ``Timers`` object (``exporter/timers.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from exporter import __version__
from exporter.core.clock import Clock
from exporter.core.events import Event, PrimaryData, Tick
from exporter.core.router import BreakerTripped, Core, CoreConfig, PrimaryStale, State, Transition
from exporter.feeds import FEEDS
from exporter.lease import LeaseConfig, LeaseElector
from exporter.logs import add_secrets, configure_logging, install_excepthook
from exporter.metrics import build_registry, render_metrics
from exporter.settings import SERVICE_ACCOUNT_DIR, ConfigError, Settings
from exporter.sources.alpaca.client import AlpacaClient, AlpacaClientConfig
from exporter.sources.backoff import Backoff
from exporter.sources.yahoo import YahooPoller, YahooPollerConfig
from exporter.timers import LoopTimers, Timers
from exporter.web import bound_port, create_app, raise_open_files_limit, start_server, stop_server
from exporter.webconfig import load_web_config

log = logging.getLogger("exporter.router")
app_log = logging.getLogger("exporter.app")

TICK_SECONDS = 0.25
# Scrapes within this window share one render (a scrape storm must not take ingestion's core); far
# below any scrape interval, so a normal scrape always sees fresh values.
METRICS_CACHE_SECONDS = 0.25
SHUTDOWN_BUDGET_SECONDS = 4.0
CLOCK_STEP_SECONDS = 1.0  # wall time moving this much against monotonic time within one tick is a step
# A crashed task is restarted after 0.5 s, doubling to 30 s while it keeps crashing; a run that lasted
# longer than SUPERVISOR_HEALTHY_SECONDS starts the doubling over.
SUPERVISOR_BACKOFF = (0.5, 30.0)
SUPERVISOR_HEALTHY_SECONDS = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def core_config(settings: Settings) -> CoreConfig:
    return CoreConfig(
        symbols=tuple(settings.symbols),
        stale_after_s=settings.stale_after_seconds,
        market_hours=settings.market_hours_mode,
        market_delay_s=FEEDS[settings.alpaca_feed].delay_s,
        failback_after_s=settings.failback_after_seconds,
        max_message_age_s=settings.message_max_age_seconds,
        max_clock_skew_s=settings.max_clock_skew_seconds,
        breaker_percent=settings.circuit_breaker_percent,
        breaker_cooldown_s=settings.circuit_breaker_cooldown_seconds,
        max_symbol_series=settings.max_symbol_series,
        fallback_enabled=settings.yahoo_enabled,
        channels=tuple(settings.alpaca_channels),
        max_stream_lag_s=settings.max_stream_lag_seconds,
    )


def alpaca_config(settings: Settings) -> AlpacaClientConfig:
    assert settings.apca_api_key_id is not None
    assert settings.apca_api_secret_key is not None
    return AlpacaClientConfig(
        url=settings.stream_url,
        key=settings.apca_api_key_id.get_secret_value(),
        secret=settings.apca_api_secret_key.get_secret_value(),
        symbols=tuple(settings.symbols),
        channels=tuple(settings.alpaca_channels),
        encoding=settings.alpaca_encoding,
        family=FEEDS[settings.alpaca_feed].family,
        open_timeout=settings.alpaca_handshake_timeout_seconds,
        step_timeout=settings.alpaca_handshake_timeout_seconds,
        ping_interval=settings.alpaca_ping_interval_seconds,
        ping_timeout=settings.alpaca_ping_timeout_seconds,
        backoff_base=min(1.0, settings.alpaca_backoff_max_seconds),
        backoff_max=settings.alpaca_backoff_max_seconds,
        connection_limit_backoff=settings.alpaca_connection_limit_backoff_seconds,
        fatal_retry=settings.alpaca_fatal_retry_seconds,
    )


def lease_config(settings: Settings) -> LeaseConfig:
    assert settings.api_url is not None  # the settings refuse kubernetes election without one
    return LeaseConfig(
        api_url=settings.api_url,
        namespace=settings.lease_namespace,
        name=settings.leader_election_lease_name,
        identity=settings.lease_identity,
        lease_s=settings.leader_election_lease_seconds,
        renew_deadline_s=settings.leader_election_renew_deadline_seconds,
        retry_s=settings.leader_election_retry_period_seconds,
        token_file=settings.kubernetes_token_file,
        ca_file=Path(SERVICE_ACCOUNT_DIR, "ca.crt"),
    )


def yahoo_config(settings: Settings) -> YahooPollerConfig:
    return YahooPollerConfig(
        base_url=settings.yahoo_url,
        symbols=tuple(settings.symbols),
        standby_interval=settings.yahoo_standby_interval_seconds,
        active_interval=settings.yahoo_interval_seconds,
        yahoo_symbols=settings.yahoo_symbol_map,
        family=FEEDS[settings.alpaca_feed].family,
    )


class EventQueue:
    """The one queue between the adapters and the router.

    Control events are never dropped; data frames are bounded (``max_frames``): past the bound the
    newest frame is dropped and counted, so a slow router shows up on /metrics instead of in memory.
    """

    def __init__(self, max_frames: int) -> None:
        self._items: deque[Event] = deque()
        self._frames = 0
        self.max_frames = max_frames
        self.dropped = 0
        self._ready = asyncio.Event()

    def put(self, event: Event) -> None:
        if type(event) is PrimaryData:
            if self._frames >= self.max_frames:
                self.dropped += 1
                return
            self._frames += 1
        self._items.append(event)
        self._ready.set()

    async def get_batch(self, limit: int = 256) -> list[Event]:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        batch: list[Event] = []
        items = self._items
        while items and len(batch) < limit:
            event = items.popleft()
            if type(event) is PrimaryData:
                self._frames -= 1
            batch.append(event)
        return batch

    def stats(self) -> tuple[int, int]:
        return self._frames, self.dropped


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        timers: Timers | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.timers = timers or LoopTimers()
        self.clock = clock or self.timers
        self.core = Core(core_config(settings), self.clock)
        self.queue = EventQueue(settings.max_queue_frames)
        self.elector = (
            LeaseElector(lease_config(settings), self.timers, self._start_stream, self._stop_stream)
            if settings.leader_election == "kubernetes"
            else None
        )
        self.registry = registry or build_registry(
            self.core,
            self.queue.stats,
            self._leader_stats if self.elector is not None else None,  # None: always the leader
            feed_info=(settings.alpaca_feed, settings.alpaca_encoding),
        )
        self.alpaca = AlpacaClient(alpaca_config(settings), self.queue.put, timers=self.timers)
        self._stream: asyncio.Task[None] | None = None  # the leader's stream task (leader election only)
        self.yahoo = (
            YahooPoller(yahoo_config(settings), self.queue.put, timers=self.timers) if settings.yahoo_enabled else None
        )
        self.stopping = asyncio.Event()
        self.task_restarts: dict[str, int] = {}
        self.port: int | None = None
        self._started = asyncio.Event()
        # Loaded here, not at the first request: a bad certificate or hash fails the start, clearly.
        self.web_config = load_web_config(settings.web_config_file) if settings.web_config_file else None

    # ---- the router task -------------------------------------------------------------------------
    async def _route(self) -> None:
        core = self.core
        while True:
            for event in await self.queue.get_batch():
                effects = core.handle(event)
                if effects:
                    self._apply(effects)
            # Let the reader and the web server run between batches: a burst never starves a scrape.
            await asyncio.sleep(0)

    def _apply(self, effects: Any) -> None:
        for effect in effects:
            if isinstance(effect, Transition):
                self._on_transition(effect)
            elif isinstance(effect, BreakerTripped):
                log.error(
                    "circuit breaker tripped: %s moved %.1f%% (%s %.4f against %.4f)",
                    effect.symbol,
                    effect.move_percent,
                    effect.source,
                    effect.price,
                    effect.reference,
                    extra={
                        "event": "circuit_breaker_tripped",
                        "symbol": effect.symbol,
                        "source": effect.source,
                        "price": effect.price,
                        "reference": effect.reference,
                        "move_percent": round(effect.move_percent, 3),
                    },
                )
            elif isinstance(effect, PrimaryStale):
                log.warning(
                    "alpaca stream stale: no market data for %.1fs while the market is open; reconnecting",
                    effect.silent_seconds,
                    extra={"event": "stale_stream", "silent_seconds": round(effect.silent_seconds, 3)},
                )
                self.alpaca.request_reconnect("stale stream")

    def _on_transition(self, t: Transition) -> None:
        level = logging.INFO if t.new is State.PRIMARY_ACTIVE else logging.WARNING
        if t.new is State.BOTH_UNAVAILABLE:
            level = logging.ERROR
        log.log(
            level,
            "router state transition: %s → %s (reason: %s, duration: %.1fs)",
            t.previous.name,
            t.new.name,
            t.reason,
            t.seconds_in_previous,
            extra={
                "event": "router_transition",
                "previous_state": t.previous.name,
                "new_state": t.new.name,
                "reason": t.reason,
                "duration_seconds": round(t.seconds_in_previous, 3),
                "failover": t.failover,
                "recovery_seconds": None if t.recovery_seconds is None else round(t.recovery_seconds, 3),
            },
        )
        self._pace_fallback()

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.election.is_leader

    def _pace_fallback(self) -> None:
        # The leader polls fast whenever the primary is not the active source, so the fallback is fresh. A
        # standby keeps the slow standby poll: warm for a takeover, without doubling the load on Yahoo.
        if self.yahoo is not None:
            self.yahoo.set_active(self.leading and self.core.state is not State.PRIMARY_ACTIVE)

    def _leader_stats(self) -> tuple[float, float]:
        assert self.elector is not None
        election = self.elector.election
        return (1.0 if election.is_leader else 0.0), float(election.transitions)

    # ---- leader election: only the leader holds the Alpaca stream ----------------------------------
    def _start_stream(self) -> None:
        client = AlpacaClient(alpaca_config(self.settings), self.queue.put, timers=self.timers)
        self.alpaca = client
        self._stream = asyncio.get_running_loop().create_task(self._supervise("alpaca", lambda: self._run(client)))
        self._pace_fallback()

    async def _run(self, client: AlpacaClient) -> None:
        await client.run()
        if client is not self.alpaca or self._stream is None:
            await asyncio.Event().wait()  # stopped on purpose: wait to be cancelled, do not restart

    async def _stop_stream(self, reason: str = "shutdown") -> None:
        """Close the stream with a close frame, bounded so the step-down ends before the lease can expire
        (then the connection is dropped: a zombie slot for ~90 s, but never two live connections). The
        elector logs the ``reason``."""
        stream, self._stream = self._stream, None
        margin = self.settings.leader_election_lease_seconds - self.settings.leader_election_renew_deadline_seconds
        with contextlib.suppress(Exception):
            async with self.timers.timeout(min(SHUTDOWN_BUDGET_SECONDS / 2, margin / 2)):
                await self.alpaca.stop()
        if stream is not None:
            stream.cancel()
            await asyncio.wait([stream])  # its end, without taking a cancellation of ours for its own
        self._pace_fallback()

    async def _tick(self) -> None:
        clock = self.clock
        offset = clock.wall_ns() / 1e9 - clock.monotonic()
        while True:
            await self.timers.sleep(TICK_SECONDS)
            self.queue.put(Tick())
            # A wall-clock step (NTP correction, VM resume) moves every message's age at once: timers run
            # on monotonic time and do not notice, but validation does, so say it once per step.
            now_offset = clock.wall_ns() / 1e9 - clock.monotonic()
            if abs(now_offset - offset) > CLOCK_STEP_SECONDS:
                app_log.warning(
                    "wall clock stepped by %+.1fs; message ages are judged against the new time",
                    now_offset - offset,
                    extra={"event": "clock_step", "step_seconds": round(now_offset - offset, 3)},
                )
            offset = now_offset

    # ---- supervision ------------------------------------------------------------------------------
    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        timers = self.timers
        pause = Backoff(*SUPERVISOR_BACKOFF, jitter=(1.0, 1.0))  # no jitter: one task, nothing to spread
        while True:
            started = timers.monotonic()
            crash: Exception | None = None
            try:
                await factory()
                if self.stopping.is_set():
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                crash = exc
            if timers.monotonic() - started > SUPERVISOR_HEALTHY_SECONDS:
                pause.reset()
            if crash is None:
                app_log.error("task %s returned unexpectedly; restarting", name, extra={"task": name})
            else:
                app_log.error(
                    "task %s crashed: %s; restarting in %.1fs",
                    name,
                    type(crash).__name__,
                    pause.ceiling(),
                    exc_info=crash,
                    extra={"event": "task_crashed", "task": name},
                )
            self.task_restarts[name] = self.task_restarts.get(name, 0) + 1
            await timers.sleep(pause.next_delay())

    # ---- endpoints ---------------------------------------------------------------------------------
    def render_metrics(self, accept: str) -> tuple[bytes, str]:
        # The focused renderer for our own registry (same bytes as the library's encoders, 7-14x less
        # CPU at 500 symbols: docs/performance.md); an injected plain registry gets the library's.
        return render_metrics(self.registry, accept)

    def status(self) -> dict[str, Any]:
        status = self.core.status()
        status["version"] = __version__
        status["alpaca_client"] = _plain(self.alpaca.status)
        status["leader_election"] = self.elector.status() if self.elector is not None else {"mode": "off"}
        if self.yahoo is not None:
            status["yahoo_poller"] = _plain(self.yahoo.status())
        status["queue"] = {"frames": self.queue.stats()[0], "dropped": self.queue.dropped}
        status["task_restarts"] = dict(self.task_restarts)
        return status

    def ready(self) -> bool:
        return self.core.state is not State.BOTH_UNAVAILABLE

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until ``stop()`` (or a signal) and shut down within the budget."""
        web_app = create_app(
            render_metrics=self.render_metrics,
            status=self.status,
            ready=self.ready,
            web_config=self.web_config,
            metrics_cache_seconds=METRICS_CACHE_SECONDS,
            timers=self.timers,
        )
        open_files = raise_open_files_limit()  # before start_server: its connection cap follows the limit
        try:
            runner = await start_server(web_app, self.settings.host, self.settings.port)
        except OSError as exc:  # port in use, no such address: the operator's to fix, not a crash
            where = f"{self.settings.host}:{self.settings.port}"
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError([f"EXPORTER_PORT: cannot listen on {where}: {reason}"]) from None
        self.port = bound_port(runner)
        scheme = "https" if self.web_config is not None and self.web_config.tls is not None else "http"
        asyncio.get_running_loop().set_exception_handler(_loop_exception)
        app_log.info(
            "alpaca-exporter %s serving /metrics on %s://%s:%s",
            __version__,
            scheme,
            self.settings.host,
            self.port,
            extra={"event": "started", "host": self.settings.host, "port": self.port, "open_files_limit": open_files},
        )
        tasks: list[asyncio.Task[None]] = []
        try:
            async with asyncio.TaskGroup() as group:
                tasks.append(group.create_task(self._supervise("router", self._route)))
                tasks.append(group.create_task(self._supervise("ticker", self._tick)))
                if self.elector is None:
                    tasks.append(group.create_task(self._supervise("alpaca", self.alpaca.run)))
                else:
                    tasks.append(group.create_task(self._supervise("election", self.elector.run)))
                if self.yahoo is not None:
                    tasks.append(group.create_task(self._supervise("yahoo", self.yahoo.run)))
                self._started.set()
                await self.stopping.wait()
                await self._shutdown(tasks)
        finally:
            await stop_server(runner)
            app_log.info("alpaca-exporter stopped", extra={"event": "stopped"})

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        app_log.info("shutting down", extra={"event": "shutdown"})
        # Stop routing first: the sources going away on purpose is not an outage to report.
        tasks[0].cancel()
        if self.elector is not None:
            # The order matters: the stream closes first, then the Lease is handed over, so the standby
            # never connects while this replica still holds the key's one connection.
            tasks[2].cancel()
            await self._stop_stream()
            await self.elector.release()
            with contextlib.suppress(Exception):
                await self.elector.aclose()
        with contextlib.suppress(Exception):
            async with self.timers.timeout(SHUTDOWN_BUDGET_SECONDS / 2):
                await self.alpaca.stop()
        if self.yahoo is not None:
            with contextlib.suppress(Exception):
                async with self.timers.timeout(1.0):
                    await self.yahoo.aclose()
        for task in tasks:
            task.cancel()

    def stop(self) -> None:
        self.stopping.set()

    def on_signal(self, sig: signal.Signals) -> None:
        """Every stop signal is a graceful stop. SIGHUP too: a terminal closing or a supervisor's "reload"
        must not kill the stream without a close frame (Alpaca would then hold the key's only connection
        slot for ~90 s and the restarted exporter would meet 406 until it frees)."""
        app_log.info(
            "received %s; shutting down",
            sig.name,
            extra={"event": "signal", "signal": sig.name},
        )
        self.stop()

    async def wait_started(self) -> None:
        await self._started.wait()


def _plain(snapshot: Any) -> dict[str, Any]:
    """A status dataclass as JSON-ready values (sets become sorted lists)."""
    out: dict[str, Any] = {}
    for key, value in dataclasses.asdict(snapshot).items():
        if isinstance(value, frozenset | set):
            value = sorted(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Exceptions nobody awaited (a stray callback, a dropped task) go through the redacting logger."""
    exc = context.get("exception")
    app_log.error(
        "unhandled error in the event loop: %s",
        context.get("message", "error"),
        exc_info=(type(exc), exc, exc.__traceback__) if isinstance(exc, BaseException) else None,
        extra={"event": "loop_exception"},
    )


class ResolverExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor — where asyncio runs ``getaddrinfo`` — on daemon threads.

    A lookup can hang for as long as the resolver's retries last (tens of seconds during a DNS outage)
    and cannot be interrupted. asyncio.run() joins the default executor's threads at exit and the
    interpreter joins a ThreadPoolExecutor's at shutdown, so a hung lookup would hold the exit up far
    past the 5 s budget. Here each call runs on its own daemon thread and shutdown waits for none: an
    abandoned lookup dies with the process. At most ``max_workers`` run at once; past that a call fails
    at once (the adapters count a connection failure and back off) rather than pile up threads.
    """

    def __init__(self, max_workers: int = 16) -> None:
        super().__init__(max_workers=1)  # the base class's own pool is never used
        self._slots = threading.BoundedSemaphore(max_workers)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if not self._slots.acquire(blocking=False):
            future.set_exception(OSError("too many lookups pending (is DNS down?)"))
            return future

        def run() -> None:
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            finally:
                self._slots.release()

        threading.Thread(target=run, name="resolver", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=cancel_futures)


async def serve(settings: Settings, daemon_ready: Callable[[Daemon], Awaitable[None]] | None = None) -> int:
    daemon = Daemon(settings)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ResolverExecutor())
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, daemon.on_signal, sig)
    runner = asyncio.create_task(daemon.run())
    if daemon_ready is not None:
        await daemon.wait_started()
        await daemon_ready(daemon)
    await runner
    return 0


def quiet_libraries() -> None:
    """Per-request INFO lines of the HTTP and WebSocket libraries would drown the episode logs."""
    for name in ("httpx", "httpcore", "websockets", "aiohttp.access", "lightkube"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_daemon(settings: Settings) -> int:
    add_secrets(settings.secrets())
    configure_logging(settings.log_level, settings.log_format, secrets=settings.secrets())
    install_excepthook()
    quiet_libraries()
    return asyncio.run(serve(settings))
