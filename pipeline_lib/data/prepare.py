"""Make the Original data set ready: synthesise it when configured and missing, then check it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline_lib.config import DataConfig
from pipeline_lib.data.loveda import check_dataset, check_layout, fingerprint
from pipeline_lib.data.synth import make_synthetic_loveda


@dataclass(frozen=True)
class DatasetSummary:
    root: Path
    tiles: int
    fingerprint: str
    class_fractions: dict[str, float]


def prepare_dataset(data: DataConfig, progress: bool = False) -> DatasetSummary:
    """Synthesise ``data.root`` if it is absent and ``data.synth`` is set; check it either way."""
    root = Path(data.root)
    if data.synth is not None and not root.exists():
        make_synthetic_loveda(
            root, data.synth.tiles, data.synth.size, data.synth.seed, progress=progress
        )
    report = check_dataset(root, progress=progress)
    if data.eval_root is not None and Path(data.eval_root) != root:
        check_dataset(data.eval_root, progress=progress)
    return DatasetSummary(root, report.total_tiles, fingerprint(root), report.class_fractions())


def check_data_paths(data: DataConfig) -> None:
    """Fail in a second when the data folders cannot be a data set at all, before a
    factory run starts a server and its tasks (``prepare_dataset`` then checks each tile).
    """
    root = Path(data.root)
    if data.synth is None or root.exists():
        check_layout(root)
    if data.eval_root is not None and Path(data.eval_root) != root:
        check_layout(data.eval_root)
