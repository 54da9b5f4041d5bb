"""Prefect on PostgreSQL, as in production: a real PostgreSQL server (Debian's package) on
127.0.0.1, a Prefect server on it, and ``lfactory run`` pointed at that server the way an
operator points it at a production one (PREFECT_API_URL)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from factory_configs import minimal_config

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[1]
USER, PASSWORD, DATABASE = "prefect", "factory-test", "prefect"
SUBFLOWS = {"factory", "train-models", "generate-shards", "validate-dataset"}


def _postgres_bin() -> Path:
    """The folder of initdb and pg_ctl: Debian keeps them off PATH, one folder per version."""
    debian = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    newest = max(debian, key=lambda path: int(Path(path).parts[4]), default=None)
    initdb = shutil.which("initdb") or newest
    if not initdb:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql as root)")
    return Path(initdb).resolve().parent


@dataclass(frozen=True)
class Postgres:
    bin: Path
    port: int
    as_user: tuple[str, ...]  # prefix that runs the server's own commands unprivileged

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def sql(self, query: str) -> list[list[str]]:
        """Rows of a query, through psql over TCP with the password, as a client would."""
        out = subprocess.run(
            [self.bin / "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d", DATABASE]
            + ["-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", query],
            env={**os.environ, "PGPASSWORD": PASSWORD},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return [line.split("\t") for line in out.stdout.splitlines()]


def _run(command: list, cwd: Path, **kwargs) -> None:
    out = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, **kwargs)
    if out.returncode:
        raise RuntimeError(f"{command[:2]} failed ({out.returncode}):\n{out.stdout}{out.stderr}")


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 and a free port, stopped and deleted after.

    PostgreSQL refuses to run as root, so as root its commands run as the postgres user the
    Debian package creates; the cluster lives in /tmp, which that user can reach.
    """
    from deployments.local_server import _free_port

    bin_dir = _postgres_bin()
    base = Path(tempfile.mkdtemp(prefix="lfactory-postgres-"))
    as_user: tuple[str, ...] = ()
    if os.geteuid() == 0:
        user = "postgres" if _has_user("postgres") else "nobody"
        as_user = ("runuser", "-u", user, "--")
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    (base / "pwfile").write_text(PASSWORD + "\n")
    if as_user:
        os.chown(base / "pwfile", entry.pw_uid, entry.pw_gid)
    data, port = base / "data", _free_port()
    server = Postgres(bin_dir, port, as_user)
    _run(
        [*as_user, bin_dir / "initdb", "-D", data, "-U", USER, f"--pwfile={base / 'pwfile'}"]
        + ["--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync"],
        cwd=base,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off"
    pg_ctl = [*as_user, bin_dir / "pg_ctl", "-D", data, "-w", "-t", "60"]
    try:
        _run([*pg_ctl, "-l", base / "postgres.log", "-o", options, "start"], cwd=base)
    except RuntimeError as error:
        log = (base / "postgres.log").read_text() if (base / "postgres.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"{error}\npostgres.log:\n{log}") from None
    try:
        _run(
            [bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", USER, DATABASE],
            cwd=base,
            env={**os.environ, "PGPASSWORD": PASSWORD},
        )
        yield server
    finally:
        _run([*pg_ctl, "-m", "fast", "stop"], cwd=base)
        shutil.rmtree(base, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="module")
def prefect_on_postgres(postgres, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A Prefect server whose database is the PostgreSQL cluster; yields (API URL, home)."""
    from deployments.local_server import local_server

    home = tmp_path_factory.mktemp("prefect-on-postgres")
    with local_server(home, database_url=postgres.url) as api:
        yield api, home


@pytest.fixture(scope="module")
def factory_run(prefect_on_postgres, tmp_path_factory) -> subprocess.CompletedProcess:
    """``lfactory run`` on the minimal config, in its own process, against that server."""
    api, home = prefect_on_postgres
    work = tmp_path_factory.mktemp("factory-on-postgres")
    config = work / "factory.yaml"
    config.write_text(yaml.safe_dump(minimal_config(work / "work", name="pgtest")))
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home / "client")}
    return subprocess.run(
        [sys.executable, "-m", "lfactory", "run", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _completed_flows(postgres: Postgres) -> set[str]:
    rows = postgres.sql(
        "SELECT f.name FROM flow_run r JOIN flow f ON f.id = r.flow_id "
        "WHERE r.state_type = 'COMPLETED'"
    )
    return {row[0] for row in rows}


@pytest.mark.timeout(600)
def test_the_factory_completes_through_a_prefect_server_on_postgresql(factory_run):
    assert factory_run.returncode == 0, factory_run.stdout[-3000:] + factory_run.stderr[-3000:]
    assert "verified:  4 samples in 2 shards match their checksums" in factory_run.stdout


def test_its_flow_and_task_runs_are_rows_in_postgresql(factory_run, postgres):
    assert factory_run.returncode == 0
    assert SUBFLOWS <= _completed_flows(postgres)
    # Task runs reach the database through the server's event pipeline: give it a moment.
    deadline, shards = time.monotonic() + 30, []
    while time.monotonic() < deadline:
        shards = postgres.sql(
            "SELECT state_type FROM task_run WHERE name LIKE 'generate-shard%' "
            "AND name NOT LIKE 'generate-shards%'"
        )
        if len(shards) == 2 and all(s == ["COMPLETED"] for s in shards):
            break
        time.sleep(1)
    assert shards == [["COMPLETED"], ["COMPLETED"]]


def test_the_server_keeps_no_sqlite_database(factory_run, prefect_on_postgres):
    _, home = prefect_on_postgres
    assert factory_run.returncode == 0
    assert not list(home.rglob("*.db")), "the server wrote a SQLite database beside PostgreSQL"


def test_the_server_on_postgresql_accepts_the_kubernetes_gpu_pool(prefect_on_postgres, postgres):
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads((ROOT / "deployments" / "k8s-gpu-job-template.json").read_text())
    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(name="gpu-k8s", type="kubernetes", base_job_template=template)
        )
        assert client.read_work_pool("gpu-k8s").base_job_template == template
    assert postgres.sql("SELECT type FROM work_pool WHERE name = 'gpu-k8s'") == [["kubernetes"]]
