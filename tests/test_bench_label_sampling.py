"""bench.label_sampling on a tiny trained label model: one scored row per sampler setting."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from factory_configs import trained_label_model_config

from pipeline_lib.data.classes import CLASS_NAMES

# bench/ sits beside the package, not in it: import it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import label_sampling  # noqa: E402


@pytest.mark.slow
def test_each_sampler_setting_gets_one_row_of_label_fidelity(tmp_path, one_torch_thread, capsys):
    config = trained_label_model_config(tmp_path, "bits", label_scheduler="ddpm")
    out = tmp_path / "label_sampling.json"
    settings = ["--samples", "2", "--steps", "1", "2", "--guidance", "1", "--threads", "1"]
    shifts = ["--time-shifts", "0", "10", "--shift-below", "500", "1000"]
    label_sampling.main([str(config), *settings, *shifts, "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    rows = results["rows"]
    # A shift of 0 is one row, whatever the thresholds: it draws the same labels under each.
    keys = ("label_steps", "label_time_shift", "label_time_shift_below")
    assert [tuple(r[k] for k in keys) for r in rows] == [
        (steps, shift, below)
        for steps in (1, 2)
        for shift, below in ((0, 1000), (10, 500), (10, 1000))
    ]
    for row in rows:
        assert 0 <= row["off_palette_mean"] <= row["off_palette_p95"] <= 1
        assert 0 <= row["class_fraction_tv"] <= 1 and row["labels_per_s"] > 0
    # Each setting's drawn class shares beside Train's; a model told no mix has no asked one.
    assert list(results["train_shares"]) == list(CLASS_NAMES)
    assert len(results["class_shares"]) == len(rows)
    for shares in results["class_shares"]:
        assert list(shares) == ["drawn"] and list(shares["drawn"]) == list(CLASS_NAMES)
        assert sum(shares["drawn"].values()) == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "off_palette_mean" in printed and "class shares" in printed
