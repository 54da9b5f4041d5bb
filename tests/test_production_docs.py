"""docs/operations.md stays true: the files, deployments and commands it names exist and run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from store_fakes import fake_shard

from pipeline_lib.store import commit_shard, create_or_open_store

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "operations.md"


def _text() -> str:
    return GUIDE.read_text()


def test_the_readme_links_the_guide():
    assert "(docs/operations.md)" in (ROOT / "README.md").read_text()


def test_every_repository_path_the_guide_names_exists():
    paths = set(re.findall(r"\b((?:docker|deployments|configs|tests|flows)/[\w.-]+)", _text()))
    assert "docker/compose.yaml" in paths
    assert [p for p in sorted(paths) if not (ROOT / p).exists()] == []


def test_the_deployments_the_guide_runs_are_in_prefect_yaml():
    deployments = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    entrypoints = {d["name"]: d["entrypoint"] for d in deployments["deployments"]}
    named = re.findall(r"prefect deployment run '([\w-]+)/([\w-]+)'", _text())
    assert len(named) >= 2
    for flow_name, deployment in named:
        assert deployment in entrypoints, f"{deployment} is not in deployments/prefect.yaml"
        source = (ROOT / entrypoints[deployment].split(":")[0]).read_text()
        assert f'@flow(name="{flow_name}")' in source, (flow_name, entrypoints[deployment])


def test_the_guides_sizing_command_measures_a_store(tmp_path):
    command = re.search(r'```bash\npython -c "\n(.*?)\n" (\S+)\n```', _text(), flags=re.S)
    assert command, "the sizing command is no longer a python -c block"
    store = create_or_open_store(tmp_path / "s.zarr", shard_size=4, height=16, width=16)
    commit_shard(store, fake_shard(0, 4))
    out = subprocess.run(
        [sys.executable, "-c", command.group(1), str(store.path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"4 samples 16x16: \d+ kB/sample, \d+\.\d\d GB per 1,000\n", out.stdout)
