"""exporter-toolkit web config: real TLS and basic auth on 127.0.0.1, and clear errors for bad files."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import bcrypt
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from exporter import web as xweb
from exporter import webconfig
from exporter.webconfig import WebConfig, load_web_config
from tests.support.pki import HASH, PASSWORD, TLS_BASE, Pki, client_context, write_key


def write_config(directory: Path, text: str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@asynccontextmanager
async def serve(config: WebConfig) -> AsyncIterator[str]:
    async with serve_app(config) as (base, _):
        yield base


@asynccontextmanager
async def serve_app(config: WebConfig) -> AsyncIterator[tuple[str, xweb.App]]:
    app = xweb.create_app(
        render_metrics=lambda accept: (b"up 1\n", "text/plain; version=0.0.4; charset=utf-8"),
        status=lambda: {"state": "PRIMARY_ACTIVE"},
        ready=lambda: True,
        web_config=config,
    )
    # No ssl_context given: start_server takes it from the app's web config.
    runner = await xweb.start_server(app, "127.0.0.1", 0)
    scheme = "https" if config.tls is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{xweb.bound_port(runner)}", app
    finally:
        await xweb.stop_server(runner)


# --------------------------------------------------------------------------------------------------
# TLS + basic auth over real sockets.


async def test_tls_and_basic_auth(pki: Pki) -> None:
    # Relative paths resolve against the config file's directory, not the working directory.
    path = write_config(
        pki.dir,
        f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
basic_auth_users:
  prometheus: {HASH}
""",
    )
    config = load_web_config(path)
    assert config.tls is not None
    assert config.tls.cert_file == pki.server_cert
    async with serve(config) as base, httpx.AsyncClient(verify=client_context(pki), timeout=5) as c:
        for endpoint in ("/metrics", "/readyz", "/status", "/", "/nope"):
            r = await c.get(base + endpoint)
            assert r.status_code == 401, endpoint
            assert r.headers["www-authenticate"] == 'Basic realm="alpaca-exporter"'
        r = await c.get(base + "/metrics", auth=("prometheus", PASSWORD))
        assert (r.status_code, r.text) == (200, "up 1\n")
        r = await c.get(base + "/status", auth=("prometheus", PASSWORD))
        assert r.json() == {"state": "PRIMARY_ACTIVE"}
        # Second request with the same credentials is served from the cache of good checks.
        assert (await c.get(base + "/readyz", auth=("prometheus", PASSWORD))).status_code == 200
        assert (await c.get(base + "/nope", auth=("prometheus", PASSWORD))).status_code == 404
        assert (await c.get(base + "/metrics", auth=("prometheus", "wrong"))).status_code == 401
        assert (await c.get(base + "/metrics", auth=("prometheus", PASSWORD + "x"))).status_code == 401
        assert (await c.get(base + "/metrics", auth=("nobody", PASSWORD))).status_code == 401
        assert (await c.get(base + "/metrics", auth=("prometheus", "p" * 100))).status_code == 401
        for header in ("Basic !!!notbase64", "Bearer abc", "Basic " + "dXNlcm5vY29sb24=", "Basic"):
            r = await c.get(base + "/metrics", headers={"Authorization": header})
            assert r.status_code == 401, header
        # Liveness stays open for probes that carry no credentials.
        r = await c.get(base + "/healthz")
        assert (r.status_code, r.text) == (200, "ok\n")
    # The certificate is not trusted by default, and plain HTTP does not get through.
    async with serve(config) as base, httpx.AsyncClient(timeout=5) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(base + "/healthz")
        with pytest.raises(httpx.HTTPError):
            await c.get(base.replace("https://", "http://") + "/healthz")


async def test_cached_check_is_fast_and_wrong_password_is_not_cached(pki: Pki) -> None:
    slow_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    config = load_web_config(write_config(pki.dir, f"basic_auth_users:\n  u: '{slow_hash}'\n", "slow.yml"))
    async with serve(config) as base, httpx.AsyncClient(timeout=5) as c:
        t0 = time.perf_counter()
        assert (await c.get(base + "/metrics", auth=("u", PASSWORD))).status_code == 200
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(5):
            assert (await c.get(base + "/metrics", auth=("u", PASSWORD))).status_code == 200
        cached = (time.perf_counter() - t0) / 5
        assert (await c.get(base + "/metrics", auth=("u", "bad"))).status_code == 401
        assert (await c.get(base + "/metrics", auth=("u", PASSWORD))).status_code == 200
    assert cached < first / 3, (first, cached)


async def test_basic_auth_without_tls_warns(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    config = load_web_config(write_config(pki.dir, f"basic_auth_users:\n  prometheus: {HASH}\n", "plain.yml"))
    assert config.tls is None
    assert any("without TLS" in r.message for r in caplog.records)
    async with serve(config) as base, httpx.AsyncClient(timeout=5) as c:
        assert (await c.get(base + "/metrics")).status_code == 401
        assert (await c.get(base + "/metrics", auth=("prometheus", PASSWORD))).status_code == 200


async def test_tls_only_needs_no_credentials(pki: Pki) -> None:
    config = load_web_config(
        write_config(
            pki.dir, f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n", "t.yml"
        )
    )
    assert config.basic_auth_users == {}
    async with serve(config) as base, httpx.AsyncClient(verify=client_context(pki), timeout=5) as c:
        assert (await c.get(base + "/metrics")).text == "up 1\n"


async def test_mutual_tls(pki: Pki) -> None:
    config = load_web_config(
        write_config(
            pki.dir,
            """
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS12
  max_version: TLS13
""",
            "mtls.yml",
        )
    )
    async with serve(config) as base:
        async with httpx.AsyncClient(verify=client_context(pki, with_cert=True), timeout=5) as c:
            assert (await c.get(base + "/metrics")).status_code == 200
        async with httpx.AsyncClient(verify=client_context(pki), timeout=5) as c:
            with pytest.raises(httpx.HTTPError):
                await c.get(base + "/metrics")


async def test_min_version_enforced(pki: Pki) -> None:
    config = load_web_config(
        write_config(
            pki.dir,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n",
            "v.yml",
        )
    )
    old_client = client_context(pki)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serve(config) as base:
        async with httpx.AsyncClient(verify=old_client, timeout=5) as c:
            with pytest.raises(httpx.ConnectError):
                await c.get(base + "/healthz")
        async with httpx.AsyncClient(verify=client_context(pki), timeout=5) as c:
            assert (await c.get(base + "/healthz")).status_code == 200


def test_empty_file_means_no_protection(tmp_path: Path) -> None:
    config = load_web_config(write_config(tmp_path, ""))
    assert config.tls is None
    assert config.basic_auth_users == {}
    assert config.ssl_context() is None


# --------------------------------------------------------------------------------------------------
# Bad files: one ValueError naming the file and the problem.


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config: [\n", "invalid YAML at line"),
        ("- a\n- b\n", "the document must be a mapping"),
        ("tls_server_config:\n  cert_file: server.crt\n", "tls_server_config.key_file is required"),
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n", "missing.crt does not exist"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: 12\n", "key_file must be a file path"),
        ("tls_server_config: yes\n", "tls_server_config must be a mapping"),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS14\n", "min_version"),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Sometimes\n",
            "client_auth_type 'Sometimes' is not one of",
        ),
        (
            TLS_BASE + "  client_auth_type: RequestClientCert\n",
            "RequestClientCert is not supported",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
            "  client_auth_type: RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt\n",
            "client_ca_file is set without a client_auth_type",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cipher_suites: [x]\n",
            "not supported",
        ),
        ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  cert_fiel: x\n", "unknown key"),
        ("basic_auth_users:\n  prometheus: plaintext-password\n", "basic_auth_users.prometheus is not a bcrypt hash"),
        ("basic_auth_users:\n  prometheus: 12345\n", "is not a bcrypt hash"),
        (f"basic_auth_users:\n  123: {HASH}\n", "user name 123 must be a non-empty string"),
        (f"basic_auth_users:\n  'a:b': {HASH}\n", "must not contain ':'"),
        ("basic_auth_users: [a]\n", "basic_auth_users must be a mapping"),
        ("basic_auth: {}\n", "unknown key basic_auth (known: basic_auth_users, http_server_config, tls_server_config)"),
        ("http_server_config:\n  headers: {X: y}\n", "http_server_config.headers is not supported"),
    ],
)
def test_bad_config_errors(pki: Pki, text: str, message: str) -> None:
    path = write_config(pki.dir, text, "bad.yml")
    with pytest.raises(ValueError, match=r"web config .*bad\.yml: ") as info:
        load_web_config(path)
    assert message in str(info.value)
    assert "plaintext-password" not in str(info.value)  # a mistaken plaintext password is never echoed


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.yml: cannot read: No such file"):
        load_web_config(tmp_path / "nope.yml")
    (tmp_path / "latin1.yml").write_bytes(b"basic_auth_users:\n  j\xe9r\xf4me: x\n")
    with pytest.raises(ValueError, match=r"latin1\.yml: cannot read: not UTF-8"):
        load_web_config(tmp_path / "latin1.yml")


def test_mismatched_key_and_garbage_cert(pki: Pki, tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    write_key(tmp_path / "other.key", other)
    path = write_config(
        tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: other.key\n", "mismatch.yml"
    )
    with pytest.raises(ValueError, match="cannot load cert_file"):
        load_web_config(path)
    (tmp_path / "garbage.crt").write_text("not a certificate\n")
    path = write_config(
        tmp_path, f"tls_server_config:\n  cert_file: garbage.crt\n  key_file: {pki.server_key}\n", "garbage.yml"
    )
    with pytest.raises(ValueError, match="cannot load cert_file"):
        load_web_config(path)


def test_http2_flag_accepted(tmp_path: Path) -> None:
    assert load_web_config(write_config(tmp_path, "http_server_config:\n  http2: false\n")).tls is None


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_bcrypt_variants_accepted(tmp_path: Path, prefix: str) -> None:
    variant = prefix + HASH[4:]
    config = load_web_config(write_config(tmp_path, f"basic_auth_users:\n  u: '{variant}'\n"))
    assert bcrypt.checkpw(PASSWORD.encode(), config.basic_auth_users["u"])


# --------------------------------------------------------------------------------------------------
# A wrong-password flood (no credentials needed): bcrypt runs in a pool of its own, bounded, and the
# checks of requests already gone are dropped.

# Cost 12: each check takes ≈ 0.25 s, so a dozen of them outlast what the tests wait for.
SLOW_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=12)).decode()


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def wrong_password_request() -> bytes:
    token = base64.b64encode(b"u:not-the-password").decode()
    return f"GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {token}\r\n\r\n".encode()


async def test_wrong_password_flood_leaves_host_name_lookups_alone(pki: Pki) -> None:
    # Host name lookups (the upstream reconnects) run in the loop's default executor: one thread here,
    # so a single bcrypt check queued in it would hold a lookup behind it.
    loop = asyncio.get_running_loop()
    executor = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(executor)
    config = load_web_config(write_config(pki.dir, f"basic_auth_users:\n  u: '{SLOW_HASH}'\n", "flood.yml"))
    async with serve_app(config) as (base, app):
        assert app.auth is not None
        port = int(base.rsplit(":", 1)[1])
        auth = app.auth
        flood = [asyncio.create_task(raw_answer(port, wrong_password_request())) for _ in range(12)]
        await wait_until(lambda: auth.pending == 12)
        await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 2.0)  # not behind 3 s of bcrypt
        assert auth.pending >= 10  # answered while the flood still waits, whatever the machine's speed
        assert (await flood[0])[:12] == b"HTTP/1.1 401"
        await hang_up(flood)  # the rest of the flood's checks are dropped (tested below): no 3 s wait
        await wait_until(lambda: auth.pending == 0)
    executor.shutdown(wait=False)


async def test_checks_of_requests_already_gone_are_dropped(pki: Pki) -> None:
    config = load_web_config(write_config(pki.dir, f"basic_auth_users:\n  u: '{SLOW_HASH}'\n", "gone.yml"))
    async with serve_app(config) as (base, app):
        auth = app.auth
        assert auth is not None
        port = int(base.rsplit(":", 1)[1])
        writers = []
        for _ in range(8):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(wrong_password_request())
            writers.append(writer)
        await wait_until(lambda: auth.pending == 8)
        for writer in writers:
            writer.close()  # the flood hangs up
        await wait_until(lambda: auth.pending == 0)
    assert auth.bcrypt_checks <= 2  # the one running when they left (and one starting meanwhile), not 8


async def test_too_many_waiting_checks_are_refused_with_503(pki: Pki) -> None:
    config = load_web_config(write_config(pki.dir, f"basic_auth_users:\n  u: '{SLOW_HASH}'\n", "busy.yml"))
    async with serve_app(config) as (base, app):
        auth = app.auth
        assert auth is not None
        port = int(base.rsplit(":", 1)[1])
        flood = [asyncio.create_task(raw_answer(port, wrong_password_request())) for _ in range(20)]
        await wait_until(lambda: auth.pending == webconfig._MAX_PENDING)
        # The refused are answered at once; the admitted in turn (the flood test above waits for every
        # one): the first is enough here, the rest hang up instead of waiting out 4 s of bcrypt.
        await wait_until(lambda: sum(task.done() for task in flood) > 20 - webconfig._MAX_PENDING)
        answers = [(await task)[:12] for task in flood if task.done()]
        assert answers.count(b"HTTP/1.1 503") == 20 - webconfig._MAX_PENDING
        assert set(answers) == {b"HTTP/1.1 503", b"HTTP/1.1 401"}
        await hang_up(flood)
        await wait_until(lambda: auth.pending == 0)


async def hang_up(tasks: list[asyncio.Task[bytes]]) -> None:
    """Cancel the ``raw_answer`` tasks that are still waiting: each closes its connection."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def raw_answer(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(20.0):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
