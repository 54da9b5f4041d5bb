"""The factory under a real local Prefect server: retries, caching, quota-triggered
validation, and what the Prefect UI shows of it."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from factory_configs import minimal_config

from pipeline_lib.config import config_from_dict

pytestmark = [pytest.mark.slow, pytest.mark.server]

SUBFLOWS = ("train-models", "generate-shards", "validate-dataset")


@pytest.fixture(scope="module")
def first_run(prefect_api, tmp_path_factory):
    """One factory run in which the first shard's generation fails once, transiently."""
    import tasks.generation
    from flows.factory import factory

    config = config_from_dict(minimal_config(tmp_path_factory.mktemp("factory")))
    real_stage = tasks.generation.stage_generated_shard
    failures = []

    def flaky_stage(cfg, generator, shard_id):
        if not failures:
            failures.append(shard_id)
            raise ConnectionError("transient: worker lost its lease")
        return real_stage(cfg, generator, shard_id)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks.generation, "stage_generated_shard", flaky_stage)
        state = factory(config, return_state=True)
    return config, state


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _task_runs(client) -> dict:
    return {run.id: run for run in client.read_task_runs(limit=200)}


def _settled_task_runs(client, before: dict, timeout_s: float = 30.0) -> list:
    """Task runs (subflows' wrappers aside) not in ``before``, once the server has a final
    state for each: task states arrive as events, which it may still be processing."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [
            r
            for rid, r in _task_runs(client).items()
            if rid not in before and not r.name.startswith(SUBFLOWS)
        ]
        if all(r.state and r.state.is_final() for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def _flow_runs_named(client, name: str) -> list:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))


def test_factory_completes_with_a_store_and_a_report(first_run):
    _, state = first_run
    assert state.is_completed(), state.message
    result = state.result()
    assert result.generation.committed == 4
    assert result.verified.ok and result.verified.samples == 4
    assert len(result.reports) == 1 and result.reports[0].is_file()


def test_a_transient_failure_is_retried_and_succeeds(first_run):
    _, state = first_run
    with _client() as client:
        # The server serves the whole test session: count only this run's shards.
        started = client.read_flow_run(state.state_details.flow_run_id).start_time
        shard_runs = [
            r
            for r in _task_runs(client).values()
            if r.name.startswith("generate-shard")
            and not r.name.startswith(SUBFLOWS)
            and r.start_time is not None
            and r.start_time >= started
        ]
    assert sorted(r.run_count for r in shard_runs) == [1, 2]
    assert all(r.state.is_completed() for r in shard_runs)


def test_crossing_the_quota_starts_exactly_one_validation(first_run):
    with _client() as client:
        assert len(_flow_runs_named(client, "validate-dataset")) == 1


def test_a_second_run_is_all_cache_hits_and_validates_nothing_new(first_run):
    from flows.factory import factory

    config, _ = first_run
    with _client() as client:
        before = _task_runs(client)
        second = factory(config, return_state=True)
        assert second.is_completed(), second.message
        new_runs = _settled_task_runs(client, before)
        assert new_runs, "the second run should still consult its cached tasks"
        assert {r.state.name for r in new_runs} == {"Cached"}, [
            (r.name, r.state.name) for r in new_runs
        ]
        assert len(_flow_runs_named(client, "validate-dataset")) == 1


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.skip("Debian chromium is not installed (make test installs it when run as root)")


def _browse(url: str, tmp_path: Path, screenshot: Path | None = None) -> str:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000",
        "--virtual-time-budget=20000",
    ]  # fmt: skip
    action = [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    out = subprocess.run(
        [_chromium(), *flags, *action, url], capture_output=True, text=True, timeout=120
    )
    return out.stdout


def _browse_until(url: str, tmp_path: Path, expected: tuple[str, ...], tries: int = 3) -> str:
    """The page's DOM once it shows every expected string; a loaded CI machine sometimes
    dumps the single-page app before it has rendered (an empty body), so load it again."""
    for _ in range(tries):
        page = _browse(url, tmp_path)
        if all(text in page for text in expected):
            break
    return page


def test_the_ui_shows_the_flow_run_and_its_artifacts(first_run, prefect_api, tmp_path):
    from deployments.local_server import ui_url
    from pipeline_lib.data.loveda import read_image

    _, state = first_run
    ui = ui_url(prefect_api)
    flow_run = f"{ui}/runs/flow-run/{state.state_details.flow_run_id}"
    page = _browse_until(flow_run, tmp_path, ("factory", "Completed"))
    assert "factory" in page and "Completed" in page
    keys = ("flowtest-generation-progress", "flowtest-miou", "flowtest-validation-report")
    artifacts = _browse_until(f"{ui}/artifacts", tmp_path, keys)
    for key in keys:
        assert key in artifacts
    shot = tmp_path / "flow-run.png"
    _browse(flow_run, tmp_path, screenshot=shot)
    image = read_image(shot)
    assert image.shape[:2] == (1000, 1400) and np.std(image) > 10, "the page rendered blank"


def test_a_factory_error_fails_its_task_at_once_without_retries(prefect_api, tmp_path):
    from prefect import flow, task

    from pipeline_lib.errors import DataError
    from tasks.options import configured

    config = config_from_dict(minimal_config(tmp_path, prefect={"retries": 3}))
    calls = []

    @task(name="bad-data")
    def bad_data() -> None:
        calls.append(1)
        raise DataError(f"{tmp_path}/Train: missing folder")

    @flow(name="fails-at-once")
    def fails_at_once() -> None:
        configured(bad_data, config)()

    with pytest.raises(DataError, match="missing folder"):
        fails_at_once()
    assert len(calls) == 1, "a FactoryError must not be retried"
