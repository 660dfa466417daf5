"""The daemon's process-level duties: supervision on the timers seam, stop signals, shutdown budget."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from exporter.app import Daemon
from exporter_tools.processes import spawn
from tests.support.stacks import fast_settings, process_env


@pytest.mark.looptime
async def test_supervisor_restarts_with_doubling_pauses_and_starts_over_after_a_healthy_run() -> None:
    daemon = Daemon(fast_settings("ws://127.0.0.1:9/v2/iex", "http://127.0.0.1:9"))
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def crashing() -> None:
        starts.append(loop.time())
        if len(starts) == 6:
            await asyncio.sleep(61.0)  # a healthy hour-long run, in short
        if len(starts) < 8:
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    supervised = asyncio.create_task(daemon._supervise("probe", crashing))
    while len(starts) < 8:
        await asyncio.sleep(0.1)
    supervised.cancel()
    await asyncio.gather(supervised, return_exceptions=True)
    pauses = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 61.5, 1.0]  # 61 s of work + the first pause again
    assert daemon.task_restarts["probe"] == 7


async def test_sighup_stops_gracefully_with_a_close_frame(sims: Any) -> None:
    """A SIGHUP (terminal closed, a supervisor's reload) must not drop the stream without a close frame:
    Alpaca would hold the key's only connection slot for ~90 s and the next start would meet 406."""
    alpaca, yahoo = sims
    proc = await spawn(process_env(alpaca, yahoo), "run")
    await proc.started()
    while alpaca.stats.active == 0:
        await asyncio.sleep(0.05)
    proc.proc.send_signal(signal.SIGHUP)
    code = await asyncio.wait_for(proc.proc.wait(), 6.0)
    assert code == 0
    assert alpaca.stats.last_client_close_code == 1000
    assert '"signal": "SIGHUP"' in "".join(proc.lines)


# Makes every lookup of a name under .invalid hang (a resolver that never answers) and says so in a file.
_HUNG_DNS = """
import os, socket, threading
_real = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".invalid"):
        open(os.environ["HUNG_DNS_MARK"], "a").close()
        threading.Event().wait()
    return _real(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
"""


async def test_shutdown_does_not_wait_for_a_hung_dns_lookup(sims: Any, tmp_path: Path) -> None:
    alpaca, yahoo = sims
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(_HUNG_DNS))
    mark = tmp_path / "lookup-started"
    env = process_env(alpaca, yahoo, EXPORTER_ALPACA_URL="ws://stream.invalid:9/v2/iex", HUNG_DNS_MARK=str(mark))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH", "")]))
    proc = await spawn(env, "run")
    try:
        await proc.started()
        while not mark.exists():
            await asyncio.sleep(0.05)
        start = asyncio.get_running_loop().time()
        proc.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.proc.wait(), 6.0)
        assert code == 0
        took = asyncio.get_running_loop().time() - start
        assert took < 5.0, took  # the contract's shutdown budget
    finally:
        if proc.proc.returncode is None:
            proc.proc.kill()
            await proc.proc.wait()


async def test_the_kubernetes_client_is_imported_only_with_leader_election(sims: Any) -> None:
    # lightkube and its models cost ≈ 5 MiB of RSS: a daemon without leader election must not pay for them.
    alpaca, yahoo = sims
    code = (
        "import asyncio, sys\n"
        "from exporter.app import Daemon\n"
        "from exporter.settings import load_settings\n"
        "async def main():\n"
        "    daemon = Daemon(load_settings(for_run=True, env_file=None))\n"
        "    if daemon.elector is not None:\n"
        "        daemon.elector.client()  # what its first attempt does\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightkube'))\n"
    )
    for election, imported in (("off", False), ("kubernetes", True)):
        env = process_env(
            alpaca, yahoo, EXPORTER_LEADER_ELECTION=election, EXPORTER_KUBERNETES_API_URL="http://127.0.0.1:9"
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env, stdout=-1, stderr=-1)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert (out.decode().strip() != "[]") is imported, (election, out)
