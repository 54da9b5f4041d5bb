"""Validation reports: the research's IoU table (JSON, Markdown), bar chart, sample grid."""

from pipeline_lib.report.bar_chart import write_iou_bars
from pipeline_lib.report.iou_table import markdown_table, write_json, write_markdown
from pipeline_lib.report.sample_grid import sample_grid, write_sample_grid

__all__ = [
    "markdown_table",
    "sample_grid",
    "write_iou_bars",
    "write_json",
    "write_markdown",
    "write_sample_grid",
]
