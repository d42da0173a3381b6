"""tests/check.py stops what a killed run left running: an embedded Postgres whose process
ended with ``os._exit`` (as pytest-timeout ends a run) before stopping it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests import check

# Starts one of the suite's temporary servers and ends without stopping it, as a run that
# pytest-timeout ends: its data directory on stdout.
LEAVE_A_SERVER = """
import os, sys
from engine.cli.embedded_postgres import TemporaryPostgres
server = TemporaryPostgres()
server.start()
print(server.data_dir, server.url, flush=True)
os._exit(0)
"""


def test_check_stops_an_embedded_postgres_left_running_and_removes_its_data() -> None:
    """The left server is found among the suite's (by its data directory), and only it is
    stopped here: the other run of check.py may have servers of its own running."""
    started = subprocess.run(
        [sys.executable, "-c", LEAVE_A_SERVER], capture_output=True, text=True, check=True
    )
    data_dir, url = started.stdout.split()
    left = {pid: data for pid, data in check.embedded_servers().items() if data == Path(data_dir)}
    assert len(left) == 1, check.embedded_servers()
    port = urlsplit(url).port
    assert port is not None
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # still serving
    check.stop_servers(left)
    [pid] = left
    assert not Path(f"/proc/{pid}").exists()
    assert not Path(data_dir).exists()
    assert all(data != Path(data_dir) for data in check.embedded_servers().values())
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return
    raise AssertionError(f"something still listens on {port}")
