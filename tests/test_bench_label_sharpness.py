"""bench.label_sharpness: the code scores, and one row per timestep on a tiny label model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from factory_configs import trained_label_model_config

from pipeline_lib.data.classes import LABEL_COLOURS
from pipeline_lib.data.palette import colourise
from pipeline_lib.train.objective import soft_edges

# bench/ sits beside the package, not in it: import it from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import label_sharpness  # noqa: E402

COLOURS = LABEL_COLOURS["balanced-bits"]
CODE = torch.from_numpy(COLOURS.astype(np.float32) / 127.5 - 1)
TOLERANCE = 24 / 127.5


def pixels(mask: np.ndarray) -> torch.Tensor:
    rgb = colourise(mask, COLOURS).astype(np.float32) / 127.5 - 1
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def test_a_sharp_label_is_on_the_code_and_a_blurred_edge_is_off_it():
    mask = np.full((8, 8), 1, np.uint8)
    mask[:, 4:] = 7  # one vertical edge between background and agriculture
    sharp = pixels(mask)
    assert label_sharpness.code_scores(sharp, sharp, CODE, TOLERANCE) == (0.0, 0.0)
    off, wrong = label_sharpness.code_scores(soft_edges(sharp), sharp, CODE, TOLERANCE)
    # The two columns beside the edge are soft; the sides keep their colours.
    assert off == pytest.approx(2 / 8) and wrong < off


def test_a_flipped_pixel_is_wrong_but_on_the_code():
    mask = np.full((4, 4), 1, np.uint8)
    truth = pixels(mask)
    mask[0, 0] = 7
    assert label_sharpness.code_scores(pixels(mask), truth, CODE, TOLERANCE) == (0.0, 1 / 16)


@pytest.mark.slow
def test_one_row_of_estimate_scores_per_timestep(tmp_path, one_torch_thread, capsys):
    config = trained_label_model_config(tmp_path, "balanced-bits")
    out = tmp_path / "label_sharpness.json"
    label_sharpness.main([str(config), "--crops", "3", "--threads", "1", "--out", str(out)])
    payload = json.loads(out.read_text())
    rows = payload["results"]["rows"]
    assert [r["timestep"] for r in rows] == list(label_sharpness.TIMESTEPS)
    sigmas = [r["noise_sigma"] for r in rows]
    assert sigmas == sorted(sigmas) and 0 < sigmas[0] < sigmas[-1] < 1
    for row in rows:
        for key in ("sharp_estimate_off", "sharp_estimate_wrong", "blurred_estimate_off"):
            assert 0 <= row[key] <= 1
    assert payload["parameters"]["crops"] == 3 and payload["parameters"]["crop_size"] == 32
    assert 0 < payload["results"]["blurred_input_off"] < 1
    assert "sharp_estimate_off" in capsys.readouterr().out
