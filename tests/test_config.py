"""Config loading: every error names the file and the dotted key; valid paths become absolute."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_lib.config import load_config
from pipeline_lib.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "factory.yaml"
    path.write_text(text)
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_unknown_key_names_the_file_and_the_dotted_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  synth:\n    tilez: 4\n")
    message = _error(path)
    assert str(path) in message
    assert "data.synth.tilez: unknown key" in message


def test_wrong_type_names_the_file_and_the_dotted_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "label_lora:\n  steps: many\n")
    message = _error(path)
    assert str(path) in message
    assert "label_lora.steps" in message
    assert "'many'" in message


def test_out_of_range_value_names_the_file_and_the_dotted_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  synth:\n    size: 16\n")
    message = _error(path)
    assert str(path) in message
    assert "data.synth.size" in message
    assert "16" in message


def test_every_bad_setting_is_listed_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "generation:\n  label_steps: 0\n  sheduler: ddim\n")
    message = _error(path)
    assert "2 invalid setting(s)" in message
    assert "generation.label_steps" in message and "generation.sheduler" in message


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "absent.yaml")
    path = _write(tmp_path, "data: [unclosed\n")
    assert str(path) in _error(path)


def test_a_bare_yaml_no_turns_mixed_precision_off(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "base:\n  mixed_precision: no\n"))
    assert config.base.mixed_precision == "no"
    assert "base.mixed_precision" in _error(_write(tmp_path, "base:\n  mixed_precision: yes\n"))


def test_valid_yaml_loads_with_paths_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _write(
        tmp_path,
        "work_dir: run\ndata:\n  root: data/loveda\n  synth:\n    tiles: 4\n    size: 64\n",
    )
    config = load_config(path)
    assert config.work_dir == tmp_path / "run"
    assert config.data.root == tmp_path / "data" / "loveda"
    assert config.data.eval_root == config.data.root
    assert config.data.synth is not None and config.data.synth.tiles == 4
    assert config.store.path == tmp_path / "run" / "store.zarr"
    for path_value in (config.models.base, config.validation.output, config.prefect.results_path):
        assert path_value is not None and path_value.is_absolute()


@pytest.mark.parametrize(
    ("targets", "says"),
    [
        ("{barrenn: 0.1}", "unknown class 'barrenn'; classes: background, building"),
        ("{barren: 1.5}", "barren: a share lies in 0..1, got 1.5"),
        ("{barren: 0.6, road: 0.5}", "the shares sum to 1.1; at most 1"),
    ],
)
def test_class_targets_name_known_classes_with_shares_summing_to_at_most_one(
    tmp_path: Path, targets: str, says: str
) -> None:
    message = _error(_write(tmp_path, f"generation:\n  class_targets: {targets}\n"))
    assert "generation.class_targets" in message and says in message


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name and cfg.work_dir.is_absolute()
