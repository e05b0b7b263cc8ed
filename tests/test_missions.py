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
from stream_processors.missions import (
    MAX_DURATION_MS,
    MissionsError,
    load_missions,
    missions_from_data,
    parse_duration_ms,
    time_scaled,
)

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


REBATE = ("missions", 0, "journeys", 1, "stages", 0)  # FILED -> PAID, cancel_on REJECTED


def _stage(d: dict[str, Any], at: tuple[Any, ...] = REBATE) -> dict[str, Any]:
    for key in at:
        d = d[key]
    return d


def _problems(data: dict[str, Any]) -> list[str]:
    """The problems of an invalid file, one per ``; ``-separated entry after ``missions: ``."""
    with pytest.raises(MissionsError) as err:
        missions_from_data(data)
    message = str(err.value)
    assert message.startswith("missions: ")
    return message.removeprefix("missions: ").split("; ")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            lambda d: d["windows"].append({"name": "1m", "size": "1h", "hop": "5m"}),
            "windows: window name '1m' is used twice (windows[0] and windows[3]): KPI rows are keyed by it",
            id="duplicate-window-name",
        ),
        pytest.param(
            lambda d: d["missions"].append(copy.deepcopy(d["missions"][1])),
            "missions: mission id 'energy_pass_through' is used twice (missions[1] and missions[2])",
            id="duplicate-mission-id",
        ),
        pytest.param(
            lambda d: d["missions"][0]["journeys"].append(copy.deepcopy(d["missions"][0]["journeys"][1])),
            "missions[0]: journey id 'rebate_claim' is used twice (journeys[1] and journeys[2])",
            id="duplicate-journey-id",
        ),
        pytest.param(
            lambda d: d["missions"][0]["targets"].append(copy.deepcopy(d["missions"][0]["targets"][0])),
            "missions[0]: target id 'permits_within_12h' is used twice (targets[0] and targets[3])",
            id="duplicate-target-id",
        ),
        pytest.param(
            lambda d: _stage(d).update(sla="99999999999999999999d"),
            "missions[0].journeys[1].stages[0].sla: '99999999999999999999d' is longer than the maximum "
            "duration of 3650d",
            id="huge-sla",
        ),
        pytest.param(
            lambda d: d["windows"][2].update(size="3651d", hop="1d"),
            "windows[2].size: '3651d' is longer than the maximum duration of 3650d",
            id="huge-window-size",
        ),
        pytest.param(
            lambda d: d["windows"][2].update(hop="87600.5h"),
            "windows[2].hop: '87600.5h' is longer than the maximum duration of 3650d",
            id="huge-hop",
        ),
        pytest.param(
            lambda d: d["windows"][2].update(size="3650d", hop="1ms"),
            "windows[2]: hop 1 ms is shorter than 1s",
            id="hop-under-a-second",
        ),
        pytest.param(
            lambda d: d["windows"][0].update(size="500ms"),
            "windows[0]: size of a tumbling window 500 ms is shorter than 1s",
            id="tumbling-under-a-second",
        ),
        pytest.param(
            lambda d: d["windows"][2].update(size="3650d", hop="30m"),
            "windows[2]: size / hop = 175,200 overlapping windows, more than 10,000",
            id="too-many-hops",
        ),
        pytest.param(
            lambda d: d["feeds"].update(default_silence="1" + "0" * 400 + "d"),
            "feeds.default_silence: ",
            id="huge-default-silence-no-float-overflow",
        ),
        pytest.param(
            lambda d: d["feeds"]["silence"].update(NEPRA="5256001m"),
            "feeds.silence.NEPRA: '5256001m' is longer than the maximum duration of 3650d",
            id="huge-feed-silence",
        ),
        pytest.param(
            lambda d: _stage(d).update(sla=24),
            "missions[0].journeys[1].stages[0].sla: 24 has no unit: write a number and one of ms, s, m, h, d",
            id="bare-sla",
        ),
        pytest.param(
            lambda d: d["windows"][0].update(size=60000),
            "windows[0].size: 60000 has no unit",
            id="bare-window-size",
        ),
        pytest.param(
            lambda d: d["windows"][1].update(hop=300000),
            "windows[1].hop: 300000 has no unit",
            id="bare-hop",
        ),
        pytest.param(
            lambda d: d["feeds"].update(default_silence=1.5),
            "feeds.default_silence: 1.5 has no unit",
            id="bare-float-silence",
        ),
        pytest.param(
            lambda d: d["feeds"]["silence"].update(OGRA=30),
            "feeds.silence.OGRA: 30 has no unit",
            id="bare-feed-silence",
        ),
        pytest.param(
            lambda d: _stage(d).update(sla="24"),
            "missions[0].journeys[1].stages[0].sla: '24' is not a duration: "
            "a number and one of ms, s, m, h, d",
            id="quoted-bare-sla",
        ),
        pytest.param(
            lambda d: _stage(d)["cancel_on"].append({"topic": "rebates.drawback.v1", "status": "PAID"}),
            "missions[0].journeys[1].stages[0]: cancel_on[1] (rebates.drawback.v1 PAID) is the stage's end "
            "event: that event would close and cancel the stage at once, a close wins, so the cancel could "
            "never apply",
            id="cancel-on-end",
        ),
        pytest.param(
            lambda d: _stage(d).update(cancel_on=[{"topic": "rebates.drawback.v1", "status": "FILED"}]),
            "missions[0].journeys[1].stages[0]: cancel_on[0] (rebates.drawback.v1 FILED) "
            "is the stage's start event: every case would be cancelled the moment it starts",
            id="cancel-on-start",
        ),
        pytest.param(
            lambda d: _stage(d).update(money_field="amount"),
            "missions[0].journeys[1].stages[0]: money_field 'amount' "
            "is not a money field of rebates.drawback.v1",
            id="bad-money-field-alone",
        ),
        pytest.param(
            lambda d: _stage(d)["cancel_on"][0].update(status="LOST"),
            "missions[0].journeys[1].stages[0].cancel_on[0]: "
            "status 'LOST' is not a rebates.drawback.v1 status",
            id="bad-cancel-on-alone",
        ),
        pytest.param(
            lambda d: d["missions"][0]["journeys"][1].update(stages=[]),
            "missions[0].journeys[1].stages: at least one is required",
            id="empty-stages",
        ),
    ],
)
def test_each_rule_is_one_clear_problem(mutate: Any, expected: str) -> None:
    problems = _problems(_mutated(mutate))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems
    assert "Value error" not in problems[0]


def test_messages_match_the_readme_example() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = "missions[0].journeys[0].stages[1].end: status 'GRANTED' is not a transport.permits.v1 status"
    assert example in " ".join(readme.split())
    end = ("missions", 0, "journeys", 0, "stages", 1, "end")
    problems = _problems(_mutated(lambda d: _stage(d, end).update(status="GRANTED")))
    assert len(problems) == 1 and problems[0].startswith(example), problems


def test_durations_in_range_and_with_units_still_load() -> None:
    data = _mutated(lambda d: d["windows"][2].update(size="3650d", hop="1d"))
    _stage(data).update(sla="0.5h")
    data["feeds"]["silence"]["NEPRA"] = "250ms"
    m = missions_from_data(data)
    assert m.windows[2].size_ms == 3650 * 86_400_000
    assert next(r for r in m.stages if r.stage.id == "rebate_payment").stage.sla_ms == 1_800_000
    assert m.feeds.threshold_ms("NEPRA") == 250


def test_a_file_that_is_not_utf8_is_named_and_refused(tmp_path: Path) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"windows: \xff\xfe\x00\x81\n")
    with pytest.raises(MissionsError, match=r"binary\.yaml: not UTF-8 text \(byte 0xff at offset 9\)"):
        load_missions(binary)
    res = CliRunner().invoke(app, ["missions", "check", str(binary)])
    assert res.exit_code == 1
    assert "binary.yaml: not UTF-8 text" in res.output
    assert isinstance(res.exception, SystemExit), res.exception  # typer.Exit, not a UnicodeDecodeError


def test_the_time_scaled_copy_keeps_units_and_loads(tmp_path: Path) -> None:
    out = time_scaled(DEFAULT_MISSIONS_FILE, 500, tmp_path / "scaled.yaml")
    slas = [
        s["sla"]
        for m in yaml.safe_load(out.read_text())["missions"]
        for j in m["journeys"]
        for s in j["stages"]
    ]
    assert all(isinstance(sla, str) and sla.endswith("ms") for sla in slas), slas
    handoff = next(r for r in load_missions(out).stages if r.stage.id == "permit_handoff")
    assert handoff.stage.sla_ms == 12 * 3_600_000 // 500


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
    assert parse_duration_ms("250ms") == 250
    assert parse_duration_ms("3650d") == MAX_DURATION_MS
    for bad in ("3 weeks", "24", 24, 2.5, "3651d", "1e9d", "-1h"):
        with pytest.raises(ValueError):
            parse_duration_ms(bad)


def test_cli_check(tmp_path: Path) -> None:
    ok = CliRunner().invoke(app, ["missions", "check", str(DEFAULT_MISSIONS_FILE)])
    assert ok.exit_code == 0, ok.output
    assert "7 stages" in ok.output
    # every owner rule is shown, not only the fallback (QA pass 4)
    assert "owner KPT -> KPT, PQA -> PQA, GWD -> GPA, otherwise KPT, SLA 48 h" in ok.output
    assert "PK-SD -> SD-TRANSPORT" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("windows: []\n")
    res = CliRunner().invoke(app, ["missions", "check", str(bad)])
    assert res.exit_code == 1
    assert "windows" in res.output


def test_cli_help_says_what_the_missions_command_does() -> None:
    res = CliRunner().invoke(app, ["missions", "--help"])
    assert res.exit_code == 0, res.output
    assert "explain" not in res.output.lower()
    assert "Validate the missions file" in res.output
