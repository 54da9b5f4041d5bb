"""The agreement filter: a segmenter predicts on each drawn image and a pair whose
prediction contradicts its label is rejected, through the real generator loop and store.

The stub generator paints each image from its label in the palette's colours and the stub
segmenter reads those colours back, so a pair agrees exactly unless a test paints the
image from another label. Its images also carry a mark of the whole image batch, as
batched kernels' rounding would: a sample regenerates only if its batch is replayed as
it was drawn, rejected pairs included.
"""

from __future__ import annotations

import numpy as np
import pytest
from factory_configs import KEEP_EVERY_LABEL, generator_config
from label_stubs import SIZE, StubGenerator

from pipeline_lib.config import config_from_dict
from pipeline_lib.data.classes import PALETTE, VALUE_BY_NAME
from pipeline_lib.data.palette import snap_to_palette
from pipeline_lib.errors import ConfigError
from pipeline_lib.generate.agreement import (
    DISAGREEMENT,
    MODEL_KEY,
    AgreementFilter,
    agreement_miou,
)
from pipeline_lib.generate.duplicates import NEAR_DUPLICATE, DuplicateFilter
from pipeline_lib.generate.replay import regenerate
from pipeline_lib.generate.selection import Candidate, ClassSteering, fraction_vector, release
from pipeline_lib.generate.shards import generate_and_commit_shard
from pipeline_lib.store import read_manifests, store_stats
from pipeline_lib.store.manifest import read_shard_meta
from pipeline_lib.store.store import SampleStore

WATER = VALUE_BY_NAME["water"]


def read_colours(images: np.ndarray) -> np.ndarray:
    """A segmenter that is never wrong about a painted image: each pixel's nearest colour."""
    return np.stack([snap_to_palette(image, 255)[0] for image in images])


class PaintedGenerator(StubGenerator):
    """Images painted from their labels; the attempts in ``lakes`` are painted all water."""

    def __init__(self, cfg, lakes=(), **kwargs):
        super().__init__(cfg, **kwargs)
        self.lakes = set(lakes)

    def sample_images(self, draws, masks):
        batch_mark = sum(d.attempt + 1 for d in draws) % 8  # 0..7: never moves a colour's class
        images = [
            PALETTE[np.full_like(m, WATER) if d.attempt in self.lakes else m] ^ np.uint8(batch_mark)
            for d, m in zip(draws, masks, strict=True)
        ]
        return np.stack(images) if images else np.zeros((0, SIZE, SIZE, 3), np.uint8)


def agreement_config(tmp_path, **qa):
    return config_from_dict(
        {
            "name": "agree",
            "work_dir": str(tmp_path),
            "device": "cpu",
            "generation": {"resolution": SIZE, "batch_size": 2, "qa": qa},
            "store": {"shard_size": 4},
        }
    )


def test_agreement_is_the_miou_over_the_label_classes_ignoring_no_data():
    label = np.full((4, 4), VALUE_BY_NAME["background"], np.uint8)
    label[:2] = VALUE_BY_NAME["barren"]
    assert agreement_miou(label, label) == 1.0
    swapped = np.where(label == VALUE_BY_NAME["barren"], VALUE_BY_NAME["background"], 2)
    assert agreement_miou(label, swapped) == 0.0

    speck = label.copy()
    speck[0, 0] = WATER  # a class the label lacks: costs barren 1/8, and is not a class itself
    assert agreement_miou(label, speck) == pytest.approx((7 / 8 + 1) / 2)
    unlabelled = label.copy()
    unlabelled[3] = 0  # no-data: whatever is predicted there counts nowhere
    assert agreement_miou(unlabelled, np.where(unlabelled == 0, WATER, unlabelled)) == 1.0
    assert agreement_miou(np.zeros((4, 4), np.uint8), label) == 0.0


def test_a_contradicting_pair_is_rejected_and_the_kept_pairs_regenerate(tmp_path):
    cfg = agreement_config(tmp_path, min_agreement=0.5)
    generator = PaintedGenerator(cfg, lakes={1, 4})
    generator.agreement = AgreementFilter(0.5, read_colours, "colour reader")
    result = generate_and_commit_shard(cfg, generator, 0)

    assert result.kept == 4 and result.reasons == {DISAGREEMENT: 2}
    table = read_manifests(cfg.store.path)
    assert table["attempt"].to_pylist() == [0, 2, 3, 6]  # no lakes; 5: no room left
    assert table["agreement_miou"].to_pylist() == [1.0] * 4
    recorded = read_shard_meta(cfg.store.path, 0)["config"]["agreement"]
    assert recorded == {"segmenter": "colour reader", "rejected": [1, 4]}
    assert store_stats(cfg.store.path).reject_reasons == {DISAGREEMENT: 2}

    # Attempt 0 was drawn beside the rejected 1: alone its image would differ.
    draw = generator.draw(0, 0)
    alone = generator.sample_images([draw], [generator.layout(draw)])[0]
    stored, _, _ = SampleStore(cfg.store.path).read_sample(table["sample_id"][0].as_py())
    assert not np.array_equal(alone, stored)
    for sample_id in table["sample_id"].to_pylist():
        assert regenerate(cfg.store.path, sample_id, generator=generator).identical


def test_a_rejected_pair_leaves_no_trace_in_what_later_labels_are_compared_with(tmp_path):
    # Attempts 1 and 2 draw the same label; 1 is painted as a lake and rejected, so 2 is
    # no near-duplicate of anything kept.
    same = {0: 10, 1: 11, 2: 11, 3: 13}
    cfg = agreement_config(tmp_path, min_agreement=0.5, min_label_distance=0.01)
    generator = PaintedGenerator(
        cfg, lakes={1}, layout=lambda d: _coded(same.get(d.attempt, 20 + d.attempt))
    )
    generator.agreement = AgreementFilter(0.5, read_colours, "colour reader")
    result = generate_and_commit_shard(cfg, generator, 0)
    assert result.reasons == {DISAGREEMENT: 1}
    assert NEAR_DUPLICATE not in result.reasons
    assert read_manifests(cfg.store.path)["attempt"].to_pylist() == [0, 2, 3, 4]

    steering = ClassSteering({"barren": 0.5})
    duplicates = DuplicateFilter(0.01, 4)
    mask = _coded(11)
    candidate = Candidate(0, mask, fraction_vector(mask))
    steering.add(candidate.fractions)
    duplicates.add(mask)
    assert duplicates.is_duplicate(duplicates.nearest(mask))
    release(candidate, steering, duplicates)
    assert duplicates.nearest(mask) is None
    assert steering.count == 0 and not steering.sums.any()


def _coded(code: int) -> np.ndarray:
    """Background with barren in the cells of a 4 x 4 grid where ``code`` has a bit set."""
    bits = np.array([(code >> i) & 1 for i in range(16)], bool).reshape(4, 4)
    cells = bits.repeat(SIZE // 4, 0).repeat(SIZE // 4, 1)
    return np.where(cells, VALUE_BY_NAME["barren"], VALUE_BY_NAME["background"]).astype(np.uint8)


def test_the_filter_is_off_by_default_and_records_nothing(tmp_path):
    cfg = agreement_config(tmp_path)
    generator = PaintedGenerator(cfg, lakes={1})
    assert not generator.agreement.enabled
    result = generate_and_commit_shard(cfg, generator, 0)
    assert result.kept == 4 and result.reasons == {}
    assert read_manifests(cfg.store.path)["agreement_miou"].to_pylist() == [None] * 4
    assert "agreement" not in read_shard_meta(cfg.store.path, 0)["config"]


def test_a_missing_agreement_model_is_an_error_naming_the_key(tmp_path):
    missing = tmp_path / "nowhere" / "step-000064"
    cfg = agreement_config(tmp_path, min_agreement=0.3, agreement_model=str(missing))
    with pytest.raises(ConfigError, match=f"{MODEL_KEY}: {missing} does not exist"):
        AgreementFilter.for_config(cfg)
    # Unset: the newest validation under validation.output, and there is none yet.
    cfg = agreement_config(tmp_path, min_agreement=0.3)
    with pytest.raises(ConfigError, match="min_agreement is 0.3 but no finished validation"):
        AgreementFilter.for_config(cfg)


def test_the_quality_run_filters_with_its_own_ori_model_unless_one_is_named(tmp_path):
    from pipeline_lib.quality import filtered_by

    checkpoint = tmp_path / "step-000384" / "Ori" / "iter_1500.pth"
    off = agreement_config(tmp_path)
    assert filtered_by(off, checkpoint) is off
    on = filtered_by(agreement_config(tmp_path, min_agreement=0.5), checkpoint)
    assert on.generation.qa.agreement_model == checkpoint.absolute()
    named = agreement_config(tmp_path, min_agreement=0.5, agreement_model=str(tmp_path / "x.pth"))
    assert filtered_by(named, checkpoint).generation.qa.agreement_model == tmp_path / "x.pth"


@pytest.fixture(scope="module")
def ori_step(tmp_path_factory, one_torch_thread):
    """A finished validation step under <work>/validation/all that trained an Ori. row."""
    from test_validate import make_tiny_loveda, tiny_config

    from pipeline_lib.validate import run_validation

    base = tmp_path_factory.mktemp("agreement")
    ori = make_tiny_loveda(base / "ori", 2)
    step = base / "work" / "validation" / "all"
    report = run_validation({"Ori.": [ori]}, ori, tiny_config(), step, progress=False)
    return base, ori, report


@pytest.mark.slow
def test_the_ori_model_of_the_newest_validation_predicts_as_its_evaluation_does(ori_step):
    from test_validate import tiny_config

    from pipeline_lib.data.loveda import list_tiles, read_image, read_mask
    from pipeline_lib.generate.agreement import resolve_segmenter
    from pipeline_lib.validate.evaluate import score_checkpoint
    from pipeline_lib.validate.metrics import confusion_matrix

    base, ori, report = ori_step
    cfg = agreement_config(base / "work", min_agreement=0.5)
    segmenter = resolve_segmenter(cfg)
    assert str(segmenter.checkpoint) == report.rows[0].checkpoint
    assert segmenter.cfg == tiny_config()  # from the row's validation.json, not cfg's own
    named = agreement_config(base / "work", agreement_model=str(segmenter.checkpoint))
    assert resolve_segmenter(named) == segmenter

    # Predicted in memory, the Val tiles score exactly as evaluation scores their PNGs.
    tiles = list_tiles(ori, ["Val"])
    images = np.stack([read_image(t.image_path) for t in tiles])
    labels = [read_mask(t.mask_path) for t in tiles]
    predictions = AgreementFilter.for_config(cfg).predict(images)
    assert len(np.unique(predictions)) > 1  # the 2-iteration model already tells classes apart
    confusion = sum(
        confusion_matrix(p.astype(np.int64) - 1, np.where(m == 0, 255, m.astype(np.int64) - 1))
        for p, m in zip(predictions, labels, strict=True)
    )
    scores = score_checkpoint(segmenter.cfg, segmenter.checkpoint, base / "ori", base / "cache")
    np.testing.assert_array_equal(confusion, scores.confusion)


@pytest.mark.slow
def test_the_ori_model_rejects_every_pair_of_an_untrained_generator(ori_step):
    from pipeline_lib.generate import Generator
    from pipeline_lib.models.build import init_models

    base, _, report = ori_step
    models = init_models(base / "sd", "tiny")
    qa = {**KEEP_EVERY_LABEL, "min_agreement": 0.2}
    cfg = config_from_dict(generator_config(base / "work", models, name="agree", qa=qa))
    # Its labels are nearly all barren and its images noise, in which the Ori. model sees
    # forest: every pair contradicts its label.
    result = generate_and_commit_shard(cfg, Generator(cfg), 0)
    assert result.kept == 0 and result.reasons == {DISAGREEMENT: 12}
    recorded = read_shard_meta(cfg.store.path, 0)["config"]["agreement"]
    assert recorded == {"segmenter": report.rows[0].checkpoint, "rejected": list(range(12))}
