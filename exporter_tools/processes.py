"""The console program as a child process, for the tools and the tests: started with an environment, read
line by line (JSON logs), stopped with a signal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without any EXPORTER_*/APCA_*/KUBERNETES_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORTER_", "APCA_", "KUBERNETES_"))}
    env.update(extra)
    return env


class Proc:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.port: int | None = None
        self._started = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if '"event": "started"' in line:
                self.port = json.loads(line)["port"]
                self._started.set()

    async def started(self, within: float = 10.0) -> int:
        await asyncio.wait_for(self._started.wait(), within)
        assert self.port is not None
        return self.port

    def events(self, name: str) -> list[dict[str, object]]:
        """The log records whose ``event`` is ``name``."""
        return [r for r in map(json.loads, self.lines) if r.get("event") == name]

    async def terminate(self, within: float = 6.0, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str, str]:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), within)
        await asyncio.wait_for(self._reader, 2)
        assert self.proc.stderr is not None
        err = (await self.proc.stderr.read()).decode(errors="replace")
        return code, "".join(self.lines), err

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def spawn(env: dict[str, str], *args: str) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return Proc(proc)
