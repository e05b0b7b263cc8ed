"""A CASE_SLA alert says the same numbers in its summary (processors) and its annotations (forwarder).

The summary is written by the journey engine when it judges the case; the annotations by the
forwarder from the record's numbers. Both must state waited = judge time - stage start,
overdue = waited - SLA and the SLA itself, in the same words, whatever the forwarder's clock
says when it posts or re-posts. Expected words are written by hand from the definitions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from engine_fixtures import MIN, T0, C, Pipeline, event
from hypothesis import given, settings
from hypothesis import strategies as st

from alerting.alertmanager_payload import to_alertmanager
from backbone.config import DEFAULT_MISSIONS_FILE
from stream_processors.journeys import JourneyEngine
from stream_processors.missions import Missions, load_missions, time_scaled

BOARD = "http://127.0.0.1:8050"
LEASE = 15 * MIN
SUMMARY = re.compile(
    r"Case (?P<case>\S+) has waited (?P<waited>.+) at '(?P<stage>.+)' \((?P<owner>\S+)\): "
    r"(?P<overdue>.+) past its (?P<sla>.+) SLA"
)


def stalled_customs_alert(p: Pipeline, judge_ms: int) -> dict[str, Any]:
    """FILED at T0 and nothing after: the sweep at ``judge_ms`` raises the CASE_SLA FIRING."""
    p.push([(C, event(C, "EXP-1", "FILED", T0))], T0 + 1)
    fired = [a for a in p.tick(judge_ms).alerts if a["stage"] == "customs_clearance"]
    assert len(fired) == 1 and fired[0]["state"] == "FIRING"
    return fired[0]


def test_demo_time_alert_summary_and_annotations_state_the_same_numbers(tmp_path: Path) -> None:
    """``backbone up --time-scale 500``: customs clearance's 24 h SLA is 172.8 s of wall time.

    Started at T0, judged at T0 + 343.6 s: waited 5 min 43 s, SLA 2 min 52 s, so 2 min 51 s past
    it (343 s - 172 s; the exact overdue is 170.8 s). Posted 9 minutes after the start, as in
    the QA report: the annotations still say what the summary says.
    """
    scaled = load_missions(time_scaled(DEFAULT_MISSIONS_FILE, 500, tmp_path / "scaled.yaml"))
    p = Pipeline()
    p.missions = scaled
    p.journeys = JourneyEngine(scaled, p.settings, wall_clock=p.wall)
    alert = stalled_customs_alert(p, T0 + 343_600)
    assert (alert["value"], alert["threshold"], alert["waiting_since"]) == (170_800.0, 172_800.0, T0)
    assert alert["summary"] == (
        "Case EXP-1 has waited 5 min 43 s at 'Customs clearance (filed to cleared)' (FBR-CUSTOMS): "
        "2 min 51 s past its 2 min 52 s SLA"
    )
    notes = to_alertmanager(alert, BOARD, T0 + 9 * MIN, LEASE)["annotations"]
    assert notes["summary"] == alert["summary"]
    assert (notes["waiting_time"], notes["overdue_by"], notes["threshold"]) == (
        "5 min 43 s",
        "2 min 51 s",
        "2 min 52 s",
    )
    assert notes["judged_at"] == "2026-01-01T00:05:43.600Z"


def test_real_time_alert_in_hours() -> None:
    """Default missions: 24 h SLA, judged 30 h 20 min 59.999 s after the start."""
    alert = stalled_customs_alert(Pipeline(), T0 + (30 * 60 + 20) * MIN + 59_999)
    assert alert["summary"].endswith(
        "has waited 1 d 6 h at 'Customs clearance (filed to cleared)' "
        "(FBR-CUSTOMS): 6 h 20 min past its 1 d SLA"
    )
    notes = to_alertmanager(alert, BOARD, T0 + 40 * 60 * MIN, LEASE)["annotations"]
    assert (notes["waiting_time"], notes["overdue_by"], notes["threshold"]) == (
        "1 d 6 h",
        "6 h 20 min",
        "1 d",
    )


_MISSIONS: dict[int, Missions] = {}


def scaled_missions(scale: int, tmp_path_factory: pytest.TempPathFactory) -> Missions:
    """The missions file as ``backbone up --time-scale <scale>`` runs it (loaded once per scale)."""
    if scale not in _MISSIONS:
        out = tmp_path_factory.mktemp("scaled") / "scaled.yaml"
        _MISSIONS[scale] = load_missions(time_scaled(DEFAULT_MISSIONS_FILE, scale, out))
    return _MISSIONS[scale]


@settings(max_examples=60, deadline=None)
@given(
    scale=st.sampled_from([1, 7, 500]),  # SLA past the 60 s idle time, so judge time = now
    overdue_ms=st.integers(1, 40 * 86_400_000),
    posted_after_ms=st.integers(0, 3 * 86_400_000),
)
def test_summary_and_annotations_agree_for_any_sla_and_wait(
    tmp_path_factory: pytest.TempPathFactory, scale: int, overdue_ms: int, posted_after_ms: int
) -> None:
    missions = scaled_missions(scale, tmp_path_factory)
    p = Pipeline()
    p.missions, p.journeys = missions, JourneyEngine(missions, p.settings, wall_clock=p.wall)
    sla_ms = next(s.sla_ms for s in p.journeys.stages.values() if s.stage == "customs_clearance")
    judge = T0 + sla_ms + max(overdue_ms, 2)  # past the 1 ms the FILED push is ahead of T0
    alert = stalled_customs_alert(p, judge)
    words = SUMMARY.fullmatch(alert["summary"])
    assert words is not None, alert["summary"]
    notes = to_alertmanager(alert, BOARD, judge + posted_after_ms, LEASE)["annotations"]
    assert (words["waited"], words["overdue"], words["sla"]) == (
        notes["waiting_time"],
        notes["overdue_by"],
        notes["threshold"],
    )
    waited_s, sla_s = (judge - T0) // 1000, sla_ms // 1000
    assert notes["waiting_time"] == _words(waited_s) and notes["threshold"] == _words(sla_s)
    assert notes["overdue_by"] == _words(waited_s - sla_s)


def _words(seconds: int) -> str:
    """Oracle for the two-largest-units wording (written from SEMANTICS.md, not the code)."""
    units = [(86_400, "d"), (3_600, "h"), (60, "min"), (1, "s")]
    for i, (size, name) in enumerate(units):
        if seconds >= size or size == 1:
            big, rest = divmod(seconds, size)
            if i + 1 < len(units):
                small_size, small_name = units[i + 1]
                small = rest // small_size
                return f"{big} {name} {small} {small_name}" if small else f"{big} {name}"
            return f"{big} {name}"
    raise AssertionError("unreachable")
