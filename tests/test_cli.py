"""What a user sees from ``lfactory``: one line and exit 2 for what they can fix, a
traceback for our bugs."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_calls import call_main
from factory_configs import minimal_config
from store_fakes import SIZE, fake_shard

from pipeline_lib.config import load_config
from pipeline_lib.store import commit_shard, create_or_open_store


def make_store(path: Path, shards=(0, 1), kept: int = 3) -> Path:
    store = create_or_open_store(path, shard_size=4, height=SIZE, width=SIZE)
    for k in shards:
        commit_shard(store, fake_shard(k, kept))
    return path


def test_a_metric_mismatch_is_our_bug_and_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    import pipeline_lib.data.prepare
    import pipeline_lib.validate
    from pipeline_lib.validate import metrics

    def mismatching(*_args, **_kwargs):
        metrics.check_agreement(np.array([0.5, np.nan]), np.array([0.5, 0.1]))

    monkeypatch.setattr(pipeline_lib.data.prepare, "prepare_dataset", lambda *a, **k: None)
    monkeypatch.setattr(pipeline_lib.validate, "train_sources", lambda *a, **k: {})
    monkeypatch.setattr(pipeline_lib.validate, "run_validation", mismatching)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(minimal_config(tmp_path / "work")))
    with pytest.raises(metrics.MetricMismatchError, match="report this as a bug"):
        call_main(monkeypatch, capsys, "validate", config, "--data", "ori")


def test_validate_samples_trains_gen_on_the_stores_first_n(tmp_path, monkeypatch, capsys):
    import pipeline_lib.data.prepare
    import pipeline_lib.validate

    store = make_store(tmp_path / "store", shards=(0, 1), kept=3)
    trained = []

    def record(sources, eval_root, cfg, work_dir, progress):
        trained.extend(sorted((sources["Gen."][0] / "Train").rglob("masks_png/*.png")))
        raise SystemExit(0)

    monkeypatch.setattr(pipeline_lib.data.prepare, "prepare_dataset", lambda *a, **k: None)
    monkeypatch.setattr(pipeline_lib.validate, "run_validation", record)
    config = tmp_path / "config.yaml"
    raw = minimal_config(tmp_path / "work") | {"store": {"path": str(store), "shard_size": 4}}
    config.write_text(yaml.safe_dump(raw))
    # Two shards of 3 kept: a filtered and an unfiltered store compare at one count.
    call_main(monkeypatch, capsys, "validate", config, "--data", "gen", "--samples", "5")
    assert len(trained) == 5


def test_validate_store_and_seed_options_pick_the_store_and_the_segmenter_seed(
    tmp_path, monkeypatch, capsys
):
    """A quality run's store is named after its models: --store reaches it without editing
    the config, and --seed trains another segmenter seed on the same data."""
    import pipeline_lib.data.prepare
    import pipeline_lib.validate

    store = make_store(tmp_path / "store-0123456789.zarr", shards=(0,), kept=3)
    seen = []

    def record(sources, eval_root, cfg, work_dir, progress):
        gen = sorted((sources["Gen."][0] / "Train").rglob("masks_png/*.png"))
        seen.append((len(gen), cfg.seed))
        raise SystemExit(0)

    monkeypatch.setattr(pipeline_lib.data.prepare, "prepare_dataset", lambda *a, **k: None)
    monkeypatch.setattr(pipeline_lib.validate, "run_validation", record)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(minimal_config(tmp_path / "work")))
    missing = call_main(monkeypatch, capsys, "validate", config, "--data", "gen")
    assert missing.code == 2 and "--store" in missing.err
    call_main(
        monkeypatch, capsys, "validate", config, "--data", "gen", "--store", store, "--seed", "3"
    )
    assert seen == [(3, 3)]


@pytest.mark.parametrize("command", ["verify", "stats"])
def test_store_commands_on_missing_attributes_exit_2_naming_zarr_json(
    tmp_path, monkeypatch, capsys, command
):
    store = make_store(tmp_path / "store")
    meta = json.loads((store / "zarr.json").read_text())
    del meta["attributes"]["shard_size"]
    (store / "zarr.json").write_text(json.dumps(meta))
    result = call_main(monkeypatch, capsys, "store", command, store)
    assert result.code == 2
    assert "zarr.json" in result.err and "shard_size" in result.err


HEAVY = ("torch", "diffusers", "transformers", "mmseg", "mmengine", "mmcv", "prefect")
ROOT = Path(__file__).resolve().parents[1]


def _heavy_modules_after(*argv: str) -> list[str]:
    """The heavy packages a fresh ``lfactory *argv`` process has imported when it exits."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"sys.argv = ['lfactory', *{list(argv)!r}]\n"
        "from lfactory.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_help_and_data_check_import_no_model_or_orchestration_package(tmp_path):
    from fake_loveda import write_fake_loveda

    assert _heavy_modules_after("--help") == []
    root = write_fake_loveda(tmp_path / "loveda")
    assert _heavy_modules_after("data", "check", str(root)) == []


def test_importing_the_models_package_leaves_the_environment_alone():
    import subprocess
    import sys

    code = (
        "import os\nos.environ.pop('HF_HUB_OFFLINE', None)\nimport pipeline_lib.models\n"
        "print('HF_HUB_OFFLINE' in os.environ)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


@pytest.mark.slow
def test_a_command_that_loads_diffusers_prints_no_torchvision_notice(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"sys.argv = ['lfactory', 'models', 'init', {str(tmp_path / 'sd')!r}]\n"
        "from lfactory.cli import main\nmain()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torchvision" not in out.stderr, out.stderr
    assert "wrote" in out.stdout


def _tear(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("command", ["verify", "stats", "export"])
def test_store_commands_on_a_torn_manifest_exit_2_naming_it(tmp_path, monkeypatch, capsys, command):
    store = make_store(tmp_path / "store")
    torn = store / "manifests" / "shard-00001.parquet"
    _tear(torn)
    extra = [tmp_path / "out"] if command == "export" else []
    result = call_main(monkeypatch, capsys, "store", command, store, *extra)
    assert result.code == 2
    assert str(torn) in result.err and "unreadable manifest" in result.err


def test_verify_reports_every_problem_rather_than_the_first(tmp_path, monkeypatch, capsys):
    from pipeline_lib.store import SampleStore

    store = make_store(tmp_path / "store", shards=(0, 1, 2))
    _tear(store / "manifests" / "shard-00000.parquet")
    images, _ = SampleStore(store).arrays(mode="r+")
    images[8] = 0  # shard 2's first sample: valid zstd, wrong pixels
    result = call_main(monkeypatch, capsys, "store", "verify", store)
    assert result.code == 2
    assert "shard-00000.parquet: unreadable manifest" in result.err
    assert "shard 2" in result.err and "image bytes differ" in result.err
    assert "3 shard(s), 6 sample(s)" in result.out  # shards 1 and 2 were still checked


def test_verify_checks_the_manifests_when_an_array_is_damaged(tmp_path, monkeypatch, capsys):
    store = make_store(tmp_path / "store")
    (store / "labels" / "zarr.json").write_text("{torn")
    result = call_main(monkeypatch, capsys, "store", "verify", store)
    assert result.code == 2
    assert str(store / "labels" / "zarr.json") in result.err
    assert "2 shard(s), 6 sample(s)" in result.out


def test_cli_generate_tops_up_to_the_quota_like_the_flow(tmp_path, monkeypatch, capsys):
    import pipeline_lib.generate
    from pipeline_lib.store import committed_count, create_or_open_store

    monkeypatch.setattr(pipeline_lib.generate, "Generator", lambda cfg: None)

    def three_of_four(cfg, generator, shard_id):
        store = create_or_open_store(cfg.store.path, shard_size=4, height=SIZE, width=SIZE)
        return commit_shard(store, fake_shard(shard_id, 3))

    monkeypatch.setattr(pipeline_lib.generate, "generate_and_commit_shard", three_of_four)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(minimal_config(tmp_path / "work", store={"shard_size": 4})))
    result = call_main(monkeypatch, capsys, "generate", config, "--samples", "16")
    assert result.code == 0, result.err
    assert committed_count(load_config(config).store.path) == 18  # 6 shards of 3 kept


def test_cli_validate_writes_where_the_flow_writes_an_ad_hoc_round(tmp_path, monkeypatch, capsys):
    import pipeline_lib.data.prepare
    import pipeline_lib.validate
    from pipeline_lib.validate.steps import step_dir

    work_dirs = []

    def record(sources, eval_root, cfg, work_dir, progress):
        work_dirs.append(Path(work_dir))
        raise SystemExit(0)  # the command stops here, as after a finished validation

    monkeypatch.setattr(pipeline_lib.data.prepare, "prepare_dataset", lambda *a, **k: None)
    monkeypatch.setattr(pipeline_lib.validate, "train_sources", lambda *a, **k: {})
    monkeypatch.setattr(pipeline_lib.validate, "run_validation", record)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(minimal_config(tmp_path / "work")))
    call_main(monkeypatch, capsys, "validate", config, "--data", "ori")
    # flows.validate.validate_dataset(config) writes to step_dir(output, quota_step=None).
    assert work_dirs == [step_dir(load_config(config).validation.output, None)]
