"""The project's one test command: ``python3 tests/check.py`` (what `.ci/run` calls).

Needs only Python: it creates ``.venv`` beside the repository if missing, installs the package with
its test extra and, where they are missing, the Debian packages of SYSTEM_PACKAGES with apt-get
(Chromium for the portal's browser tests, runtimes for the README's receivers; CI runs as root),
then runs ruff, ``mypy --strict``, ``lint-imports`` (the module boundaries in pyproject.toml) and
the test suite against an embedded Postgres that the suite starts itself. With
``WEBHOOKS_TEST_DATABASE_URL`` set (CI sets the machine's Postgres 15) the suite also runs against
that server, at the same time. A run of the whole suite must cover COVERAGE_FLOOR % of the engine
(lines and branches). Extra arguments go to pytest, and then no floor applies. Any failure, or a
run that collected no tests, exits non-zero.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTEST_NO_TESTS = 5
# Lines and branches of engine/ run by the suite, the `misar-webhooks` processes it starts included
# (coverage's patch = subprocess; a SIGKILLed engine's share is lost). 94 % on PG15 when the floor
# was set: a change that lands untested code fails here, timing-dependent branches do not.
COVERAGE_FLOOR = 92


# What the suite runs beside Python, from Debian's packages: executable -> package. The portal's
# browser tests drive Debian's Chromium (never a browser Playwright downloads); the README's
# receivers (tests/e2e/test_receivers.py) run on the other four.
SYSTEM_PACKAGES = {
    "chromium": "chromium",
    "node": "nodejs",
    "php": "php-cli",
    "ruby": "ruby",
    "go": "golang-go",
}


def run(*args: str | Path, env: dict[str, str] | None = None) -> int:
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.call([str(a) for a in args], cwd=ROOT, env=env)


def install_system_packages() -> int:
    """apt-get install the SYSTEM_PACKAGES that are missing (once per machine: later runs find
    them). Without root or apt-get it names what to install; the tests needing them then fail."""
    missing = [pkg for exe, pkg in SYSTEM_PACKAGES.items() if shutil.which(exe) is None]
    if not missing:
        return 0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(
            f"check: install {' '.join(missing)} (Debian packages) for the tests", file=sys.stderr
        )
        return 1
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    install = ("apt-get", "install", "-y", "-q", *missing)
    # Package lists may be missing or stale on a fresh machine: refresh them once, then retry.
    return run(*install, env=env) and (
        run("apt-get", "update", "-q", env=env) or run(*install, env=env)
    )


# The data directories of the suite's own embedded servers: engine.cli.embedded_postgres's
# TemporaryPostgres (the suite's server, and the ones tests start) and test_run_embedded's.
EMBEDDED_DATA_PREFIXES = ("misar-webhooks-pg-", "misar-webhooks-run-test-")
STOP_WAIT_S = 30.0


def embedded_servers() -> dict[int, Path]:
    """Running Postgres servers whose data directory is one of the suite's temporary ones: the
    postmaster's pid -> its data directory. Only the postmaster keeps ``-D`` in its command line
    (its children rename themselves ``postgres: ...``)."""
    found: dict[int, Path] = {}
    tmp = Path(tempfile.gettempdir())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if not argv[0].endswith(b"/bin/postgres") or b"-D" not in argv[:-1]:
            continue
        data = Path(os.fsdecode(argv[argv.index(b"-D") + 1]))
        under = data.relative_to(tmp).parts if data.is_relative_to(tmp) else ()
        if under and under[0].startswith(EMBEDDED_DATA_PREFIXES):
            found[int(entry.name)] = data
    return found


def stop_servers(servers: dict[int, Path]) -> None:
    """Stops each server (SIGQUIT: Postgres's immediate shutdown) and removes its data
    directory: what a run left behind that pytest-timeout ended with ``os._exit``, before any
    fixture could stop it. The servers put themselves in sessions of their own, so ending a
    run's session does not reach them."""
    for pid, data in servers.items():
        print(f"check: stopping an embedded Postgres left running in {data}", file=sys.stderr)
        try:
            os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + STOP_WAIT_S
    while any(Path(f"/proc/{pid}").exists() for pid in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    for data in servers.values():
        shutil.rmtree(data, ignore_errors=True)


def end_session(leader: int) -> None:
    """Kills what is left of a pytest run's session (engines and receivers its tests started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader, signal.SIGKILL)


def run_suites(
    python: Path, pytest_args: list[str], servers: list[tuple[str, str | None]]
) -> list[tuple[str, int]]:
    """Runs pytest on every server at once, each with its own output file and coverage data,
    and prints each output whole once its run ends. At once, because most of a run is spent
    waiting (on leases, timeouts and other processes): two runs on two cores take far less than
    the two one after the other. The tests synchronise on state with generous time-outs, so the
    other run's load slows them. Each run is a session of its own: once every run has ended,
    whatever a run left running (a run that pytest-timeout ended skips every teardown) is
    stopped, so that it cannot hold ports or memory in the next run on this machine."""
    before = set(embedded_servers())
    with tempfile.TemporaryDirectory() as logs:
        running = []
        for name, url in servers:
            env = {k: v for k, v in os.environ.items() if k != "WEBHOOKS_TEST_DATABASE_URL"}
            # Tests run the CLI as a user would, by name: the venv's scripts come first on PATH.
            env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
            # Each run combines only its own coverage data (its subprocesses' files included).
            env["COVERAGE_FILE"] = str(ROOT / f".coverage.{name}")
            if url:
                env["WEBHOOKS_TEST_DATABASE_URL"] = url
            label = "WEBHOOKS_TEST_DATABASE_URL" if url else "embedded Postgres"
            args = [str(python), "-m", "pytest", *pytest_args]
            print("+", " ".join(args), f"(on {label})", flush=True)
            log = open(Path(logs) / name, "w+b")  # noqa: SIM115 - closed below, once read
            process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
            )
            running.append((label, process, log, time.monotonic()))
        ended: dict[int, tuple[int, float]] = {}
        try:
            while len(ended) < len(running):
                pid, status = os.wait()
                ended[pid] = (os.waitstatus_to_exitcode(status), time.monotonic())
        finally:  # Ctrl+C included: the runs are in sessions of their own, which it does not reach
            for _, process, _, _ in running:
                end_session(process.pid)
            stop_servers({p: d for p, d in embedded_servers().items() if p not in before})
        steps = []
        for label, process, log, started in running:
            code, stopped = ended[process.pid]
            log.seek(0)
            print(f"\n===== pytest on {label} =====", flush=True)
            shutil.copyfileobj(log, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            log.close()
            if code == PYTEST_NO_TESTS:
                print(f"check: pytest on {label} collected no tests", file=sys.stderr)
            steps.append((f"pytest on {label} ({stopped - started:.0f} s)", code))
        return steps


def main(pytest_args: list[str]) -> int:
    python = VENV / "bin" / "python"
    if not python.exists():
        venv.create(VENV, with_pip=True)
    steps: list[tuple[str, int]] = []
    if run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", ".[test]"):
        print("check: installing the package with its test extra failed", file=sys.stderr)
        return 1
    steps.append(("Debian packages", install_system_packages()))
    steps.append(("ruff check", run(python, "-m", "ruff", "check", ".")))
    steps.append(("ruff format", run(python, "-m", "ruff", "format", "--check", ".")))
    steps.append(("mypy --strict", run(python, "-m", "mypy", "--strict")))
    steps.append(("lint-imports", run(VENV / "bin" / "lint-imports")))
    # A selection (-k, a path) covers only part of the engine: the floor is for whole runs.
    coverage = [] if pytest_args else ["--cov", f"--cov-fail-under={COVERAGE_FLOOR}"]

    servers: list[tuple[str, str | None]] = []
    external = os.environ.get("WEBHOOKS_TEST_DATABASE_URL")
    if external:
        servers.append(("external", external))
    servers.append(("embedded", None))
    steps.extend(run_suites(python, [*coverage, *pytest_args], servers))

    print("\ncheck summary:")
    for label, code in steps:
        print(f"  {'ok  ' if code == 0 else 'FAIL'} {label}")
    failed = sum(1 for _, code in steps if code != 0)
    print(f"check: {len(steps) - failed} of {len(steps)} steps ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
