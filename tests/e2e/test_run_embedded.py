"""`misar-webhooks run` without a database URL: an embedded Postgres that keeps its data."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from engine.cli.main import EMBEDDED_PORT


@contextlib.contextmanager
def _embedded_port() -> Iterator[None]:
    """Holds the embedded Postgres's fixed port for this process: tests/check.py runs the suite on
    two servers at once, and both runs come to this test, whose `run` always listens on
    EMBEDDED_PORT. A lock file, so the second waits for the first instead of failing to bind."""
    lock = Path(tempfile.gettempdir()) / f"misar-webhooks-test-port-{EMBEDDED_PORT}.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
        yield


async def _start(data_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    env.update(WEBHOOKS_ADMIN_PORT="0", WEBHOOKS_LOG_FORMAT="json")
    proc = await asyncio.create_subprocess_exec(
        "misar-webhooks", "run", "--data-dir", str(data_dir),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = ""
    async with asyncio.timeout(90):
        while "engine_started" not in seen:
            line = await proc.stderr.readline()
            if not line:
                raise AssertionError(f"run exited early ({await proc.wait()}):\n{seen}")
            seen += line.decode()
    match = re.search(r"the app connects with: psql (\S+)", seen)
    assert match is not None, seen
    return proc, match[1]


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_run_without_database_url_uses_a_persistent_embedded_postgres() -> None:
    """The printed URL works, SIGTERM exits 0 and stops Postgres, and a restart keeps the data."""
    # Not under tmp_path: run gives the server's own user a way through the data directory's
    # parents, and a second pytest session starting (check.py runs two at once) sets
    # pytest-of-<user> back to 0700, which cut the server off mid-initdb ("Permission denied").
    parent = Path(tempfile.mkdtemp(prefix="misar-webhooks-run-test-"))
    try:
        with _embedded_port():
            await _start_stop_start(parent / "pgdata")
    finally:
        shutil.rmtree(parent, ignore_errors=True)


async def _start_stop_start(data_dir: Path) -> None:
    proc, url = await _start(data_dir)
    try:
        conn = await asyncpg.connect(url)
        try:
            endpoint_id = await conn.fetchval(
                "SELECT id FROM webhooks.create_endpoint('acct', 'https://example.com/h', '{*}')"
            )
        finally:
            await conn.close()
    finally:
        assert await _stop(proc) == 0
    assert (data_dir / "PG_VERSION").exists()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(url, timeout=5)

    proc, url_again = await _start(data_dir)
    try:
        assert url_again == url, "the app's connection string must survive a restart"
        conn = await asyncpg.connect(url_again)
        try:
            kept = await conn.fetchval(
                "SELECT count(*) FROM webhooks.endpoints WHERE id = $1", endpoint_id
            )
        finally:
            await conn.close()
        assert kept == 1
    finally:
        assert await _stop(proc) == 0
