"""Any evaluation set: ``lfactory validate --eval-root`` and ``lfactory evaluate RUN_DIR``,
which scores what a validation run trained without training again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from cli_calls import call_main
from factory_configs import minimal_config
from test_validate import make_tiny_loveda, tiny_config

from pipeline_lib.config import ValidationConfig, load_config
from pipeline_lib.validate.experiment import VALIDATION_FILE


@pytest.fixture(scope="module")
def trained_step(tmp_path_factory: pytest.TempPathFactory, one_torch_thread):
    """A validation step folder with two 2-iteration rows, Ori. and Gen.+Ori."""
    from pipeline_lib.validate import run_validation

    base = tmp_path_factory.mktemp("evaluate")
    gen, ori = make_tiny_loveda(base / "gen", 1), make_tiny_loveda(base / "ori", 2)
    step = base / "validation" / "all"
    report = run_validation(
        {"Ori.": [ori], "Gen.+Ori.": [gen, ori]}, ori, tiny_config(), step, progress=False
    )
    return base, step, report


@pytest.mark.slow
def test_each_trained_row_records_the_config_it_was_trained_with(trained_step):
    _, _, report = trained_step
    for row in report.rows:
        saved = json.loads((Path(row.work_dir) / VALIDATION_FILE).read_text())
        assert ValidationConfig.model_validate(saved) == tiny_config()


@pytest.mark.slow
def test_evaluating_on_the_training_eval_set_reproduces_the_validation_report(trained_step):
    from pipeline_lib.validate.evaluate import evaluate_run

    base, step, report = trained_step
    checkpoints = {r.checkpoint: Path(r.checkpoint).stat().st_mtime_ns for r in report.rows}
    again = evaluate_run(step, base / "ori", device="cpu", progress=False)

    assert [r.data_name for r in again.rows] == ["Ori.", "Gen.+Ori."]
    for before, after in zip(report.rows, again.rows, strict=True):
        assert after.iou == pytest.approx(before.iou, nan_ok=True)
        assert after.miou == pytest.approx(before.miou, nan_ok=True)
        assert after.eval_samples == before.eval_samples == 4 and after.iters == 2
    assert {c: Path(c).stat().st_mtime_ns for c in checkpoints} == checkpoints  # not retrained
    out = step / "eval" / "ori"
    data = json.loads((out / "report.json").read_text())
    assert data["eval_root"] == str((base / "ori").resolve()) and len(data["rows"]) == 2
    assert "| Gen.+Ori. |" in (out / "report.md").read_text()
    assert (out / "iou_bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_row_averaged_over_seeds_is_scored_again_with_every_seed(tmp_path, one_torch_thread):
    from pipeline_lib.validate import run_validation
    from pipeline_lib.validate.evaluate import evaluate_run

    ori = make_tiny_loveda(tmp_path / "ori", 2)
    step = tmp_path / "validation" / "all"
    (row,) = run_validation({"Ori.": [ori]}, ori, tiny_config(repeats=2), step, progress=False).rows
    moved = tmp_path / "moved" / "all"
    shutil.move(step, moved)

    (again,) = evaluate_run(moved, ori, device="cpu", progress=False).rows

    assert len(row.seed_work_dirs) == 2 and row.seed_work_dirs[0] == row.work_dir
    assert again.seed_miou == pytest.approx(row.seed_miou, nan_ok=True)
    assert again.miou == pytest.approx(row.miou, nan_ok=True)
    assert [Path(d).parent for d in again.seed_work_dirs] == [moved, moved]


@pytest.mark.slow
def test_cli_evaluate_scores_a_moved_run_on_another_folder(
    trained_step, tmp_path, monkeypatch, capsys
):
    base, step, _ = trained_step
    moved = tmp_path / "moved" / "all"
    shutil.copytree(step, moved)
    other = make_tiny_loveda(tmp_path / "other", 5, train=0, val=3)

    result = call_main(
        monkeypatch,
        capsys,
        "evaluate",
        moved,
        "--eval-root",
        other,
        "--name",
        "mine",
        "--device",
        "cpu",
        "--slide",
    )
    assert result.code == 0, result.err
    data = json.loads((moved / "eval" / "mine" / "report.json").read_text())
    assert data["eval_root"] == str(other.resolve()) and data["eval_samples"] == 3
    assert all(Path(row["checkpoint"]).parent.parent == moved for row in data["rows"])
    # Trained whole-tile, scored in windows: the report says which.
    assert all(row["slide"] for row in data["rows"])
    assert "predicting in crop-sized windows" in result.out
    assert "| Ori. |" in result.out and "iou_bars.png" in result.out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("report.json", "no report.json, so no finished validation here"),
        (VALIDATION_FILE, "validation.json: missing"),
        ("result.json", "result.json: missing; the run folder is incomplete"),
        ("iter_2.pth", "no checkpoint"),
    ],
)
def test_cli_evaluate_an_incomplete_run_exits_2_naming_what_is_missing(
    trained_step, tmp_path, monkeypatch, capsys, damage, message
):
    base, step, report = trained_step
    broken = tmp_path / "all"
    shutil.copytree(step, broken, ignore=shutil.ignore_patterns("eval"))
    folder = broken if damage == "report.json" else broken / Path(report.rows[1].work_dir).name
    (folder / damage).unlink()

    result = call_main(monkeypatch, capsys, "evaluate", broken, "--eval-root", base / "ori")
    assert result.code == 2 and message in result.err, result.err
    assert "Traceback" not in result.err and not (broken / "eval").exists()


def test_cli_evaluate_a_missing_run_or_an_eval_root_without_val_exits_2(
    tmp_path, monkeypatch, capsys
):
    no_val = make_tiny_loveda(tmp_path / "train-only", 3, train=2, val=0)
    absent = call_main(monkeypatch, capsys, "evaluate", tmp_path / "nope", "--eval-root", no_val)
    assert absent.code == 2 and "no labelled tiles in Val" in absent.err

    with_val = make_tiny_loveda(tmp_path / "with-val", 3, train=0, val=1)
    absent = call_main(monkeypatch, capsys, "evaluate", tmp_path / "nope", "--eval-root", with_val)
    assert absent.code == 2 and f"{tmp_path / 'nope'}: no such run folder" in absent.err


def test_validate_eval_root_overrides_the_configs_evaluation_set(tmp_path, monkeypatch, capsys):
    import pipeline_lib.data.prepare
    import pipeline_lib.validate

    calls = []

    def record(sources, eval_root, cfg, work_dir, progress):
        calls.append(Path(eval_root))
        raise SystemExit(0)  # the command stops here, as after a finished validation

    monkeypatch.setattr(pipeline_lib.data.prepare, "prepare_dataset", lambda *a, **k: None)
    monkeypatch.setattr(pipeline_lib.validate, "train_sources", lambda *a, **k: {})
    monkeypatch.setattr(pipeline_lib.validate, "run_validation", record)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(minimal_config(tmp_path / "work")))
    mine = make_tiny_loveda(tmp_path / "mine", 4, train=0, val=1)
    monkeypatch.chdir(tmp_path)

    call_main(monkeypatch, capsys, "validate", config, "--data", "ori", "--eval-root", "mine")
    assert calls == [mine.resolve()] != [load_config(config).data.eval_root]
    call_main(monkeypatch, capsys, "validate", config, "--data", "ori")
    assert calls[-1] == load_config(config).data.eval_root  # the config's own without it

    bad = call_main(monkeypatch, capsys, "validate", config, "--eval-root", tmp_path / "work")
    assert bad.code == 2 and f"{tmp_path / 'work'}: evaluation folder does not exist" in bad.err
    assert len(calls) == 2  # refused before any data was prepared or trained
