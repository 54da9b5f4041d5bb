"""Validation: train Mask2Former (mmsegmentation) on Gen./Ori./Gen.+Ori. data and score it.

Importing this package does not import mmseg; ``ensure_mmseg()`` prepares it on first use.
"""

from pipeline_lib.report.results import ValidationReport, ValidationResult
from pipeline_lib.validate.experiment import assemble_report, run_data_name, run_validation
from pipeline_lib.validate.mmcv_compat import ensure_mmseg
from pipeline_lib.validate.sources import DATA_LABELS, train_sources

__all__ = [
    "DATA_LABELS",
    "ValidationReport",
    "ValidationResult",
    "assemble_report",
    "ensure_mmseg",
    "run_data_name",
    "run_validation",
    "train_sources",
]
