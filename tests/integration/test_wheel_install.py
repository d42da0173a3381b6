"""A plain (non-editable) install of the wheel finds and applies its migrations.

This is the install step the Dockerfile repeats (`pip install .`), proven here: build the wheel
from the checkout, install it into a directory of its own, and run its `migrate` from elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import tomllib
import zipfile
from pathlib import Path

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[2]


async def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, f"{args} failed:\n{text}"
    return text


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_installed_wheel_migrates_a_database(empty_db_url: str, tmp_path: Path) -> None:
    """`pip install` of the built wheel ships sql/ inside engine/ and `migrate` applies it; the
    portal's static files are inside too, as checked in."""
    wheels = tmp_path / "wheels"
    await _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(ROOT),
        cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = wheels.glob("misarmail_webhooks-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "engine/sql/migrations/0001_initial.sql" in names
    assert "engine/sql/queries.sql" in names
    assert "engine/admin/openapi.json" in names, "GET /openapi.json serves it from the package"
    portal = [f"engine/admin/portal_static/{f}" for f in ("index.html", "portal.js", "portal.css")]
    assert set(portal) <= set(names), "GET /portal serves the page from the package"

    site = tmp_path / "site"
    await _run(
        sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site),
        str(wheel), cwd=tmp_path,
    )  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(site), WEBHOOKS_DATABASE_URL=empty_db_url)
    where = await _run(
        sys.executable, "-c", "import engine; print(engine.__file__)", cwd=tmp_path, env=env
    )
    assert where.strip().startswith(str(site)), f"imported the checkout, not the wheel: {where}"
    output = await _run(sys.executable, "-m", "engine", "migrate", cwd=tmp_path, env=env)
    assert "0001_initial.sql" in output
    again = await _run(sys.executable, "-m", "engine", "migrate", cwd=tmp_path, env=env)
    assert "nothing to migrate" in again
    served = await _run(
        sys.executable, "-c",
        "from engine.admin.portal import ASSETS, asset\n"
        "for name, _ in ASSETS.values(): print(name, len(asset(name)))",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    sizes = dict(line.split() for line in served.split("\n") if line)
    for name in ("index.html", "portal.js", "portal.css"):
        assert int(sizes[name]) == (ROOT / "engine/admin/portal_static" / name).stat().st_size

    conn = await asyncpg.connect(empty_db_url)
    try:
        versions = await conn.fetchval("SELECT count(*) FROM webhooks.schema_migrations")
    finally:
        await conn.close()
    assert versions == len(list((ROOT / "sql" / "migrations").glob("*.sql")))


async def test_dockerfile_dependency_layer_lists_the_runtime_dependencies(tmp_path: Path) -> None:
    """The Dockerfile's dependency-layer command prints exactly pyproject's runtime dependencies."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    match = re.search(r'RUN (python -c "[^"]+") > /tmp/requirements.txt', dockerfile)
    assert match is not None, "the Dockerfile's dependency step changed; update this test"
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    command = shlex.split(match[1])
    printed = await _run(sys.executable, *command[1:], cwd=tmp_path)
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert printed.split() == expected
    assert "RUN pip install --no-deps ." in dockerfile
