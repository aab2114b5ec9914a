"""Which module may import what (STYLE.md §1, §5, §10), checked in a fresh interpreter: what a
module loads is what every process importing it pays, and what its code can reach."""

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
SOURCES = sorted([*(ROOT / "shared" / "musedrp").rglob("*.py"), *(ROOT / "services").rglob("*.py")])
COMPUTE = ("musedrp.esorex", "musedrp.runner", "musedrp.stages", "musedrp.planner",
           "musedrp.frames", *(f"musedrp.services.{p.parent.name}.spec"
                               for p in sorted((ROOT / "services").glob("*/spec.py"))))


def loaded(*statements: str) -> set[str]:
    """Every module in ``sys.modules`` after running ``statements`` in a new interpreter."""
    code = "\n".join([*statements, "import json, sys", "print(json.dumps(sorted(sys.modules)))"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: S603
                         check=True, timeout=120).stdout
    return set(json.loads(out.splitlines()[-1]))


def packages(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def imported_anywhere(path: Path) -> set[str]:
    """Top-level packages ``path`` imports, at module level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_compute_and_spec_modules_load_neither_pika_nor_boto3():
    assert len(COMPUTE) > 5
    assert not {"pika", "boto3", "botocore"} & packages(loaded(*(f"import {m}" for m in COMPUTE)))


def test_only_the_broker_imports_pika():
    importers = [p.relative_to(ROOT) for p in SOURCES if "pika" in imported_anywhere(p)]
    assert importers == [Path("shared/musedrp/broker.py")]


def test_topology_loads_no_runner_and_no_matplotlib():
    """Every service and every command reads the topology; the runner (esorex, astropy) and
    matplotlib only a stage that computes."""
    modules = loaded("import musedrp.topology")
    assert not {"musedrp.runner", "musedrp.esorex", "matplotlib"} & modules
    assert "matplotlib" not in packages(loaded("from musedrp.cli import build_parser",
                                               "build_parser()"))
