"""`misar-webhooks run` without a database URL: an embedded Postgres that keeps its data."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from engine.cli.embedded_postgres import free_port


async def _run(data_dir: Path, port: int) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKS_")}
    env.update(WEBHOOKS_ADMIN_PORT="0", WEBHOOKS_LOG_FORMAT="json")
    return await asyncio.create_subprocess_exec(
        "misar-webhooks", "run", "--data-dir", str(data_dir), "--embedded-port", str(port),
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _start(data_dir: Path, port: int) -> tuple[asyncio.subprocess.Process, str]:
    proc = await _run(data_dir, port)
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


@pytest.fixture
def parent() -> Iterator[Path]:
    """A directory for the data directory. Not under tmp_path: run gives the server's own user a
    way through the data directory's parents, and a second pytest session starting (check.py runs
    two at once) sets pytest-of-<user> back to 0700, which cut the server off mid-initdb
    ("Permission denied")."""
    path = Path(tempfile.mkdtemp(prefix="misar-webhooks-run-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_run_without_database_url_uses_a_persistent_embedded_postgres(parent: Path) -> None:
    """The printed URL works and is on --embedded-port, SIGTERM exits 0 and stops Postgres, and a
    restart keeps the data and the URL."""
    data_dir, port = parent / "pgdata", free_port()
    proc, url = await _start(data_dir, port)
    try:
        assert url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
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

    proc, url_again = await _start(data_dir, port)
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


@pytest.mark.timeout(120)
async def test_run_refuses_an_embedded_port_in_use_naming_it_and_the_setting(parent: Path) -> None:
    """Another process listens on the port: run exits 1 with an error that names the port and how
    to choose another, and leaves no server behind."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await _run(parent / "pgdata", port)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 1, stderr
    message = stderr.decode()
    assert f"127.0.0.1:{port} is already in use" in message, message
    assert "--embedded-port or WEBHOOKS_EMBEDDED_PORT" in message, message
    assert not (parent / "pgdata" / "postmaster.pid").exists()
