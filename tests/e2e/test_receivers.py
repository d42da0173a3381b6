"""The README's receivers in Node, PHP, Ruby and Go (docs/receivers/), run as customers would run
them, verify the engine's real deliveries and refuse what they must.

Each runtime comes from Debian's packages (tests/check.py installs what is missing); a missing
one fails its test with the command that installs it. The README must show each file verbatim.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from engine.cli.embedded_postgres import free_port
from engine.signing import sign
from tests.support.engines import RunningEngine, wait_until

StartEngine = Callable[..., Awaitable[RunningEngine]]
ROOT = Path(__file__).resolve().parents[2]
RECEIVERS = ROOT / "docs" / "receivers"
TOLERANCE_S = 300
# Bytes a careless receiver would re-encode: non-ASCII, a line separator, quotes, a slash.
PAYLOAD = {"recipient": "zoë@example.com", "subject": 'Grüße\u2028"hi" </b>', "n": 1}


@dataclass(frozen=True)
class Language:
    name: str
    file: str
    fence: str  # the README's code fence language
    runtime: str  # the executable it needs
    package: str  # the Debian package that provides it

    @property
    def path(self) -> Path:
        return RECEIVERS / self.name / self.file


LANGUAGES = [
    Language("node", "receiver.js", "js", "node", "nodejs"),
    Language("php", "receiver.php", "php", "php", "php-cli"),
    Language("ruby", "receiver.rb", "ruby", "ruby", "ruby"),
    Language("go", "receiver.go", "go", "go", "golang-go"),
]


async def command(language: Language, port: int, work: Path) -> list[str]:
    """How a customer starts the receiver (Go: built first, so that its start is the server's)."""
    if shutil.which(language.runtime) is None:
        pytest.fail(
            f"{language.runtime} is not installed: apt-get install {language.package}"
            " (tests/check.py does it)"
        )
    if language.name == "php":
        return ["php", "-S", f"127.0.0.1:{port}", str(language.path)]
    if language.name == "go":
        binary = work / "receiver"
        build = await asyncio.create_subprocess_exec(
            "go", "build", "-o", str(binary), str(language.path), cwd=work
        )
        assert await build.wait() == 0, "go build failed"
        return [str(binary)]
    return [language.runtime, str(language.path)]


@dataclass
class RunningReceiver:
    url: str
    lines: list[str]

    def verified(self, event_id: int) -> bool:
        return any(f"verified evt_{event_id} " in line for line in self.lines)


@asynccontextmanager
async def receiver_process(
    language: Language, secret: str, work: Path
) -> AsyncIterator[RunningReceiver]:
    port = free_port()
    env = os.environ | {"WEBHOOK_SECRET": secret, "PORT": str(port), "HOST": "127.0.0.1"}
    proc = await asyncio.create_subprocess_exec(
        *await command(language, port, work),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    running = RunningReceiver(f"http://127.0.0.1:{port}/hooks", [])

    async def read() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            running.lines.append(line.decode(errors="replace"))

    reader = asyncio.create_task(read())

    async def listening() -> bool:
        assert proc.returncode is None, "".join(running.lines)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    try:
        await wait_until(listening, timeout_s=60, what=f"the {language.name} receiver to listen")
        yield running
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        await reader


async def delivered(conn: asyncpg.Connection, event_id: int) -> bool:
    status: str | None = await conn.fetchval(
        "SELECT status FROM webhooks.delivery_outcomes WHERE event_id = $1", event_id
    )
    return status == "delivered"


async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as r,
    ):
        return r.status


@pytest.mark.parametrize("language", LANGUAGES, ids=[lang.name for lang in LANGUAGES])
async def test_receiver_verifies_real_deliveries_and_refuses_forgeries(
    language: Language,
    conn: asyncpg.Connection,
    open_policy: None,
    start_engine: StartEngine,
    tmp_path: Path,
) -> None:
    """The receiver accepts the engine's deliveries (also while the secret rotates, holding the old
    one), and refuses a changed body, another secret, and a timestamp just past the tolerance
    while it accepts one just inside it."""
    # The secret comes first (the receiver starts with it), the receiver's URL after.
    row = await conn.fetchrow(
        "SELECT id, secret FROM webhooks.create_endpoint('acct_1', 'http://127.0.0.1:1/hooks',"
        " '{*}')"
    )
    assert row is not None
    async with receiver_process(language, row["secret"], tmp_path) as receiver:
        await conn.execute(
            "SELECT webhooks.update_endpoint($1, p_url => $2)", row["id"], receiver.url
        )
        await start_engine()
        first = await conn.fetchval(
            "SELECT webhooks.emit('acct_1', 'email.opened', $1::jsonb)", json.dumps(PAYLOAD)
        )
        await wait_until(lambda: delivered(conn, first), timeout_s=60, what="first delivery")
        assert receiver.verified(first), receiver.lines

        await conn.execute("SELECT webhooks.rotate_secret($1, '1 hour')", row["id"])
        second = await conn.fetchval(
            "SELECT webhooks.emit('acct_1', 'email.clicked', $1::jsonb)", json.dumps(PAYLOAD)
        )
        await wait_until(lambda: delivered(conn, second), timeout_s=60, what="second delivery")
        assert receiver.verified(second), receiver.lines

        body = json.dumps({"id": "evt_900001", "type": "email.sent", "data": PAYLOAD}).encode()
        now = int(time.time())

        def signed(payload: bytes, secret: str, timestamp: int) -> dict[str, str]:
            headers = sign([secret], payload, webhook_id="evt_900001", timestamp=timestamp)
            return headers | {"Content-Type": "application/json"}

        secret = row["secret"]
        other = "whsec_" + "A" * 43 + "="
        assert await post(receiver.url, body + b" ", signed(body, secret, now)) == 400
        assert await post(receiver.url, body, signed(body, other, now)) == 400
        assert await post(receiver.url, body, signed(body, secret, now - TOLERANCE_S - 10)) == 400
        assert await post(receiver.url, body, signed(body, secret, now + TOLERANCE_S + 10)) == 400
        assert await post(receiver.url, body, signed(body, secret, now - TOLERANCE_S + 10)) == 204

        async def logged() -> bool:  # the process's line may be read after its answer
            return receiver.verified(900001)

        await wait_until(logged, timeout_s=30, what="the accepted request's line")


@pytest.mark.parametrize("language", LANGUAGES, ids=[lang.name for lang in LANGUAGES])
def test_readme_shows_the_receiver_file_verbatim(language: Language) -> None:
    """The README's block for the language is the tested file, byte for byte."""
    readme = (ROOT / "README.md").read_text()
    block = f"```{language.fence}\n{language.path.read_text()}```\n"
    assert block in readme, f"README.md does not show {language.path.relative_to(ROOT)} verbatim"
