"""The missions file is validated with the field path and the reason; the default file is sound."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from backbone.cli import app
from backbone.config import DEFAULT_MISSIONS_FILE
from stream_processors.missions import MissionsError, load_missions, missions_from_data, parse_duration_ms

DEFAULT: dict[str, Any] = yaml.safe_load(DEFAULT_MISSIONS_FILE.read_text())


def _mutated(fn: Any) -> dict[str, Any]:
    data = copy.deepcopy(DEFAULT)
    fn(data)
    return data


def test_default_missions_cover_the_required_stages() -> None:
    m = load_missions(DEFAULT_MISSIONS_FILE)
    pairs = {
        (r.stage.start.topic, r.stage.start.status, r.stage.end.topic, r.stage.end.status) for r in m.stages
    }
    assert ("customs.clearances.v1", "FILED", "customs.clearances.v1", "CLEARED") in pairs
    assert ("customs.clearances.v1", "CLEARED", "transport.permits.v1", "ISSUED") in pairs
    assert ("ports.container_moves.v1", "GATE_IN", "ports.container_moves.v1", "LOADED") in pairs
    assert ("customs.clearances.v1", "FILED", "ports.container_moves.v1", "LOADED") in pairs
    assert ("rebates.drawback.v1", "FILED", "rebates.drawback.v1", "PAID") in pairs
    assert ("energy.notifications.v1", "DETERMINED", "energy.notifications.v1", "NOTIFIED") in pairs
    handoff = next(r for r in m.stages if r.stage.id == "permit_handoff")
    assert handoff.stage.owner_for("PK-SD", "KPT") == "SD-TRANSPORT"
    assert handoff.stage.sla_ms == 12 * 3_600_000
    port = next(r for r in m.stages if r.stage.id == "port_loading")
    assert port.stage.owner_for("PK-SD", "PQA") == "PQA"
    assert any(t.id == "permits_within_12h" and t.min_sla_compliance == 0.9 for _, t, _ in m.targets)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["missions"][0]["journeys"][0]["stages"][1]["end"].update(status="GRANTED"),
            "missions[0].journeys[0].stages[1].end",
        ),
        (lambda d: d["missions"][0]["journeys"][0]["stages"][0].update(sla="soon"), "sla"),
        (
            lambda d: d["missions"][0]["journeys"][0]["stages"][0].update(owner="NO-SUCH"),
            "missions[0].journeys[0].stages[0].owner",
        ),
        (lambda d: d["missions"][0]["targets"][0].update(stage="nope"), "unknown stage"),
        (lambda d: d["missions"][0]["targets"][0].update(window="7d"), "unknown window"),
        (lambda d: d["windows"][1].update(hop="7m"), "hop must divide size"),
        (
            lambda d: d["missions"][0]["journeys"][0]["stages"][0]["start"].update(topic="x.v1"),
            "unknown topic",
        ),
        (lambda d: d["missions"][0]["journeys"][0]["stages"][0].update(colour="red"), "colour"),
    ],
)
def test_invalid_missions_name_the_field(mutate: Any, expected: str) -> None:
    with pytest.raises(MissionsError) as err:
        missions_from_data(_mutated(mutate))
    assert expected in str(err.value)


def test_changing_an_sla_needs_no_code(tmp_path: Path) -> None:
    data = _mutated(lambda d: d["missions"][0]["journeys"][0]["stages"][1].update(sla="6h"))
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    m = load_missions(path)
    assert next(r for r in m.stages if r.stage.id == "permit_handoff").stage.sla_ms == 6 * 3_600_000


def test_durations() -> None:
    assert parse_duration_ms("90m") == 5_400_000
    assert parse_duration_ms("1.5h") == 5_400_000
    assert parse_duration_ms("14d") == 14 * 86_400_000
    with pytest.raises(ValueError):
        parse_duration_ms("3 weeks")


def test_cli_check(tmp_path: Path) -> None:
    ok = CliRunner().invoke(app, ["missions", "check", str(DEFAULT_MISSIONS_FILE)])
    assert ok.exit_code == 0, ok.output
    assert "7 stages" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("windows: []\n")
    res = CliRunner().invoke(app, ["missions", "check", str(bad)])
    assert res.exit_code == 1
    assert "windows" in res.output
