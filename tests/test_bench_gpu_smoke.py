"""bench/gpu_generation.py runs end to end on CPU (--smoke) and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# bench/ sits beside the package, not in it: import it from the checkout.
sys.path.insert(0, str(ROOT))

from bench.gpu_generation import RESULT_KEYS  # noqa: E402

pytestmark = pytest.mark.slow


def test_smoke_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_generation.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "bench.gpu_generation", "--smoke", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    payload = json.loads(out.read_text())
    assert {"benchmark", "machine", "parameters", "results"} <= set(payload)
    results = payload["results"]
    assert set(RESULT_KEYS) <= set(results)
    assert payload["parameters"]["preset"] == "tiny" and payload["parameters"]["smoke"]
    assert results["flops_per_pair"] > 0 and results["peak_bf16_tflops"] > 0
    assert set(results["factory"]) == {"2"}
    for figures in (results["naive"], results["factory"]["2"]):
        assert figures["pairs_per_s"] > 0 and figures["tflops"] > 0
    assert results["best"]["batch_size"] == 2
    assert results["generation_vs_naive"] == results["factory"]["2"]["vs_naive"]
