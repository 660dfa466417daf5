"""A real Prometheus scrapes the real exporter process over TLS with basic auth (the exporter-toolkit
web config), and a scrape without credentials — or without TLS — fails (target down)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.pki import HASH, PASSWORD, Pki
from tests.support.prometheus import PrometheusFactory, PrometheusServer, free_port

KEY = "PKSCRAPETESTKEY00001"
SECRET = "scrape-secret-0123456789abcdef0123"


@pytest.fixture
def protected_exporter(pki: Pki, tmp_path: Path) -> Iterator[int]:
    """The console program with TLS + basic auth; its upstreams are a refused port (no sources needed
    to serve /metrics). Yields its port."""
    config = tmp_path / "web.yml"
    config.write_text(
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        f"basic_auth_users:\n  prometheus: {HASH}\n"
    )
    port = free_port()
    dead = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORTER_", "APCA_"))}
    env.update(
        {
            "APCA_API_KEY_ID": KEY,
            "APCA_API_SECRET_KEY": SECRET,
            "EXPORTER_SYMBOLS": "AAPL",
            "EXPORTER_ALPACA_URL": f"ws://127.0.0.1:{dead}/v2/iex",
            "EXPORTER_YAHOO_URL": f"http://127.0.0.1:{dead}",
            "EXPORTER_HOST": "127.0.0.1",
            "EXPORTER_PORT": str(port),
            "EXPORTER_WEB_CONFIG_FILE": str(config),
            "EXPORTER_ALPACA_BACKOFF_MAX_SECONDS": "1",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    started = False
    try:
        deadline = time.monotonic() + 15
        with httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca)), timeout=2.0) as http:
            while True:
                assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
                try:
                    if http.get(f"https://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the exporter did not come up"
                time.sleep(0.1)
        started = True
        yield port
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        if started:  # a SIGTERM before start-up completed ends it by default action: not the point here
            assert proc.returncode == 0, err.decode()[-2000:]
        for secret in (KEY, SECRET, PASSWORD):
            assert secret not in out.decode() + err.decode()


@pytest.mark.e2e
def test_prometheus_scrapes_over_tls_with_basic_auth_and_anonymous_fails(
    protected_exporter: int, pki: Pki, prometheus_factory: PrometheusFactory
) -> None:
    target = [f"127.0.0.1:{protected_exporter}"]
    tls = {"ca_file": str(pki.ca)}
    prom: PrometheusServer = prometheus_factory(
        [],
        extra_scrape_configs=[
            {
                "job_name": "protected",
                "scheme": "https",
                "tls_config": tls,
                "basic_auth": {"username": "prometheus", "password": PASSWORD},
                "static_configs": [{"targets": target}],
            },
            {"job_name": "anonymous", "scheme": "https", "tls_config": tls, "static_configs": [{"targets": target}]},
            {
                "job_name": "wrong-password",
                "scheme": "https",
                "tls_config": tls,
                "basic_auth": {"username": "prometheus", "password": "not-the-password"},
                "static_configs": [{"targets": target}],
            },
            {"job_name": "plain-http", "static_configs": [{"targets": target}]},
        ],
    )
    prom.wait_for('up{job="protected"} == 1', timeout=20)
    build = prom.wait_for('alpaca_exporter_build_info{job="protected"}', timeout=10)
    assert build[0]["value"][1] == "1"
    down = prom.wait_for('up{job=~"anonymous|wrong-password|plain-http"} == 0', lambda r: len(r) == 3, timeout=10)
    assert {s["metric"]["job"] for s in down} == {"anonymous", "wrong-password", "plain-http"}
    errors = {t["labels"]["job"]: t["lastError"] for t in prom.targets()}
    assert "401" in errors["anonymous"]
    assert "401" in errors["wrong-password"]
    assert errors["plain-http"]  # an HTTP request to a TLS port: no scrape
    assert errors["protected"] == ""
    # Nothing but /metrics' own series came through: no samples from the failed jobs.
    assert prom.query('count(alpaca_exporter_build_info{job!="protected"})') == []
