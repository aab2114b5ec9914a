"""Alert rules and the dashboard: promtool's own checks and unit tests, and every musedrp
metric they query is one the code exports (and every exported one is shown somewhere)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from musedrp import metrics

MONITORING = Path(__file__).parents[2] / "k8s" / "monitoring"
RULES = MONITORING / "musedrp.rules.yml"
DASHBOARD = MONITORING / "musedrp-dashboard.json"
NAME = re.compile(r"(?<![\w:])(musedrp_[a-z_]+)")
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def exported() -> dict[str, str]:
    """Sample name -> metric family name, for every metric in musedrp.metrics."""
    out = {}
    for m in vars(metrics).values():
        if isinstance(m, MetricWrapperBase):
            for suffix in SUFFIXES[m._type]:
                out[m._name + suffix] = m._name
    return out


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def rule_exprs() -> list[str]:
    return re.findall(r"expr: (.+(?:\n {10,}.+)*)", RULES.read_text())


def promtool(*args: str) -> str:
    if shutil.which("promtool") is None:
        pytest.fail("promtool not found: run `make setup` (Debian package prometheus)")
    proc = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=MONITORING,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_rules_are_valid():
    assert "SUCCESS" in promtool("check", "rules", RULES.name)


def test_every_alert_has_a_passing_unit_test():
    tests = sorted(p.name for p in MONITORING.glob("*.test.yml"))
    out = promtool("test", "rules", *tests)
    assert out.count("SUCCESS") == len(tests)
    alerts = set(re.findall(r"- alert: (\w+)", RULES.read_text()))
    tested = {a for t in tests for a in re.findall(r"alertname: (\w+)",
                                                    (MONITORING / t).read_text())}
    assert alerts == tested


def test_queries_use_only_exported_metrics_and_show_all_of_them():
    names = exported()
    used = {n for expr in [*dashboard_exprs(), *rule_exprs()] for n in NAME.findall(expr)}
    assert used - set(names) == set(), "queried but not exported"
    assert set(names.values()) - {names[n] for n in used} == set(), "exported but never shown"


def test_dashboard_is_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"]
    for p in dash["panels"]:
        assert p["title"] and p["targets"] and {"x", "y", "w", "h"} <= set(p["gridPos"])
        assert all(t["expr"].strip() and t["refId"] for t in p["targets"])
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource"]
