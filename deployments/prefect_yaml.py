"""Write ``deployments/prefect.yaml`` from a config file, so that the production
deployments carry that file's settings verbatim and never a hand-kept copy:

    python -m deployments.prefect_yaml configs/sd15-loveda.yaml > deployments/prefect.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

import prefect
import yaml

from deployments.specs import deployment_specs
from pipeline_lib.config import config_from_dict

WORK_POOL = "gpu-pool"
WORKING_DIRECTORY = "/opt/label-freedom"

HEADER = """\
# GENERATED from {source} by `python -m deployments.prefect_yaml {source}`:
# edit the config, then regenerate (a test fails while the two differ).
#
# Deployments for a production Prefect server and a GPU work pool:
#   prefect work-pool create {pool} --type process      (or docker / kubernetes)
#   prefect concurrency-limit create gpu 1                  (one GPU task at a time per GPU)
#   prefect deploy --all --prefect-file deployments/prefect.yaml
# Workers run the docker/ image (`prefect worker start --pool {pool}`), with models under
# /models and data under /data. `lfactory serve CONFIG` builds the same deployments straight
# from a config file, without a work pool.
"""


def render(config_path: str | Path, source: str | None = None) -> str:
    """The text of prefect.yaml for ``config_path``; ``source`` names it in the header
    (default: the path as given, best relative to the repository)."""
    source = source or str(config_path)
    raw = yaml.safe_load(Path(config_path).read_text())
    config = config_from_dict(raw, source=source)
    deployments = []
    for spec in deployment_specs(config, raw):
        item = {
            "name": spec.name,
            "entrypoint": spec.entrypoint,
            "description": spec.description,
        }
        if spec.cron:
            item["schedules"] = [{"cron": spec.cron, "timezone": spec.timezone}]
        item["parameters"] = spec.parameters
        item["tags"] = list(spec.tags)
        item["work_pool"] = {"name": WORK_POOL}
        deployments.append(item)
    document = {
        "name": "label-freedom",
        "prefect-version": prefect.__version__,
        "pull": [
            {"prefect.deployments.steps.set_working_directory": {"directory": WORKING_DIRECTORY}}
        ],
        "deployments": deployments,
    }
    body = yaml.safe_dump(document, sort_keys=False, width=100, allow_unicode=True)
    return HEADER.format(source=source, pool=WORK_POOL) + "\n" + body


if __name__ == "__main__":
    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else "configs/sd15-loveda.yaml"))
