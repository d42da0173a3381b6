"""The engine as a real process (``misar-webhooks run``), for faults a process must survive.

SIGKILL, SIGTERM, peak memory and everything the engine writes to its log can only be observed
from outside the process. :func:`engine_process` starts one with JSON logs on stderr, keeps every
line (and echoes it to this process's stderr, which pytest shows for a failed test), and kills it
at exit if it is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CLI", "EngineProcess", "engine_process"]

# The console script installed beside the interpreter running the tests (the venv's bin/).
CLI = Path(sys.executable).with_name("misar-webhooks")
# What every engine process runs with unless the test says otherwise; the database is already
# migrated by the fixtures, and any free admin port lets engines of parallel test runs coexist.
BASE_ENV = {
    "WEBHOOKS_MIGRATE": "false",
    "WEBHOOKS_LOG_FORMAT": "json",
    "WEBHOOKS_POLL_INTERVAL_S": "0.2",
    "WEBHOOKS_REQUEST_TIMEOUT_S": "3",
    "WEBHOOKS_SHUTDOWN_GRACE_S": "5",
    "WEBHOOKS_LISTENER_PROBE_S": "0.5",
    "WEBHOOKS_ADMIN_PORT": "0",
}
_LINE_LIMIT = 4 * 1024 * 1024  # a log line longer than this would itself be a bug


@dataclass
class EngineProcess:
    """A running ``misar-webhooks run`` and the log lines it wrote so far."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self) -> list[dict[str, Any]]:
        """The log lines that are JSON objects, parsed."""
        parsed = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    parsed.append(value)
        return parsed

    async def logged(self, event: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Wait for the first log line of ``event``; fail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            for entry in self.events():
                if entry.get("event") == event:
                    return entry
            if self.process.returncode is not None:
                raise AssertionError(
                    f"the engine exited ({self.process.returncode}) before {event}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"the engine did not log {event} within {timeout_s} s")
            await asyncio.sleep(0.05)

    async def admin_url(self) -> str:
        """The admin server's base URL, from its ``admin_listening`` log line."""
        return str((await self.logged("admin_listening"))["url"])

    def memory_kib(self) -> tuple[int, int]:
        """(current, peak) resident set size in KiB, from /proc (VmRSS, VmHWM)."""
        fields: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def stop(self) -> None:
        """SIGTERM, then the exit, which must be clean (0)."""
        self.signal(signal.SIGTERM)
        assert await self.wait() == 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    async def wait(self, timeout_s: float = 60.0) -> int:
        """Wait for the exit (and the last log line); return the exit code."""
        code = await asyncio.wait_for(self.process.wait(), timeout_s)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, timeout_s)
        return code

    async def _read(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.lines.append(text)
            print(text, file=sys.stderr)


@contextlib.asynccontextmanager
async def engine_process(
    database_url: str, env: Mapping[str, str] | None = None, *, release: Path | None = None
) -> AsyncIterator[EngineProcess]:
    """Start ``misar-webhooks run`` on ``database_url`` with :data:`BASE_ENV` plus ``env``.

    ``release``: run another release's engine instead, from the directory holding its ``engine``
    package (``python -m engine run`` in that directory, first on the path). Coverage is left
    out of it: its files are not this tree's.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    full_env.update(BASE_ENV, WEBHOOKS_DATABASE_URL=database_url)
    full_env.update(env or {})
    command, cwd = [str(CLI), "run"], None
    if release is not None:
        # From that directory too: ``-m`` puts the working directory first on the path.
        command, cwd = [sys.executable, "-m", "engine", "run"], release
        full_env["PYTHONPATH"] = str(release)
        full_env = {k: v for k, v in full_env.items() if not k.startswith("COVERAGE_")}
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=full_env,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        limit=_LINE_LIMIT,
    )
    engine = EngineProcess(process)
    engine._reader = asyncio.get_running_loop().create_task(engine._read())
    try:
        yield engine
    finally:
        if process.returncode is None:
            engine.kill()
        await process.wait()
        await engine._reader
