"""Tasks, flows and deployments without a server: ``.fn``, keys, options, wiring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest
import yaml
from cli_calls import call_main
from factory_configs import minimal_config

from pipeline_lib.config import config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def tiny(tmp_path: Path, **sections) -> dict:
    return minimal_config(tmp_path / "work", name="unit", **sections)


def test_library_never_imports_prefect():
    code = (
        "import pkgutil, importlib, sys, pipeline_lib\n"
        "for m in pkgutil.walk_packages(pipeline_lib.__path__, 'pipeline_lib.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'prefect' or n.startswith('prefect.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_out_of_memory_retries_with_half_the_batch():
    import torch

    from tasks.options import halve_on_oom

    tried = []

    def run(batch: int) -> int:
        tried.append(batch)
        if batch > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch

    assert halve_on_oom(run, 8, "test") == 2
    assert tried == [8, 4, 2]


def test_other_errors_are_not_retried_by_the_oom_back_off():
    from tasks.options import halve_on_oom

    def run(batch: int) -> int:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        halve_on_oom(run, 8, "test")


def test_a_halved_training_batch_keeps_the_effective_batch(tmp_path):
    from tasks.training import _with_batch

    config = config_from_dict(tiny(tmp_path, label_lora={"batch_size": 8, "grad_accum": 2}))
    smaller = _with_batch(config, "label_lora", 2).label_lora
    assert (smaller.batch_size, smaller.grad_accum) == (2, 8)
    assert config.label_lora.batch_size == 8, "the caller's config must not change"


def test_training_cache_key_follows_its_inputs_and_not_whether_the_base_exists(tmp_path):
    from tasks.training import _training_key

    key = _training_key("label_lora")
    (tmp_path / "work" / "data" / "loveda").mkdir(parents=True)
    config = config_from_dict(tiny(tmp_path))
    before = key(None, {"config": config})
    (tmp_path / "work" / "models" / "sd").mkdir(parents=True)  # the base appears mid-run
    assert key(None, {"config": config}) == before
    changed = config_from_dict(tiny(tmp_path, label_lora={"steps": 3}))
    assert key(None, {"config": changed}) != before
    controlnet_only = config_from_dict(tiny(tmp_path, controlnet={"steps": 7}))
    assert key(None, {"config": controlnet_only}) == before


def test_prepare_data_task_synthesises_and_checks(tmp_path):
    from prefect.logging import disable_run_logger

    from tasks.data import prepare_data

    config = config_from_dict(tiny(tmp_path))
    with disable_run_logger():
        summary = prepare_data.fn(config)
    assert summary.root == config.data.root and summary.tiles == 8


@pytest.mark.slow
def test_generate_then_commit_tasks_publish_a_shard(tmp_path):
    from prefect.logging import disable_run_logger

    from pipeline_lib.models.build import init_models
    from pipeline_lib.store.store import committed_count
    from pipeline_lib.store.verify import verify_store
    from tasks.generation import commit_shard_task, generate_shard_task

    config = config_from_dict(tiny(tmp_path))
    init_models(config.models.base, "tiny")
    with disable_run_logger():
        staged = generate_shard_task.fn(config, 0)
        assert committed_count(config.store.path) == 0, "staged samples must stay invisible"
        result = commit_shard_task.fn(config, staged)
    assert (result.shard_id, result.kept) == (0, 2)
    assert committed_count(config.store.path) == 2
    assert verify_store(config.store.path).ok


def test_validation_starts_once_per_step_through_the_deployment(tmp_path, monkeypatch):
    import flows.generate as generate

    config = config_from_dict(tiny(tmp_path))
    calls = []
    monkeypatch.setattr(generate.deployment, "get_id", lambda: str(uuid4()))
    monkeypatch.setattr(generate, "run_deployment", lambda name, **kw: calls.append((name, kw)))
    monkeypatch.setattr(generate, "get_run_logger", lambda: __import__("logging").getLogger())
    generate.start_validation(config, 16)
    ((name, options),) = calls
    assert name == "validate-dataset/unit-validate"
    assert options["timeout"] == 0 and options["parameters"]["quota_step"] == 16
    assert options["idempotency_key"].endswith("step-16")
    # Once the step's report exists, nothing is started again.
    report = config.validation.output / "step-000016" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text("{}")
    generate.start_validation(config, 16)
    assert len(calls) == 1


def test_serve_builds_nightly_per_style_and_validation_deployments():
    from deployments.serve import build_deployments
    from flows.validate import validation_deployment

    config = load_config(ROOT / "configs" / "tiny.yaml")
    deployments = {d.name: d for d in build_deployments(config)}
    assert set(deployments) == {
        "tiny-nightly",
        "tiny-validate",
        "tiny-style-default",
        "tiny-style-winter",
    }
    nightly = deployments["tiny-nightly"].schedules[0].schedule
    assert (nightly.cron, nightly.timezone) == (
        config.prefect.nightly_cron,
        config.prefect.timezone,
    )
    assert deployments["tiny-style-winter"].parameters["style"] == "winter"
    assert validation_deployment(config).split("/")[1] in deployments


def test_a_style_run_writes_its_own_store(tmp_path):
    config = config_from_dict(
        tiny(tmp_path, generation={"styles": {"a": {}, "snow": {"prompt": "snow"}}})
    )
    snow = config.for_style("snow")
    assert list(snow.generation.styles) == ["snow"]
    assert snow.store.path != config.store.path and snow.name == "unit-snow"
    with pytest.raises(ValueError, match="not declared"):
        config.for_style("desert")


def test_prefect_yaml_config_is_valid_and_names_the_validation_deployment():
    from flows.validate import validation_deployment

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    for item in spec["deployments"]:
        config = config_from_dict(item["parameters"]["config"], source="deployments/prefect.yaml")
        if "style" in item["parameters"]:
            config.for_style(item["parameters"]["style"])
    assert validation_deployment(config).split("/")[1] in names


def _failed(error: BaseException):
    from prefect.states import Failed

    return Failed(data=error, message=repr(error))


def test_only_errors_a_second_try_can_cure_are_retried():
    import torch

    from pipeline_lib.errors import CheckpointError, ConfigError, DataError, StoreError
    from tasks.options import retry_only_transient

    for error in (
        DataError("data/Train: missing folder"),
        ConfigError("bad key"),
        StoreError("store is damaged"),
        CheckpointError("no unet"),  # a FactoryError that is also an OSError
        FileNotFoundError("gone"),
        ValueError("a bug"),
    ):
        assert not retry_only_transient(None, None, _failed(error)), error
    for error in (
        torch.OutOfMemoryError("CUDA out of memory"),
        ConnectionError("transient: worker lost its lease"),
        TimeoutError("read timed out"),
        OSError(5, "Input/output error"),
    ):
        assert retry_only_transient(None, None, _failed(error)), error


def test_configured_tasks_retry_with_the_transient_only_rule(tmp_path, monkeypatch):
    import tasks.options
    from tasks.options import configured, retry_only_transient
    from tasks.training import train_label_lora_task

    # Saving the result-storage block needs a server; the retry options do not.
    monkeypatch.setattr(tasks.options, "_result_storage", lambda *a: None)
    config = config_from_dict(tiny(tmp_path))
    task = configured(train_label_lora_task, config)
    assert task.retries == 1
    assert task.retry_condition_fn is retry_only_transient


def test_run_on_a_missing_data_root_exits_2_with_one_line_before_any_server(
    tmp_path, monkeypatch, capsys
):
    import time

    import deployments.local_server

    def no_server(*_a, **_k):
        raise AssertionError("a server was started for a run that cannot succeed")

    monkeypatch.setattr(deployments.local_server, "api_or_local_server", no_server)
    config = tiny(tmp_path, data={"root": str(tmp_path / "no-such-loveda")})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    result = call_main(monkeypatch, capsys, "run", path)
    assert time.perf_counter() - start < 5
    assert result.code == 2
    err = result.err.strip()
    assert err.count("\n") == 0 and "no-such-loveda" in err and "does not exist" in err


def test_micro_batches_always_divide_the_configured_batch():
    from pipeline_lib.micro_batches import exact_splits

    assert exact_splits(5) == [5, 1]
    assert exact_splits(8) == [8, 4, 2, 1]
    assert exact_splits(12) == [12, 6, 3, 1]
    assert exact_splits(1) == [1]


def test_oom_back_off_keeps_an_odd_effective_batch_and_its_resume_hash(tmp_path):
    import torch

    from pipeline_lib.train.resumable import train_section_hash
    from tasks.training import _train_with_oom_back_off

    config = config_from_dict(tiny(tmp_path, label_lora={"batch_size": 5, "grad_accum": 1}))
    tried = []

    def train(cfg, progress):
        tried.append(cfg.label_lora)
        if cfg.label_lora.batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return cfg.label_lora

    used = _train_with_oom_back_off(train, config, "label_lora", "test")
    assert [(t.batch_size, t.grad_accum) for t in tried] == [(5, 1), (1, 5)]
    assert train_section_hash(used) == train_section_hash(config.label_lora), (
        "a resumed run would refuse the checkpoint of the split run"
    )


def test_validation_refuses_to_shrink_its_batch_on_out_of_memory(tmp_path, monkeypatch):
    import torch
    from prefect.logging import disable_run_logger

    import tasks.validation
    from pipeline_lib.errors import GpuMemoryError

    config = config_from_dict(tiny(tmp_path))
    batches = []

    def out_of_memory(name, sources, eval_root, cfg, work_dir, progress):
        batches.append(cfg.batch_size)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tasks.validation, "run_data_name", out_of_memory)
    with disable_run_logger(), pytest.raises(GpuMemoryError, match="validation.batch_size"):
        tasks.validation.validate_data.fn(config, "gen", [], tmp_path / "v")
    assert batches == [2], "a smaller batch would report another experiment than configured"


def test_prefect_yaml_is_generated_from_the_production_config():
    from deployments.prefect_yaml import render
    from deployments.serve import build_deployments

    source = "configs/sd15-loveda.yaml"
    expected = render(ROOT / source, source=source)
    assert (ROOT / "deployments" / "prefect.yaml").read_text() == expected, (
        f"deployments/prefect.yaml differs from {source}; regenerate it with "
        f"`python -m deployments.prefect_yaml {source} > deployments/prefect.yaml`"
    )
    spec = yaml.safe_load(expected)
    production = yaml.safe_load((ROOT / source).read_text())
    assert all(d["parameters"]["config"] == production for d in spec["deployments"])
    served = {d.name for d in build_deployments(load_config(ROOT / source))}
    assert {d["name"] for d in spec["deployments"]} == served


def test_local_flow_runs_skip_heartbeats_and_tasks_get_a_saved_result_block(prefect_api, tmp_path):
    # Each costs server round trips or waits on every run (bench.flow_vs_library: the flow's
    # added seconds 9.2 -> 4.1); both must hold for the local one-process server.
    from prefect.settings import get_current_settings

    from tasks.options import _result_storage

    assert get_current_settings().flows.heartbeat_frequency is None
    block = _result_storage(str(tmp_path / "results"), prefect_api)
    assert block._block_document_id is not None, "a slug or unsaved block is loaded per task run"


def test_a_cpu_run_takes_no_slot_of_the_gpu_limit(prefect_api, tmp_path):
    # Entering a tag's concurrency context leases a slot from the server: 0.35-0.7 s per task.
    from tasks.generation import generate_shard_task
    from tasks.options import GPU_TAG, configured

    on = {device: config_from_dict(tiny(tmp_path, device=device)) for device in ("cpu", "cuda")}
    assert GPU_TAG not in configured(generate_shard_task, on["cpu"]).tags
    assert GPU_TAG in configured(generate_shard_task, on["cuda"]).tags
    assert GPU_TAG in generate_shard_task.tags, "configured() must not change the task itself"
