"""Mixing ratios: Gen.+Ori. trained on every Ori. tile plus a ratio's worth of generated samples.

A ratio counts pixels, as the quality run sizes Gen.: ratio r adds the store's first
``ceil(r x Ori. labelled pixels / generation.resolution**2)`` committed samples. Where the
generated samples and the Ori. tiles are the same size, r is generated samples per original.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path

from pipeline_lib.choices import DATA_LABELS
from pipeline_lib.config import FactoryConfig
from pipeline_lib.data.loveda import split_stats
from pipeline_lib.errors import DataError
from pipeline_lib.report.results import MixSweep, ValidationResult

log = logging.getLogger(__name__)


def mix_name(ratio: float) -> str:
    """The report row of one ratio: 0.5 -> 'Gen.+Ori. x0.5'."""
    return f"{DATA_LABELS['both']} x{ratio:g}"


def mix_samples(ratio: float, ori_pixels: int, resolution: int) -> int:
    """Generated samples of ``resolution`` px that hold ``ratio`` x ``ori_pixels`` pixels,
    rounded up (ratio 1 is the quality run's Gen. size)."""
    # Exact arithmetic: 0.1 x 30 pixels is 3, where floats give 3.0000000000000004 -> 4.
    return math.ceil(Fraction(str(ratio)) * ori_pixels / resolution**2)


def mix_sources(
    ratios: Iterable[float],
    cfg: FactoryConfig,
    available: int,
    export: Callable[[int], Path],
) -> dict[str, list[Path]]:
    """Each ratio's row name -> [its generated folder, Ori.], in ascending ratio.

    ``available`` is how many committed samples this round may use; a ratio that needs
    more is left out with a warning (the report lists it as skipped). ``export(n)``
    returns the folder of the store's first ``n`` samples.
    """
    ratios = sorted(ratios)
    if not ratios:
        return {}
    original = Path(cfg.data.root)
    pixels = split_stats(original, "Train").pixels
    if pixels == 0:
        raise DataError(
            f"{original}: no labelled Train pixels, so no mixing ratio can be sized; "
            "check data.root or empty validation.mix_ratios"
        )
    sources = {}
    for ratio in ratios:
        count = mix_samples(ratio, pixels, cfg.generation.resolution)
        if count > available:
            log.warning(
                "mixing ratio %g needs %d generated samples and this round has %d; "
                "left out (raise quota.samples to at least %d to sweep it)",
                ratio,
                count,
                available,
                count,
            )
            continue
        log.info("mixing ratio %g: %d generated samples with %s", ratio, count, original)
        sources[mix_name(ratio)] = [export(count), original]
    return sources


def mix_sweep(results: Sequence[ValidationResult], ratios: Iterable[float]) -> MixSweep | None:
    """The sweep over the configured ``ratios`` from the report's rows (None without one)."""
    ratios = sorted(ratios)
    if not ratios:
        return None
    by_name = {r.data_name: r for r in results}
    trained = [r for r in ratios if mix_name(r) in by_name]
    return MixSweep(
        ratios=tuple(trained),
        rows=tuple(mix_name(r) for r in trained),
        miou=tuple(by_name[mix_name(r)].miou for r in trained),
        skipped=tuple(r for r in ratios if mix_name(r) not in by_name),
    )
