"""Every third-party module the project imports is a dependency pyproject.toml declares,
so a fresh `pip install .` runs what the tests ran."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline_lib", "tasks", "flows", "deployments", "lfactory")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*groups: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for group in groups:
        specs += project["optional-dependencies"][group]
    return {_normalise(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in specs}


def _third_party_imports(folders: list[Path]) -> dict[str, str]:
    """Top-level module -> first file importing it (imports inside functions included)."""
    # bench/ is the repository's own folder of scripts, run from the checkout.
    own = set(PACKAGES) | {"bench"} | {p.stem for p in (ROOT / "tests").glob("*.py")}
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in own:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _undeclared(folders: list[Path], declared: set[str]) -> list[str]:
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, path in sorted(_third_party_imports(folders).items()):
        names = {_normalise(d) for d in distributions.get(module, [])}
        if not names & declared:
            missing.append(f"{path} imports {module} ({', '.join(names) or 'not installed'})")
    return missing


def test_every_third_party_import_of_the_packages_is_a_declared_dependency():
    assert _undeclared([ROOT / p for p in PACKAGES], _declared()) == []


def test_every_third_party_import_of_the_tests_is_declared_or_a_dev_extra():
    assert _undeclared([ROOT / "tests"], _declared("dev")) == []
