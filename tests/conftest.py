"""Test-wide settings: an isolated Prefect home, offline hubs, and the gpu marker."""

from __future__ import annotations

import os
import tempfile

# Before anything imports prefect or diffusers: results, caches and the SQLite database
# of any server a test starts live in a throw-away folder, and nothing reaches a hub.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lfactory-test-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One real local Prefect server for every test that needs one (they start in ~20 s)."""
    from deployments.local_server import local_server

    with local_server(tmp_path_factory.mktemp("prefect-home")) as api:
        yield api


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a training module: on cores shared with other jobs, two
    threads fighting for them run several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
