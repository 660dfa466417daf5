"""A real Prometheus server for tests.

`PrometheusServer` starts the `prometheus` binary on 127.0.0.1 with a free port, a temporary
configuration (1 s scrape and evaluation interval, the given targets, optional rule files) and a
temporary TSDB, waits until `/-/ready`, and offers the HTTP API as small typed helpers. Stopping
terminates the process and kills it if it does not exit in time.

Use it from any test module, either through the ``prometheus_factory`` fixture (tests/conftest.py)::

    def test_x(prometheus_factory):
        prom = prometheus_factory(["127.0.0.1:9877"])
        prom.wait_for("up == 1")

or, for a module-scoped server, with the `running_prometheus(...)` context manager.

Prometheus 2.x hands new targets to the scraper about 5 s after start-up (its discovery manager
throttles updates), so the first samples take 5-7 s: give `wait_for` a timeout of 10 s or more.

The binary is `$PROMETHEUS_BIN` or `prometheus` on PATH (`scripts/setup.sh --test-tools` installs
it); without it the test fails with a message saying so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.promql import RULE_FILES

PROMETHEUS_BIN_ENV = "PROMETHEUS_BIN"
JOB = "alpaca-exporter"

Sample = dict[str, Any]


class PrometheusNotFoundError(RuntimeError):
    """The prometheus binary is not installed."""


class PrometheusStartError(RuntimeError):
    """Prometheus exited or did not become ready."""


class PrometheusQueryError(RuntimeError):
    """The API answered with status "error" (a bad expression, a bad parameter...)."""

    def __init__(self, expr: str, error_type: str, error: str) -> None:
        super().__init__(f"{error_type}: {error} (query: {expr})")
        self.expr = expr
        self.error_type = error_type
        self.error = error


def find_prometheus() -> str:
    """Path of the prometheus binary, or PrometheusNotFoundError explaining how to install it."""
    configured = os.environ.get(PROMETHEUS_BIN_ENV)
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            raise PrometheusNotFoundError(f"{PROMETHEUS_BIN_ENV}={configured} is not an executable file")
        return configured
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusNotFoundError(
            "the `prometheus` binary is not on PATH: run `scripts/setup.sh --test-tools` "
            f"(Debian package `prometheus`) or set {PROMETHEUS_BIN_ENV}"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the caller retries if someone takes it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class PrometheusServer:
    """One prometheus process with its own config and storage under `workdir`."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        workdir: Path,
        job: str = JOB,
        rule_files: Sequence[Path] = (),
        scrape_interval: float = 1.0,
        evaluation_interval: float = 1.0,
        extra_scrape_configs: Sequence[Mapping[str, Any]] = (),
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.scrape_targets = list(targets)
        self.workdir = workdir
        self.job = job
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.extra_scrape_configs = list(extra_scrape_configs)
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.port = 0
        self.log_path = workdir / "prometheus.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        scrape_configs: list[dict[str, Any]] = []
        if self.scrape_targets:
            scrape_configs.append({"job_name": self.job, "static_configs": [{"targets": self.scrape_targets}]})
        scrape_configs.extend(dict(c) for c in self.extra_scrape_configs)
        return {
            "global": {
                "scrape_interval": _duration(self.scrape_interval),
                "scrape_timeout": _duration(self.scrape_interval),
                "evaluation_interval": _duration(self.evaluation_interval),
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": scrape_configs,
        }

    def start(self) -> PrometheusServer:
        binary = self.binary or find_prometheus()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        last_error = ""
        # The free port can be taken between probing and binding: try a few.
        for _attempt in range(3):
            self.port = free_port()
            storage = Path(tempfile.mkdtemp(prefix="tsdb-", dir=self.workdir))
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config_path}",
                        f"--storage.tsdb.path={storage}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--storage.tsdb.retention.time=1d",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            self._client = httpx.Client(base_url=self.url, timeout=10.0)
            try:
                self._wait_ready()
                return self
            except PrometheusStartError as exc:
                last_error = str(exc)
                self.stop()
                if "address already in use" not in last_error:
                    break
        raise PrometheusStartError(last_error)

    def _wait_ready(self) -> None:
        assert self._process is not None
        assert self._client is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrometheusStartError(f"prometheus exited with {self._process.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if self._client.get("/-/ready").status_code == 200:
                    return
            time.sleep(0.05)
        raise PrometheusStartError(f"prometheus not ready after {self.startup_timeout} s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- HTTP API ------------------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, Any] | list[tuple[str, Any]] | None = None) -> Any:
        """GET /api/v1/{path}; returns `data`, raises PrometheusQueryError on status "error"."""
        if self._client is None:
            raise RuntimeError("prometheus is not running")
        response = self._client.get(f"/api/v1/{path}", params=params)
        try:
            body = response.json()
        except ValueError:
            response.raise_for_status()
            raise
        if body.get("status") != "success":
            query = ""
            if isinstance(params, Mapping):
                query = str(params.get("query", params))
            raise PrometheusQueryError(query, body.get("errorType", ""), body.get("error", ""))
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """Instant query; a scalar or string result comes back as one sample without labels."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[Sample] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Sample]:
        data = self.api("query_range", {"query": expr, "start": start, "end": end, "step": step})
        result: list[Sample] = data["result"]
        return result

    def series(self, *match: str, start: float | None = None, end: float | None = None) -> list[dict[str, str]]:
        params: list[tuple[str, Any]] = [("match[]", m) for m in match]
        if start is not None:
            params.append(("start", start))
        if end is not None:
            params.append(("end", end))
        result: list[dict[str, str]] = self.api("series", params)
        return result

    def metadata(self, metric: str | None = None) -> dict[str, list[dict[str, str]]]:
        """Metric metadata (type, help, unit) by metric family name, as scraped from the targets.

        Prometheus asks prometheus_client for OpenMetrics, where a counter's family has no `_total`:
        `metadata("alpaca_errors")`, not `metadata("alpaca_errors_total")`.
        """
        result: dict[str, list[dict[str, str]]] = self.api("metadata", {"metric": metric} if metric else None)
        return result

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error."""
        result: list[dict[str, Any]] = self.api("targets", {"state": "active"})["activeTargets"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("rules")["groups"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return result

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[Sample]], bool] = bool,
        timeout: float = 10.0,
        interval: float = 0.2,
    ) -> list[Sample]:
        """Poll `expr` until `predicate(result)` holds; TimeoutError with the last result otherwise."""
        deadline = time.monotonic() + timeout
        result: list[Sample] = []
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{expr!r} did not satisfy the predicate within {timeout} s; last: {result}")
            time.sleep(interval)

    def wait_for_targets_up(self, timeout: float = 10.0) -> list[Sample]:
        """Wait until every configured target of the job has been scraped successfully."""
        return self.wait_for(
            f'up{{job="{self.job}"}} == 1',
            lambda r: len(r) == len(self.scrape_targets),
            timeout=timeout,
        )


@contextlib.contextmanager
def running_prometheus(targets: Sequence[str], workdir: Path, **kwargs: Any) -> Iterator[PrometheusServer]:
    """A started PrometheusServer, stopped on exit (fails the test when the binary is missing)."""
    try:
        server = PrometheusServer(targets, workdir=workdir, **kwargs).start()
    except PrometheusNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


PrometheusFactory = Callable[..., PrometheusServer]


# ---- the demo, scraped ---------------------------------------------------------------------------


class Live:
    """A running demo and the Prometheus that scrapes it every second."""

    def __init__(self, prom: PrometheusServer, target: str) -> None:
        self.prom = prom
        self.target = target

    def value(self, expr: str) -> float:
        """The first sample of an instant query (failing on an empty result)."""
        result = self.prom.query(expr)
        assert result, f"{expr}: empty"
        return float(result[0]["value"][1])


@contextlib.contextmanager
def live_demo(tmp_path_factory: pytest.TempPathFactory, ready: str, *demo_args: str) -> Iterator[Live]:
    """``alpaca-exporter demo [demo_args]`` scraped by a real Prometheus with the rule files loaded; yields
    once the PromQL expression ``ready`` has a result. The demo must stop gracefully (exit 0)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORTER_", "APCA_"))}
    env.update({"EXPORTER_HOST": "127.0.0.1", "EXPORTER_LOG_FORMAT": "json"})
    workdir = tmp_path_factory.mktemp("demo")
    log = (workdir / "demo.log").open("wb")
    command = [sys.executable, "-m", "exporter", "demo", "--port", str(port), *demo_args]
    demo = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert demo.poll() is None, Path(workdir / "demo.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the demo did not start"
            time.sleep(0.1)
        target = f"127.0.0.1:{port}"
        with running_prometheus([target], tmp_path_factory.mktemp("prom"), rule_files=RULE_FILES) as prom:
            prom.wait_for_targets_up(timeout=20)
            prom.wait_for(ready, timeout=90, interval=1.0)
            time.sleep(2.0)
            yield Live(prom, target)
    finally:
        demo.terminate()
        try:
            assert demo.wait(timeout=8) == 0  # SIGTERM: graceful, exit 0
        finally:
            if demo.poll() is None:
                demo.kill()
            log.close()
