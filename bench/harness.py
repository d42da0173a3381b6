"""What every workload needs: a Postgres, the receiver and engine processes, the HTTP baseline.

Each piece is an async context manager or a handle with a bounded ``stop``/``terminate``, so a
workload composes them in one ``AsyncExitStack`` and everything it started is stopped however
it ends (an error, Ctrl-C, SIGTERM): processes get SIGTERM, then SIGKILL after a deadline, and a
database created for the run is dropped. Every wait has a deadline and fails with a
:class:`BenchError` naming what did not happen, with the tail of the process's log.

Processes log to files in the run's work directory, never to pipes we might stop reading (a full
pipe would block the engine and distort the figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from bench.cpu import cpu_seconds
from bench.http_baseline import BaselineResult
from engine.cli.embedded_postgres import TemporaryPostgres

REPO_ROOT = Path(__file__).resolve().parent.parent
RECEIVER_START_S = 15.0
STOP_S = 30.0  # the engine's default shutdown grace (15 s) plus room to write results
BASELINE_TIMEOUT_S = 300.0
HTTP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 3000
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]*")


class BenchError(Exception):
    """The benchmark could not run to the end; the message says what to look at."""


@dataclass(frozen=True)
class Database:
    """A database for one run: ``url`` to connect to, ``kind`` "server" or "embedded"."""

    url: str
    kind: str


@contextlib.asynccontextmanager
async def database(server_url: str | None) -> AsyncIterator[Database]:
    """A fresh, empty database, gone afterwards.

    With ``server_url`` (``WEBHOOKS_DATABASE_URL``): ``misar_bench_<pid>`` created on that server
    and dropped at the end (``WITH (FORCE)``, so a connection a crashed engine left behind cannot
    keep it). Without: an embedded Postgres in a temporary directory, deleted at the end. It runs
    with fsync on, as a production database does: with fsync off a commit costs no WAL flush, and
    NOTIFY (which holds a cluster-wide lock through that flush) would look far cheaper than it is.
    The embedded server is started in a thread: ``pg_ctl`` blocks for seconds.
    """
    if server_url is None:
        server = TemporaryPostgres(durable=True)
        try:
            url = await asyncio.to_thread(server.start)
            yield Database(url, "embedded")
        finally:
            await asyncio.to_thread(server.stop)
        return
    name = f"misar_bench_{os.getpid()}"
    await _admin(server_url, "CREATE DATABASE", name)
    try:
        yield Database(str(URL(server_url).with_path("/" + name)), "server")
    finally:
        await _admin(server_url, "DROP DATABASE IF EXISTS", name, "WITH (FORCE)")


async def _admin(server_url: str, verb: str, name: str, suffix: str = "") -> None:
    # Utility statements take no parameters, so the name is spliced in; it is ours and checked.
    if not _DATABASE_NAME.fullmatch(name):
        raise ValueError(f"unsafe database name {name!r}")
    try:
        conn = await asyncpg.connect(server_url, timeout=HTTP_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"cannot connect to WEBHOOKS_DATABASE_URL's server: {exc}") from exc
    try:
        await conn.execute(f"{verb} {name} {suffix}", timeout=60)
    finally:
        await conn.close()


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


class Child:
    """A process we started: its log file, a bounded terminate, a liveness check."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process used so far."""
        return cpu_seconds(self.pid)

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-LOG_TAIL_CHARS:]

    def check_alive(self) -> None:
        """Raise BenchError (with the log tail) if the process has exited."""
        if self.proc.returncode is not None:
            raise BenchError(
                f"{self.name} exited unexpectedly with code {self.proc.returncode}; "
                f"log tail:\n{self.log_tail()}"
            )

    async def terminate(self, timeout_s: float = STOP_S) -> int:
        """SIGTERM, wait at most ``timeout_s``, then SIGKILL; return the exit code.

        A no-op returning the code if the process already exited. A killed process returns
        ``-9``: callers that expect a clean stop treat that as a failure.
        """
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode if self.proc.returncode is not None else -1


@dataclass(frozen=True)
class ReceiverStats:
    """``GET /stats`` of the receiver (see :class:`bench.receiver.Stats`); times are epoch s."""

    count: int
    unique: int
    duplicates: int
    failed: int
    first: float | None
    last: float | None
    per_path: dict[str, int]
    last_per_path: dict[str, float]


class ReceiverProcess(Child):
    """``python -m bench.receiver`` and an HTTP client for its control paths."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        super().__init__("receiver", proc, log_path)
        self.port = 0
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, workdir: Path) -> AsyncIterator[ReceiverProcess]:
        """Start the receiver, wait for its port, and stop it on exit."""
        log_path = workdir / "receiver.log"
        log = _open_log(log_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.receiver",
                cwd=REPO_ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        finally:
            log.close()
        receiver = cls(proc, log_path)
        try:
            await receiver._read_port()
            yield receiver
        finally:
            await receiver._session.close()
            await receiver.terminate(timeout_s=5.0)

    async def _read_port(self) -> None:
        # The receiver prints its port as its only line of stdout.
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), RECEIVER_START_S)
            self.port = int(line)
        except (TimeoutError, ValueError) as exc:
            raise BenchError(
                f"the receiver did not announce its port within {RECEIVER_START_S} s; "
                f"log tail:\n{self.log_tail()}"
            ) from exc

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stats(self) -> ReceiverStats:
        async with self._session.get(self.url("/stats")) as resp:
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json()
        return ReceiverStats(**data)

    async def reset(self) -> None:
        async with self._session.post(self.url("/reset")) as resp:
            resp.raise_for_status()

    async def configure(
        self, *, delay_s: dict[str, float] | None = None, fail_ratio: float = 0.0
    ) -> None:
        """Make paths slow and a share of deliveries fail, until the next call (see receiver)."""
        config = {"delay_s": delay_s or {}, "fail_ratio": fail_ratio}
        async with self._session.post(self.url("/configure"), json=config) as resp:
            resp.raise_for_status()

    async def arrivals(self) -> dict[str, float]:
        """``"<webhook-id> <path>"`` -> when its first 2xx answer was given (epoch s)."""
        async with self._session.get(self.url("/arrivals")) as resp:
            resp.raise_for_status()
            data: dict[str, float] = await resp.json()
        return data


class EngineProcess(Child):
    """``misar-webhooks run`` on the benchmark's database, logging at warning level to a file.

    Other ``WEBHOOKS_*`` variables of the caller's environment pass through, so an engine setting
    can be tried without editing the benchmark (``WEBHOOKS_CLAIM_BATCH=200 python -m bench...``);
    ``WEBHOOKS_ADMIN_PORT`` defaults to 0 (a free port).
    """

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, database_url: str, workdir: Path, **settings: str
    ) -> AsyncIterator[EngineProcess]:
        """Start the engine (it does not migrate: the workload did); stop it on exit.

        ``settings`` are engine settings by field name (``actor_idle_s="5"``); they win over the
        caller's environment.
        """
        env = {
            # A free port for the admin server unless the caller chose one (to scrape /metrics):
            # the default, 8080, may be taken by another engine on this shared machine.
            "WEBHOOKS_ADMIN_PORT": "0",
            **os.environ,
            "WEBHOOKS_DATABASE_URL": database_url,
            "WEBHOOKS_LOG_LEVEL": "warning",
            "WEBHOOKS_MIGRATE": "false",
            **{f"WEBHOOKS_{name.upper()}": value for name, value in settings.items()},
        }
        log_path = workdir / "engine.log"
        log = _open_log(log_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                _engine_command(),
                "run",
                env=env,
                cwd=REPO_ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        engine = cls("engine", proc, log_path)
        try:
            yield engine
        finally:
            await engine.terminate()
            await engine._session.close()

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        super().__init__(name, proc, log_path)
        self._admin_port: int | None = None
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))

    def memory_mb(self) -> tuple[float, float]:
        """Resident set size now and its peak so far (VmRSS, VmHWM of /proc/PID/status), in MB."""
        fields: dict[str, float] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024  # kB
        return fields["VmRSS"], fields["VmHWM"]

    async def metrics(self) -> dict[str, float]:
        """The engine's ``/metrics``, as sample name (with labels, if any) -> value."""
        if self._admin_port is None:
            self._admin_port = self._listening_port()
        url = f"http://127.0.0.1:{self._admin_port}/metrics"
        async with self._session.get(url) as resp:
            resp.raise_for_status()
            text = await resp.text()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def _listening_port(self) -> int:
        # WEBHOOKS_ADMIN_PORT=0 lets the engine pick a free port; the admin server is the only
        # socket it listens on, so the kernel's socket table tells us which one: the sockets in
        # LISTEN state (0A) of /proc/PID/net/tcp* whose inode is one of the process's descriptors.
        proc = Path(f"/proc/{self.pid}")
        inodes = set()
        for fd in (proc / "fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        ports = set()
        for table in ("tcp", "tcp6"):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        if len(ports) != 1:
            raise BenchError(f"expected the engine to listen on one port, found {sorted(ports)}")
        return ports.pop()


def _engine_command() -> str:
    """The console script of the environment running the benchmark, not whatever PATH finds."""
    beside = Path(sys.executable).parent / "misar-webhooks"
    if beside.exists():
        return str(beside)
    raise BenchError(f"misar-webhooks not found beside {sys.executable}; pip install -e . first")


async def run_baseline(url: str, *, concurrency: int, requests: int) -> BaselineResult:
    """Run ``bench.http_baseline`` in its own process and return what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.http_baseline",
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--requests",
        str(requests),
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BASELINE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(
            f"the HTTP baseline (concurrency {concurrency}) took over {BASELINE_TIMEOUT_S} s"
        ) from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        tail = err.decode(errors="replace")[-LOG_TAIL_CHARS:]
        raise BenchError(f"the HTTP baseline failed with code {proc.returncode}: {tail}")
    result = BaselineResult(**json.loads(out))
    if result.errors:
        raise BenchError(f"the HTTP baseline got {result.errors} failed requests: {result}")
    return result


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout_s: float,
    what: str,
    alive: Child | None = None,
    interval_s: float = 0.05,
) -> None:
    """Poll ``check`` until true; BenchError after ``timeout_s`` or if ``alive`` exits."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if alive is not None:
            alive.check_alive()
        if time.monotonic() > deadline:
            tail = f"; {alive.name} log tail:\n{alive.log_tail()}" if alive is not None else ""
            raise BenchError(f"timed out after {timeout_s} s waiting for {what}{tail}")
        await asyncio.sleep(interval_s)
