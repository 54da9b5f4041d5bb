"""``lfactory quality`` under a real Prefect server: a well-formed report, then a re-run that
repeats no stage."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from factory_configs import minimal_config

from pipeline_lib.config import config_from_dict

pytestmark = [pytest.mark.slow, pytest.mark.server]

TRAIN = {"steps": 2, "batch_size": 2, "resolution": 32, "checkpoint_every": 2, "lr": 1e-3}
# Cheap bookkeeping that re-runs by design: it reads the cached results and writes the files.
REPORT_TASKS = ("gather-sources", "write-report", "write-quality-report")
SUBFLOWS = ("train-models", "generate-shards", "validate-dataset")


@pytest.fixture(scope="module")
def quality_run(prefect_api, tmp_path_factory):
    from flows.quality import quality

    work = tmp_path_factory.mktemp("quality")
    config = config_from_dict(
        minimal_config(
            work,
            name="qualitytest",
            models={"preset": "tiny-pixel"},
            base=TRAIN,
            controlnet={**TRAIN, "conditioning": "concat"},
            store={"shard_size": 8},
        )
    )
    state = quality(config, return_state=True)
    return config, state


def _task_runs_since(client, since) -> list:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterEndTime

    after = TaskRunFilter(end_time=TaskRunFilterEndTime(after_=since))
    return client.read_task_runs(task_run_filter=after, limit=200)


def test_quality_writes_the_research_table_and_label_fidelity(quality_run):
    config, state = quality_run
    assert state.is_completed(), state.message
    report = json.loads((config.work_dir / "quality.json").read_text())
    assert [r["data_name"] for r in report["table"]["rows"]] == ["Gen.", "Ori.", "Gen.+Ori."]
    # 4 Train tiles of 64 px = 16,384 labelled pixels = 16 generated samples of 32 px.
    assert report["train_pixels"] == 16384 and report["generated_samples"] == 16
    fidelity = report["label_fidelity"]
    assert 0 <= fidelity["class_fraction_tv"] <= 1 and fidelity["attempts"] >= 16
    assert set(report["consistency"]["iou"]) == set(report["table"]["classes"])
    assert report["majority_baseline"]["class"] in report["table"]["classes"]
    assert {"train base (when trained)", "consistency (this run)"} <= set(report["stage_seconds"])
    markdown = (config.work_dir / "quality.md").read_text()
    assert "| Gen. |" in markdown and "consistency" in markdown
    assert (config.work_dir / "quality_grid.png").stat().st_size > 0


def test_a_quality_run_publishes_its_validation_once(quality_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    config, _ = quality_run
    key = ArtifactFilter(key=ArtifactFilterKey(any_=[f"{config.name}-validation-report"]))
    with get_client(sync_client=True) as client:
        published = client.read_artifacts(artifact_filter=key)
    assert len(published) == 1, [a.created for a in published]


def test_a_quality_run_trains_ori_before_it_generates(quality_run):
    config, _ = quality_run
    ori = Path(next(r["checkpoint"] for r in _report_rows(config) if r["data_name"] == "Ori."))
    manifests = list(config.work_dir.glob("store-*.zarr/manifests/shard-*.parquet"))
    # The agreement filter (when on) and the consistency score need it before any draw.
    assert manifests and ori.stat().st_mtime_ns < min(m.stat().st_mtime_ns for m in manifests)


def test_a_second_quality_run_repeats_no_stage(quality_run):
    from prefect.client.orchestration import get_client

    from flows.quality import quality

    config, _ = quality_run
    since = datetime.now(UTC)
    second = quality(config, return_state=True)
    assert second.is_completed(), second.message
    with get_client(sync_client=True) as client:
        new = _task_runs_since(client, since)
    worked = {(r.name, r.state.name) for r in new if not r.name.startswith(REPORT_TASKS + SUBFLOWS)}
    assert worked and {state for _, state in worked} == {"Cached"}, worked


def test_new_generation_settings_draw_a_new_store_and_keep_the_ori_model(quality_run):
    from prefect.client.orchestration import get_client

    from flows.quality import quality
    from pipeline_lib.validate.evaluate import trained_segmenters

    config, _ = quality_run
    before = {r["data_name"]: r for r in _report_rows(config)}
    generation = config.generation.model_copy(update={"seed": config.generation.seed + 1})
    since = datetime.now(UTC)
    state = quality(config.model_copy(update={"generation": generation}), return_state=True)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        segmenters = [
            r.state.name
            for r in _task_runs_since(client, since)
            if r.name.startswith("validate-data-")
        ]
    after = {r["data_name"]: r for r in _report_rows(config)}

    assert len(list(config.work_dir.glob("store-*.zarr"))) == 2
    # Ori. is trained on Train alone: the new store's report reuses it; Gen. rows retrain.
    assert sorted(segmenters) == ["Cached", "Completed", "Completed"], segmenters
    assert after["Ori."]["checkpoint"] == before["Ori."]["checkpoint"]
    assert after["Gen."]["checkpoint"] != before["Gen."]["checkpoint"]
    # lfactory evaluate finds the Ori. model outside the new step folder.
    step = Path(after["Gen."]["work_dir"]).parent
    ori = next(s for (s,) in trained_segmenters(step) if s.result.data_name == "Ori.")
    assert str(ori.checkpoint) == before["Ori."]["checkpoint"]


def _report_rows(config) -> list[dict]:
    return json.loads((config.work_dir / "quality.json").read_text())["table"]["rows"]
