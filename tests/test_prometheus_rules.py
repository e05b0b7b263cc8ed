"""The repo's Prometheus rules and Alertmanager routing, checked with the real promtool and amtool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alerting.stack import ALERTMANAGER_CONFIG, PROMETHEUS_CONFIG, RULE_TESTS_DIR, RULES_DIR

pytestmark = pytest.mark.integration


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not installed: run scripts/setup.sh (Debian: prometheus, prometheus-alertmanager)"
        )
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def test_prometheus_config_and_rules_are_valid() -> None:
    result = run(tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    tests = sorted(str(p) for p in RULE_TESTS_DIR.glob("*.yml"))
    assert len(tests) == 2
    result = run(tool("promtool"), "test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_unit_test_that_expects_it_to_fire() -> None:
    rules = {
        rule["alert"]
        for path in RULES_DIR.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    fired = {
        case["alertname"]
        for path in RULE_TESTS_DIR.glob("*.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert rules - fired == set()


def test_rule_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against a rule with a looser threshold do."""
    shutil.copytree(RULES_DIR, tmp_path / "rules")
    shutil.copytree(RULE_TESTS_DIR, tmp_path / "tests")
    kpi = tmp_path / "rules" / "kpi.yml"
    text = kpi.read_text()
    assert "(2 * max by (mission, stage) (backbone_stage_sla_seconds))" in text
    kpi.write_text(text.replace("(2 * max by", "(3 * max by"))
    result = run(tool("promtool"), "test", "rules", str(tmp_path / "tests" / "kpi_test.yml"))
    assert result.returncode != 0
    assert "BacklogOldestWaitOverSla" in result.stdout + result.stderr


def test_alertmanager_config_is_valid() -> None:
    result = run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 inhibit rules" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        # Each owner agency's desk; critical also to the command centre and the duty officer's receiver.
        ({"alertname": "CaseSlaBreach", "agency": "FBR-CUSTOMS", "severity": "warning"}, "fbr-customs"),
        (
            {"alertname": "CaseSlaBreach", "agency": "FBR-CUSTOMS", "severity": "critical"},
            "command-centre,fbr-customs-critical",
        ),
        ({"alertname": "CaseSlaBreach", "agency": "SD-TRANSPORT", "severity": "warning"}, "sd-transport"),
        (
            {"alertname": "CaseSlaBreach", "agency": "PB-TRANSPORT", "severity": "critical"},
            "command-centre,pb-transport-critical",
        ),
        (
            {"alertname": "FeedSilent", "agency": "PQA", "severity": "critical"},
            "command-centre,ports-critical",
        ),
        ({"alertname": "CaseSlaBreach", "agency": "GPA", "severity": "warning"}, "ports"),
        ({"alertname": "KpiBelowTarget", "agency": "FBR-DRAWBACK", "severity": "warning"}, "fbr-drawback"),
        ({"alertname": "KpiBelowTarget", "agency": "MOE-POWER", "severity": "warning"}, "energy"),
        # Pipeline alerts go to engineers only, critical or not.
        ({"alertname": "SinkStalled", "team": "platform", "severity": "critical"}, "platform-oncall"),
        # An agency with no desk yet falls back to the command centre.
        ({"alertname": "FeedSilent", "agency": "NEW-AGENCY", "severity": "warning"}, "command-centre"),
    ],
)
def test_routing_per_agency_and_severity(labels: dict[str, str], receivers: str) -> None:
    result = run(
        tool("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receivers}",
        *(f"{k}={v}" for k, v in labels.items()),
    )
    assert result.returncode == 0, f"{labels}: expected {receivers}, got {result.stdout.strip()}"


def test_check_command_runs_all_checks() -> None:
    result = run(sys.executable, "-m", "backbone", "alerting", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: Prometheus config, rules, rule tests and Alertmanager config are valid" in result.stdout


def test_stack_command_without_the_binaries_explains_and_exits_0(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "BACKBONE_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "backbone", "alerting", "stack"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "prometheus, prometheus-alertmanager not found" in result.stdout
    assert "apt-get install prometheus prometheus-alertmanager" in result.stdout
