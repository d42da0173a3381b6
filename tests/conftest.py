"""Shared fixtures: a real Postgres for every test, on the production event loop (uvloop).

The server is the one in WEBHOOKS_TEST_DATABASE_URL when set (CI points it at the machine's
Postgres 15), otherwise an embedded Postgres this session starts and stops. A template database is
migrated once per session; each test gets its own copy (CREATE DATABASE ... TEMPLATE), so tests
never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import asyncpg
import pytest
import uvloop

from engine.cli.embedded_postgres import TemporaryPostgres
from engine.db.migrate import migrate
from engine.db.store import Store
from tests.support.db import current_template, scratch_database

_db_numbers = itertools.count()


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    """Every async test runs on uvloop, the loop production uses."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def pg_is_embedded() -> bool:
    """Whether the tests run on the embedded Postgres this session starts (no server was named)."""
    return not os.environ.get("WEBHOOKS_TEST_DATABASE_URL")


@pytest.fixture(scope="session")
def pg_server_url(pg_is_embedded: bool) -> Iterator[str]:
    """An admin URL of the Postgres server all tests use."""
    url = os.environ.get("WEBHOOKS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = TemporaryPostgres()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def template_db(pg_server_url: str) -> AsyncIterator[str]:
    """A database migrated once per session, copied for each test."""
    name = f"misar_tpl_{os.getpid()}"
    async with scratch_database(pg_server_url, name) as url:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name


@pytest.fixture
async def empty_db_url(pg_server_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all, for migration tests."""
    name = f"misar_t{os.getpid()}_{next(_db_numbers)}"
    async with scratch_database(pg_server_url, name) as url:
        yield url


@pytest.fixture
async def db_url(pg_server_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"misar_t{os.getpid()}_{next(_db_numbers)}"
    template = await current_template(pg_server_url, template_db)
    async with scratch_database(pg_server_url, name, template=template) as url:
        yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """A Store on a small pool of its own over this test's database, as the engine uses one."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        yield Store(pool)
    finally:
        await pool.close()


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database."""
    connection = await asyncpg.connect(db_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="module")
async def shared_db(
    request: pytest.FixtureRequest, pg_server_url: str, template_db: str
) -> AsyncIterator[str]:
    """One migrated database for a module's tests that run inside ``tx``."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    name = f"misar_{module}_{os.getpid()}"[:63]
    template = await current_template(pg_server_url, template_db)
    async with scratch_database(pg_server_url, name, template=template) as url:
        yield url


@pytest.fixture
async def tx(shared_db: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction rolled back after the test.

    Cheaper than a database per test for the many tests that only check what a call refuses;
    their rows, settings changes included, vanish with the rollback. Calls that must fail go
    through :func:`tests.support.db.error_of`, in a savepoint, so the transaction stays usable.
    """
    connection = await asyncpg.connect(shared_db)
    transaction = connection.transaction()
    await transaction.start()
    try:
        yield connection
    finally:
        await transaction.rollback()
        await connection.close()
