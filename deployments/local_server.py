"""A local Prefect server on SQLite, started only when no API is configured.

The factory's default backend: bound to 127.0.0.1, its database under PREFECT_HOME,
health-checked before anything talks to it. Production points PREFECT_API_URL at a
server on PostgreSQL instead (see docker/), and then nothing is started here; the same
server can also run here on a PostgreSQL database (``database_url``).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL, temporary_settings

from pipeline_lib.errors import FactoryError

log = logging.getLogger(__name__)


def configured_api_url() -> str | None:
    """The API URL from the environment or the active Prefect profile, if any."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(api_url: str, timeout: float = 120.0) -> None:
    """Poll ``/health`` until the server answers; raise a clear error on time-out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise FactoryError(f"the Prefect server at {api_url} did not become healthy in {timeout:.0f} s")


@contextmanager
def local_server(
    prefect_home: Path,
    port: int | None = None,
    log_file: Path | None = None,
    database_url: str | None = None,
) -> Iterator[str]:
    """Start ``prefect server start`` on 127.0.0.1 for the block's duration; yield its API URL.

    The environment of this process is pointed at it (PREFECT_API_URL), so flows,
    ``serve`` and ``run_deployment`` all talk to the same server. ``database_url``
    (``postgresql+asyncpg://user:password@host:port/db``) replaces the SQLite file under
    ``prefect_home``; the server creates its tables there on start.
    """
    prefect_home.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    env.pop("PREFECT_API_URL", None)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    log_file = log_file or prefect_home / "server.log"
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    previous = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    try:
        wait_healthy(api_url)
        # The environment reaches flow-run subprocesses; the settings context this process.
        os.environ["PREFECT_API_URL"] = api_url
        os.environ["PREFECT_HOME"] = str(prefect_home)
        log.info("Prefect server on %s (log: %s)", api_url, log_file)
        # Flow runs in this process send no heartbeats: a flow run's exit waits out the
        # heartbeat thread's sleep (up to a second per flow run, subflows included), and
        # nothing here watches for crashed runs. Served deployments' runs keep theirs.
        no_heartbeats = {PREFECT_API_URL: api_url, "flows.heartbeat_frequency": None}
        with temporary_settings(updates=no_heartbeats):
            try:
                yield api_url
            finally:
                # Ship the last run logs while the server is still there to take them.
                APILogHandler().flush()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def api_or_local_server(prefect_home: Path) -> Iterator[str]:
    """Use the configured Prefect API when there is one, else a local SQLite server."""
    url = configured_api_url()
    if url:
        wait_healthy(url, timeout=30)
        yield url
        return
    with local_server(prefect_home) as url:
        yield url


def ui_url(api_url: str) -> str:
    return api_url.removesuffix("/api")
