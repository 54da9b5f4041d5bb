"""Which labels a shard keeps: class targets and near-duplicates, through the real
generator loop and a real store, with labels from a seeded stub (no diffusion model)."""

from __future__ import annotations

import numpy as np
import pytest
from label_stubs import SIZE, StubGenerator
from typer.testing import CliRunner

from pipeline_lib.config import config_from_dict
from pipeline_lib.data.classes import VALUE_BY_NAME
from pipeline_lib.generate.duplicates import NEAR_DUPLICATE, label_signature, signature_distances
from pipeline_lib.generate.replay import regenerate
from pipeline_lib.generate.selection import OFF_TARGET
from pipeline_lib.generate.shards import generate_and_commit_shard
from pipeline_lib.store import read_manifests, store_stats

TARGETS = {"barren": 0.3, "water": 0.15}


def stub_config(tmp_path, shard_size: int = 8, **generation):
    settings = {"resolution": SIZE, "batch_size": 2}
    settings.update(generation)
    return config_from_dict(
        {
            "name": "stub",
            "work_dir": str(tmp_path),
            "device": "cpu",
            "generation": settings,
            "store": {"shard_size": shard_size},
        }
    )


def fill(cfg, shards: int, generator=None) -> None:
    generator = generator or StubGenerator(cfg)
    for shard_id in range(shards):
        generate_and_commit_shard(cfg, generator, shard_id)


def coded_label(code: int, size: int = SIZE) -> np.ndarray:
    """Background with barren in the cells of a 4 x 4 grid where ``code`` has a bit set:
    two codes' labels lie the share of differing bits apart on that grid."""
    bits = np.array([(code >> i) & 1 for i in range(16)], bool).reshape(4, 4)
    cells = bits.repeat(size // 4, 0).repeat(size // 4, 1)
    return np.where(cells, VALUE_BY_NAME["barren"], VALUE_BY_NAME["background"]).astype(np.uint8)


def test_label_distance_is_the_share_of_grid_cells_whose_class_differs():
    one, three = coded_label(1), coded_label(3)
    signatures = np.stack([label_signature(m, 4) for m in (one, three, coded_label(0xFFFF))])
    np.testing.assert_allclose(signature_distances(signatures[0], signatures), [0, 1 / 16, 15 / 16])
    speckled = one.copy()
    speckled[::4, ::4] = VALUE_BY_NAME["water"]  # one pixel of sixteen per cell: layout unchanged
    np.testing.assert_array_equal(label_signature(speckled, 4), signatures[0])


def test_class_targets_are_reached_within_a_hundredth_on_a_tiny_store(tmp_path):
    cfg = stub_config(tmp_path / "steered", class_targets=TARGETS, target_oversample=8)
    fill(cfg, 3)
    stats = store_stats(cfg.store.path)
    assert stats.samples == 24 and stats.class_targets == TARGETS
    for name, target in TARGETS.items():
        assert stats.class_fractions[name] == pytest.approx(target, abs=0.01)
    assert stats.reject_reasons[OFF_TARGET] > 0  # the draws the steering passed over

    # The same draws kept as they come stay far from the targets.
    plain = stub_config(tmp_path / "plain")
    fill(plain, 3)
    shares = store_stats(plain.store.path).class_fractions
    assert all(abs(shares[name] - target) > 0.04 for name, target in TARGETS.items())

    from lfactory.cli import app

    output = CliRunner().invoke(app, ["store", "stats", str(cfg.store.path)]).output
    assert "barren" in output and "target 0.3000" in output and "target 0.1500" in output


def test_steered_shards_repeat_per_seed_and_their_samples_regenerate(tmp_path):
    first = stub_config(tmp_path / "a", class_targets=TARGETS)
    again = stub_config(tmp_path / "b", class_targets=TARGETS)
    fill(first, 2)
    fill(again, 2)
    columns = ["sample_id", "attempt", "label_sha256", "image_sha256"]
    table = read_manifests(first.store.path)
    assert table.select(columns) == read_manifests(again.store.path).select(columns)
    assert table["attempt"].to_pylist() != list(range(8)) * 2  # draws were passed over
    generator = StubGenerator(first)
    for sample_id in table["sample_id"].to_pylist()[::5]:
        assert regenerate(first.store.path, sample_id, generator=generator).identical


def test_a_duplicated_label_is_rejected_across_a_resume(tmp_path):
    cfg = stub_config(
        tmp_path,
        shard_size=4,
        max_attempts_per_sample=2,
        qa={"min_label_distance": 0.05, "duplicate_grid": 4},
    )

    # Every shard draws the same labels: shard 1 repeats shard 0's (attempts 0..3).
    def layout(draw):
        return coded_label(draw.attempt + 1)

    first = generate_and_commit_shard(cfg, StubGenerator(cfg, layout), 0)
    assert (first.kept, first.reasons) == (4, {})
    # A new generator (a resumed run) knows shard 0 only from the store.
    resumed = generate_and_commit_shard(cfg, StubGenerator(cfg, layout), 1)
    assert (resumed.kept, resumed.reasons) == (4, {NEAR_DUPLICATE: 4})

    rows = read_manifests(cfg.store.path).to_pylist()
    assert [r["attempt"] for r in rows] == [0, 1, 2, 3, 4, 5, 6, 7]
    # Code 1 had nothing before it; code 2 differs from code 1 in two cells, code 5 from 4 in one.
    assert [r["dup_distance"] for r in rows[:2]] == [None, pytest.approx(2 / 16)]
    assert rows[4]["dup_distance"] == pytest.approx(1 / 16)
    assert all(r["agreement_miou"] is None for r in rows)


def test_a_label_repeating_one_kept_earlier_in_the_shard_is_rejected(tmp_path):
    cfg = stub_config(tmp_path, shard_size=4, qa={"min_label_distance": 0.05, "duplicate_grid": 4})

    def layout(draw):  # attempts 2k and 2k + 1 draw the same label
        return coded_label(draw.attempt // 2 + 1)

    result = generate_and_commit_shard(cfg, StubGenerator(cfg, layout), 0)
    # Attempt 7 is drawn (whole batches) but not needed once attempt 6 fills the shard.
    assert (result.kept, result.reasons) == (4, {NEAR_DUPLICATE: 3})
    assert read_manifests(cfg.store.path)["attempt"].to_pylist() == [0, 2, 4, 6]


def test_without_targets_or_duplicate_check_every_passing_label_is_kept_in_order(tmp_path):
    cfg = stub_config(tmp_path, shard_size=4)
    # Every label alike: the near-duplicate check is off by default.
    result = generate_and_commit_shard(cfg, StubGenerator(cfg, lambda draw: coded_label(1)), 0)
    assert (result.kept, result.reasons) == (4, {})
    table = read_manifests(cfg.store.path)
    assert table["attempt"].to_pylist() == [0, 1, 2, 3]
    assert table["dup_distance"].null_count == 4


def test_targets_the_label_model_cannot_reach_are_warned_of_by_name(tmp_path, caplog):
    # banded_label draws no agriculture: no choice among draws brings the store near 0.4.
    cfg = stub_config(tmp_path / "far", class_targets={"agriculture": 0.4}, target_oversample=2)
    with caplog.at_level("WARNING", logger="pipeline_lib.generate.sampler"):
        fill(cfg, 1)
    (warning,) = [r.getMessage() for r in caplog.records if "class_targets" in r.getMessage()]
    assert "agriculture at 0.000, generation.class_targets asks for 0.400" in warning

    caplog.clear()
    near = stub_config(tmp_path / "near", class_targets=TARGETS, target_oversample=8)
    with caplog.at_level("WARNING", logger="pipeline_lib.generate.sampler"):
        fill(near, 1)
    assert not [r for r in caplog.records if "class_targets" in r.getMessage()]
