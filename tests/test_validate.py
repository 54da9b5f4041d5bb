"""Validation backend: mmcv stand-in, metric cross-check, tiny training, report, resume."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_lib.config import ValidationConfig
from pipeline_lib.data.classes import IGNORE_INDEX, NUM_CLASSES, PALETTE
from pipeline_lib.data.loveda import write_tile
from pipeline_lib.errors import BackendUnavailableError, CheckpointError
from pipeline_lib.validate import metrics
from pipeline_lib.validate.mmcv_compat import ensure_mmseg, trust_checkpoint_dir

TILE = 64


def make_tiny_loveda(root: Path, seed: int, train: int = 6, val: int = 4) -> Path:
    """Blocky masks of values 1..7 with a no-data band; images are the class colour + noise."""
    rng = np.random.default_rng(seed)
    for split, count in (("Train", train), ("Val", val)):
        for i in range(count):
            blocks = rng.integers(1, 8, (4, 4))
            mask = np.kron(blocks, np.ones((TILE // 4, TILE // 4), np.int64)).astype(np.uint8)
            mask[: TILE // 8] = 0
            noise = rng.integers(-20, 21, (TILE, TILE, 3))
            image = np.clip(PALETTE[mask].astype(np.int64) + noise, 0, 255).astype(np.uint8)
            write_tile(root, split, ("Urban", "Rural")[i % 2], str(i), image, mask)
    return root


def tiny_config(**changes) -> ValidationConfig:
    values = dict(
        model="mask2former-cpu",
        iters=2,
        batch_size=2,
        crop_size=32,
        val_interval=1000,
        checkpoint_interval=2,
        seed=0,
    )
    return ValidationConfig(**(values | changes))


# --- metrics -------------------------------------------------------------------------------


def _iou_metric_per_class(preds: list[np.ndarray], gts: list[np.ndarray]):
    ensure_mmseg()
    from mmseg.evaluation import IoUMetric

    metric = IoUMetric(iou_metrics=["mIoU"], ignore_index=IGNORE_INDEX)
    metric.dataset_meta = {"classes": [str(i) for i in range(NUM_CLASSES)]}
    for pred, gt in zip(preds, gts, strict=True):
        sample = {
            "pred_sem_seg": {"data": torch.from_numpy(pred)[None]},
            "gt_sem_seg": {"data": torch.from_numpy(gt)[None]},
        }
        metric.process({}, [sample])
    areas = [torch.stack([r[i] for r in metric.results]).sum(0) for i in range(4)]
    iou = IoUMetric.total_area_to_metrics(*areas, metrics=["mIoU"], nan_to_num=None)["IoU"]
    return np.asarray(iou, np.float64), metric.compute_metrics(metric.results)["mIoU"]


def test_numpy_iou_agrees_with_mmseg_iou_metric_with_ignored_pixels_and_an_absent_class():
    rng = np.random.default_rng(0)
    present = [c for c in range(NUM_CLASSES) if c != 4]
    preds, gts = [], []
    for _ in range(3):
        gt = rng.choice(present, size=(40, 50)).astype(np.int64)
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.choice(present, size=gt.shape))
        gt[rng.random(gt.shape) < 0.15] = IGNORE_INDEX
        preds.append(pred)
        gts.append(gt)
    confusion = sum(metrics.confusion_matrix(p, g) for p, g in zip(preds, gts, strict=True))
    ours = metrics.iou_per_class(confusion)
    theirs, mmseg_miou = _iou_metric_per_class(preds, gts)

    metrics.check_agreement(ours, theirs)
    assert np.isnan(ours[4]) and np.isfinite(np.delete(ours, 4)).all()
    assert confusion.sum() == sum(int((g != IGNORE_INDEX).sum()) for g in gts)
    assert metrics.mean_iou(ours) == pytest.approx(np.nanmean(theirs), abs=1e-6)
    assert round(metrics.mean_iou(ours) * 100, 2) == pytest.approx(mmseg_miou, abs=1e-9)


def test_metric_mismatch_is_an_error_naming_both_values():
    with pytest.raises(metrics.MetricMismatchError, match="mmseg IoUMetric"):
        metrics.check_agreement(np.array([0.5, np.nan]), np.array([0.5, 0.1]))
    with pytest.raises(metrics.MetricMismatchError):
        metrics.check_agreement(np.array([0.5, 0.2]), np.array([0.5, 0.2 + 1e-5]))


# --- mmcv compatibility ----------------------------------------------------------------------


def test_mmcv_compiled_op_raises_backend_unavailable_with_what_to_do():
    ensure_mmseg()
    ext = sys.modules["mmcv._ext"]
    ensure_mmseg()  # idempotent: the same stand-in stays installed
    assert sys.modules["mmcv._ext"] is ext
    assert ext.__spec__ is not None and ext.__spec__.name == "mmcv._ext"
    import mmcv._ext

    with pytest.raises(BackendUnavailableError, match="mmcv op nms is compiled-only") as error:
        mmcv._ext.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    assert isinstance(error.value, NotImplementedError)
    assert "mmcv-lite" in str(error.value)


def test_mmcv_stand_in_hides_dunder_attributes():
    ensure_mmseg()
    ext = sys.modules["mmcv._ext"]
    with pytest.raises(AttributeError):
        _ = ext.__file__
    assert not hasattr(ext, "__path__")


def test_deformable_attention_never_takes_the_compiled_path():
    ensure_mmseg()
    from mmcv.ops import MultiScaleDeformableAttention, multi_scale_deform_attn

    assert multi_scale_deform_attn.IS_CUDA_AVAILABLE is False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    attn = MultiScaleDeformableAttention(
        embed_dims=32, num_heads=4, num_levels=1, num_points=2, batch_first=True
    ).to(device)
    value = torch.randn(1, 16, 32, device=device)
    out = attn(
        value,
        value=value,
        reference_points=torch.rand(1, 16, 1, 2, device=device),
        spatial_shapes=torch.tensor([[4, 4]], device=device),
        level_start_index=torch.tensor([0], device=device),
    )
    assert out.shape == (1, 16, 32)


def test_pickled_checkpoint_outside_a_trusted_work_dir_is_refused(tmp_path: Path):
    ensure_mmseg()
    from mmengine.runner.checkpoint import CheckpointLoader

    path = tmp_path / "full.pth"
    torch.save({"meta": {"where": Path("/x")}, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a plain weights file"):
        CheckpointLoader.load_checkpoint(str(path))
    trust_checkpoint_dir(tmp_path)
    assert CheckpointLoader.load_checkpoint(str(path))["meta"]["where"] == Path("/x")


# --- training, report and resume -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """Two iterations on Gen.+Ori. (two concatenated sources), evaluated and reported."""
    from pipeline_lib.validate import run_validation

    base = tmp_path_factory.mktemp("validate")
    gen, ori = make_tiny_loveda(base / "gen", 1), make_tiny_loveda(base / "ori", 2)
    report = run_validation(
        {"Gen.+Ori.": [gen, ori]}, ori, tiny_config(), base / "out", progress=False
    )
    return base, report


@pytest.mark.slow
def test_two_iteration_training_writes_a_well_formed_report(trained):
    base, report = trained
    out = base / "out"
    data = json.loads((out / "report.json").read_text())
    assert data["eval_split"] == "Val" and data["eval_root"] == str((base / "ori").resolve())
    assert data["eval_samples"] == 4
    assert data["columns"] == [
        "background",
        "building",
        "road",
        "water",
        "barren",
        "forest",
        "agriculture",
        "mIoU",
    ]
    row = data["rows"][0]
    assert row["data_name"] == "Gen.+Ori." and row["train_samples"] == 12 and row["iters"] == 2
    assert set(row["iou"]) == set(data["classes"])
    assert all(v is None or 0.0 <= v <= 1.0 for v in row["iou"].values())
    assert Path(row["checkpoint"]).is_file()
    markdown = (out / "report.md").read_text()
    assert (
        "| data | background | building | road | water | barren | forest | agriculture | mIoU |"
        in markdown
    )
    assert "| Gen.+Ori. |" in markdown and "**Val** split" in markdown
    assert (out / "iou_bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(row["work_dir"]).name.startswith("gen-ori-")
    assert (Path(row["work_dir"]) / "result.json").is_file()


@pytest.mark.slow
def test_rerun_with_the_same_budget_reuses_the_trained_model(trained):
    from pipeline_lib.validate import run_data_name

    base, report = trained
    first = report.rows[0]
    checkpoint_time = Path(first.checkpoint).stat().st_mtime_ns
    again = run_data_name(
        "Gen.+Ori.",
        [base / "gen", base / "ori"],
        base / "ori",
        tiny_config(),
        base / "out",
        progress=False,
    )
    assert again.work_dir == first.work_dir and again.iters == 2
    assert Path(first.checkpoint).stat().st_mtime_ns == checkpoint_time  # not retrained
    assert again.iou == pytest.approx(first.iou, nan_ok=True)
    assert again.seconds_per_iter == first.seconds_per_iter


@pytest.mark.slow
def test_repeats_train_one_model_per_seed_and_report_their_mean(trained):
    from pipeline_lib.validate import assemble_report, run_data_name

    base, report = trained
    first = report.rows[0]
    checkpoint_time = Path(first.checkpoint).stat().st_mtime_ns
    sources = [base / "gen", base / "ori"]
    mean = run_data_name(
        "Gen.+Ori.", sources, base / "ori", tiny_config(repeats=2), base / "out", progress=False
    )
    second = run_data_name(
        "Gen.+Ori.", sources, base / "ori", tiny_config(seed=1), base / "out", progress=False
    )

    assert Path(first.checkpoint).stat().st_mtime_ns == checkpoint_time  # seed 0 reused
    assert second.work_dir != first.work_dir  # seed 1 trained in its own folder
    assert mean.seed_miou == pytest.approx((first.miou, second.miou))
    assert mean.miou == pytest.approx((first.miou + second.miou) / 2)
    assert mean.pixel_accuracy == pytest.approx((first.pixel_accuracy + second.pixel_accuracy) / 2)
    assert mean.train_seconds == pytest.approx(first.train_seconds + second.train_seconds)
    assert mean.checkpoint == first.checkpoint and mean.seed == 0
    out = base / "repeats"
    assemble_report([mean], out)
    row = json.loads((out / "report.json").read_text())["rows"][0]
    assert row["seed_miou"] == pytest.approx([first.miou, second.miou])
    assert (
        "mean of 2 segmenters trained on the same data (seeds 0, 1)"
        in (out / "report.md").read_text()
    )


def test_one_repeat_leaves_saved_configs_and_cache_keys_as_they_were():
    from pipeline_lib.validate.experiment import training_key

    assert "repeats" not in tiny_config().model_dump()
    assert tiny_config(repeats=3).model_dump()["repeats"] == 3
    # The seed, not the repeat count, tells one seed's model folder from another's.
    assert training_key([], tiny_config(repeats=3)) == training_key([], tiny_config())
    assert training_key([], tiny_config(seed=1)) != training_key([], tiny_config())


@pytest.mark.slow
def test_resume_continues_the_iteration_count_with_the_saved_weights(trained, tmp_path: Path):
    from mmengine.hooks import Hook

    from pipeline_lib.validate import mmseg_data, runner

    base, report = trained
    work = tmp_path / "run"
    shutil.copytree(report.rows[0].work_dir, work)
    (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    saved = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=False)["state_dict"]

    class Probe(Hook):
        def before_train(self, mm_runner) -> None:
            self.iter = mm_runner.iter
            self.lr = mm_runner.optim_wrapper.optimizer.param_groups[0]["lr"]
            state = mm_runner.model.state_dict()
            self.same = all(torch.equal(state[k], v) for k, v in saved.items())

    roots = [
        mmseg_data.prepare_split(base / name, mmseg_data.TRAIN, base / "out" / "data-cache")
        for name in ("gen", "ori")
    ]
    eval_root = mmseg_data.prepare_split(base / "ori", mmseg_data.VAL, base / "out" / "data-cache")
    config = runner.runner_config(roots, eval_root, tiny_config(iters=3), work, progress=False)
    mm_runner = runner.build_runner(config, "resume-test")
    probe = Probe()
    mm_runner.register_hook(probe)
    iters_done, _ = runner.train(mm_runner)

    assert probe.iter == 2 and probe.same
    # The poly schedule is stretched to the new end instead of staying at the old final 0.
    assert probe.lr == pytest.approx(1e-4 * (1 - 2 / 3) ** 0.9, rel=1e-6)
    assert iters_done == 1 and mm_runner.iter == 3
    assert (work / "iter_3.pth").is_file()


@pytest.mark.slow
def test_a_two_ratio_sweep_writes_one_row_per_ratio_and_names_the_best(
    tmp_path: Path, one_torch_thread
):
    from store_fakes import fake_shard

    from pipeline_lib.config import FactoryConfig
    from pipeline_lib.store import commit_shard, create_or_open_store
    from pipeline_lib.validate import run_validation, train_sources

    # Ori.: 2 Train tiles of 64 x 56 labelled pixels = 1.75 samples of 64 px at ratio 1.
    ori = make_tiny_loveda(tmp_path / "ori", 2, train=2, val=2)
    store = create_or_open_store(tmp_path / "store.zarr", shard_size=4, height=TILE, width=TILE)
    commit_shard(store, fake_shard(0, 3, size=TILE))
    cfg = FactoryConfig(
        work_dir=tmp_path / "w",
        data={"root": ori},
        generation={"resolution": TILE},
        store={"path": tmp_path / "store.zarr"},
        validation=tiny_config(mix_ratios=[1, 0.5]),
    )
    report = run_validation(
        train_sources([], cfg), ori, cfg.validation, tmp_path / "out", progress=False
    )

    assert [r.data_name for r in report.rows] == ["Gen.+Ori. x0.5", "Gen.+Ori. x1"]
    assert [r.train_samples for r in report.rows] == [1 + 2, 2 + 2]
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    best = max(report.rows, key=lambda r: r.miou)
    assert data["best_mix_ratio"] == {"Gen.+Ori. x0.5": 0.5, "Gen.+Ori. x1": 1}[best.data_name]
    assert (
        f"Best ratio: **{data['best_mix_ratio']:g}**"
        in (tmp_path / "out" / "report.md").read_text()
    )
    assert (tmp_path / "out" / "mix_miou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_key_changes_with_the_data_but_not_with_the_iteration_budget(tmp_path: Path):
    from pipeline_lib.validate.experiment import training_key

    data = make_tiny_loveda(tmp_path / "d", 3, train=2, val=1)
    key = training_key([data], tiny_config())
    assert training_key([data], tiny_config(iters=50, val_interval=5)) == key
    assert training_key([data], tiny_config(lr=1e-3)) != key
    write_tile(
        data,
        "Train",
        "Urban",
        "99",
        np.zeros((TILE, TILE, 3), np.uint8),
        np.ones((TILE, TILE), np.uint8),
    )
    assert training_key([data], tiny_config()) != key


def test_cli_validate_gen_without_a_store_says_to_generate_first(tmp_path: Path):
    import subprocess

    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {"work_dir": str(tmp_path / "w"), "data": {"synth": {"tiles": 2, "size": 32}}}
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "lfactory", "validate", str(config), "--data", "gen"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "no generated store yet" in run.stderr and "--data ori" in run.stderr


def test_a_mixed_set_draws_crops_in_proportion_to_each_sources_pixels(tmp_path: Path):
    """384 small generated samples beside 24 large real tiles must not outdraw them 16:1."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    from pipeline_lib.validate import mmseg_data

    ensure_mmseg()
    init_default_scope("mmseg")
    large = make_tiny_loveda(tmp_path / "large", 1, train=2, val=1)  # 64 px tiles
    small = tmp_path / "small"
    for i in range(8):  # 32 px tiles: together as many pixels as the two large ones
        write_tile(
            small,
            "Train",
            "Urban",
            str(i),
            np.zeros((TILE // 2, TILE // 2, 3), np.uint8),
            np.ones((TILE // 2, TILE // 2), np.uint8),
        )
    roots = [mmseg_data.prepare_split(r, "Train", tmp_path / "cache") for r in (small, large)]
    assert mmseg_data.pixel_repeats(roots) == [1, 4]

    def draws(mix_by: str) -> tuple[int, int]:
        loader = mmseg_data.train_dataloader(roots, 32, 2, mix_by=mix_by)
        dataset = DATASETS.build(loader["dataset"])
        from_large = sum(
            "large" in dataset.get_data_info(i)["img_path"] for i in range(len(dataset))
        )
        return len(dataset) - from_large, from_large

    assert draws("pixels") == (8, 8)
    assert draws("samples") == (8, 2)
    # The mixing rule is part of a mixed model's identity, not of a one-source model's.
    from pipeline_lib.validate.experiment import training_key

    assert training_key([small, large], tiny_config()) != training_key(
        [small, large], tiny_config(mix_by="samples")
    )
    assert training_key([large], tiny_config()) == training_key(
        [large], tiny_config(mix_by="samples")
    )


def test_mosaic_draws_small_samples_four_at_a_time_and_leaves_large_tiles_alone(tmp_path: Path):
    """Generated 64 px samples at crop 64 would be cropped at one offset only; a 2x2 mosaic
    of them is a canvas with no padding, a quarter of it from each of four samples."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    from pipeline_lib.validate import mmseg_data
    from pipeline_lib.validate.mosaic import sample_mosaic

    ensure_mmseg()
    init_default_scope("mmseg")
    small = tmp_path / "small"
    side = TILE // 2
    for value in range(1, 8):  # one class per sample: a quadrant shows whose it is
        write_tile(
            small,
            "Train",
            "Urban",
            str(value),
            np.zeros((side, side, 3), np.uint8),
            np.full((side, side), value, np.uint8),
        )
    large = make_tiny_loveda(tmp_path / "large", 1, train=2, val=1)  # tiles of twice the crop
    roots = [mmseg_data.prepare_split(r, "Train", tmp_path / "cache") for r in (small, large)]

    loader = mmseg_data.train_dataloader(
        roots, side, 2, scale_factors=[0.75, 1.0], mix_by="samples", mosaic=True
    )
    mixed, plain = loader["dataset"]["datasets"]
    assert mixed["type"] == "MultiImageMixDataset" and plain["type"] == "LoveDADataset"
    first = DATASETS.build(loader["dataset"])[0]  # the whole pipeline runs on a mosaic
    assert tuple(first["inputs"].shape[-2:]) == (side, side)
    mosaics = DATASETS.build(
        dict(
            type="MultiImageMixDataset",
            dataset=mixed["dataset"],
            pipeline=[dict(type=sample_mosaic(), img_scale=(side, side))],
        )
    )
    for index in range(len(mosaics)):
        seg = mosaics[index]["gt_seg_map"]
        assert seg.shape == (2 * side, 2 * side) and IGNORE_INDEX not in seg
        quadrants = [seg[y : y + side, x : x + side] for y in (0, side) for x in (0, side)]
        assert all(len(np.unique(q)) == 1 for q in quadrants)
        assert quadrants[0][0, 0] == mosaics.dataset[index]["gt_seg_map"][0, 0]
    assert mmseg_data.mosaic_applies(roots, side) and not mmseg_data.mosaic_applies(roots[1:], side)
    from pipeline_lib.validate.experiment import training_key

    assert training_key([], tiny_config(mosaic=True)) != training_key([], tiny_config())
