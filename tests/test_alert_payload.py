"""Unit tests (no services): alert records → Alertmanager payloads, the firing map, config rendering."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from alerting.alertmanager_payload import AlertRecordError, human_duration, to_alertmanager
from alerting.firing import FiringAlerts
from alerting.forwarder import AlertmanagerClient, AlertmanagerRejected, AlertmanagerUnavailable
from alerting.stack import (
    ALERTMANAGER_CONFIG,
    PROMETHEUS_CONFIG,
    StackError,
    Timings,
    render_alertmanager_config,
    render_prometheus_config,
)
from schemas import contracts
from schemas.codec import Codec

BOARD = "https://backbone.example.gov.pk"
NOW = int(datetime(2025, 3, 10, 12, 0, tzinfo=UTC).timestamp() * 1000)
HOUR = 3_600_000
LEASE = 15 * 60_000


def case_alert(**over: Any) -> dict[str, Any]:
    record = {
        "alert_id": "a1b2c3",
        "kind": "CASE_SLA",
        "state": "FIRING",
        "severity": "warning",
        "mission": "export_competitiveness",
        "journey": "export_shipment",
        "stage": "permit_handoff",
        "agency": "SD-TRANSPORT",
        "province": "PK-SD",
        "port": "",
        "case_id": "EXP-2025-000042",
        "summary": "Case EXP-2025-000042: permit not issued 12 h after customs clearance.",
        "starts_at": NOW - 3 * HOUR,
        "ends_at": None,
        "waiting_since": NOW - (15 * HOUR + 12 * 60_000),
        "value": 3 * HOUR + 12 * 60_000.0,
        "threshold": 12.0 * HOUR,
        "emitted_at": NOW,
    }
    record.update(over)
    return record


# -- mapping -------------------------------------------------------------------------------------
def test_firing_case_alert_maps_to_labels_annotations_and_a_lease() -> None:
    payload = to_alertmanager(case_alert(), BOARD, NOW, LEASE)
    assert payload["labels"] == {
        "alertname": "CaseSlaBreach",
        "mission": "export_competitiveness",
        "stage": "permit_handoff",
        "agency": "SD-TRANSPORT",
        "province": "PK-SD",
        "severity": "warning",
        "alert_id": "a1b2c3",
    }  # the empty port is left out: Alertmanager drops empty labels anyway
    notes = payload["annotations"]
    assert notes["summary"] == "Case EXP-2025-000042: permit not issued 12 h after customs clearance."
    assert notes["case_id"] == "EXP-2025-000042"
    assert notes["tracker_url"] == "https://backbone.example.gov.pk/#case/EXP-2025-000042"  # the board's form
    assert notes["waiting_time"] == "15 h 12 min"
    assert notes["overdue_by"] == "3 h 12 min"
    assert notes["threshold"] == "12 h"
    assert payload["startsAt"] == "2025-03-10T09:00:00.000Z"
    assert payload["endsAt"] == "2025-03-10T12:15:00.000Z"
    assert payload["generatorURL"] == notes["tracker_url"]


# RFC 3986 URI characters (unreserved, reserved, and "%" of a percent-encoding): nothing else may
# appear in a generatorURL, which Alertmanager validates as a URI.
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_PERCENT = re.compile(r"%(?![0-9A-F]{2})")


def test_an_odd_case_id_gives_a_valid_uri_that_names_the_case() -> None:
    """The QA record: case_id "A\\nB\\0C" made Alertmanager answer 422 (generatorURL not a uri)."""
    payload = to_alertmanager(case_alert(case_id="A\nB\x00C"), BOARD, NOW, LEASE)
    assert payload["generatorURL"] == f"{BOARD}/#case/A%0AB%00C"
    assert payload["annotations"]["tracker_url"] == payload["generatorURL"]
    assert payload["annotations"]["case_id"] == "A\nB\x00C"
    other = to_alertmanager(case_alert(case_id="EXP/1 #2?x=%&y"), BOARD, NOW, LEASE)
    assert other["generatorURL"] == f"{BOARD}/#case/EXP%2F1%20%232%3Fx%3D%25%26y"


@given(case_id=st.text(min_size=1, max_size=60))
def test_any_case_id_gives_a_uri_whose_fragment_decodes_to_it(case_id: str) -> None:
    url = to_alertmanager(case_alert(case_id=case_id), BOARD, NOW, LEASE)["generatorURL"]
    assert _URI_CHARS.fullmatch(url) and not _PERCENT.search(url), url
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "backbone.example.gov.pk", "/")
    assert parts.fragment.startswith("case/")
    assert unquote(parts.fragment.removeprefix("case/"), errors="strict") == case_id


def test_a_board_url_with_a_case_id_placeholder_links_grafanas_tracker() -> None:
    """The compose stack's links: Grafana's case tracker, not the built-in board's ``#case/`` route
    (QA pass 4: they opened Grafana's home page)."""
    grafana = "https://grafana.example.gov.pk/d/bb-case-tracker?var-case_id={case_id}"
    payload = to_alertmanager(case_alert(case_id="EXP/1 #2"), grafana, NOW, LEASE)
    want = "https://grafana.example.gov.pk/d/bb-case-tracker?var-case_id=EXP%2F1%20%232"
    assert payload["generatorURL"] == payload["annotations"]["tracker_url"] == want
    feed = to_alertmanager(case_alert(kind="FEED_SILENT", case_id=None), grafana, NOW, LEASE)
    assert feed["generatorURL"] == "https://grafana.example.gov.pk/"


def test_case_alert_wording_agrees_with_itself_and_does_not_change_on_repost() -> None:
    """QA saw a summary "has waited 5m ... 2m past its 2m SLA" next to waiting_time "9 min": the
    forwarder recomputed the wait at post time, the summary stated it at judge time.

    Demo numbers (``--time-scale 500``, SEMANTICS.md "Alert wording"): the stage started at
    12:00:00.000, its SLA is 24 h / 500 = 172.8 s, the processors judged it at 12:05:43.600
    (waited 343.6 s, overdue 170.8 s), and the forwarder posts it at 12:09:00 and 12:30:00.
    """
    started = NOW
    record = case_alert(
        waiting_since=started,
        starts_at=started + 172_800,
        value=170_800.0,
        threshold=172_800.0,
        summary="Case EXP-2025-000042 has waited 5 min 43 s at 'Customs clearance (filed to cleared)' "
        "(FBR-CUSTOMS): 2 min 51 s past its 2 min 52 s SLA",
    )
    first = to_alertmanager(record, BOARD, started + 9 * 60_000, LEASE)["annotations"]
    assert first["waiting_time"] == "5 min 43 s"  # judge time - start, not post time - start (9 min)
    assert first["overdue_by"] == "2 min 51 s"  # 343 s - 172 s: the words add up
    assert first["threshold"] == "2 min 52 s"
    assert first["judged_at"] == "2025-03-10T12:05:43.600Z"
    assert first["waiting_since"] == "2025-03-10T12:00:00.000Z"
    for words in ("5 min 43 s", "2 min 51 s", "2 min 52 s"):
        assert words in first["summary"]
    later = to_alertmanager(record, BOARD, started + 30 * 60_000, LEASE)["annotations"]
    assert later == first  # a re-post renews the lease, it does not re-word the alert


def test_resolved_case_alert_ends_when_the_case_moved() -> None:
    ended = NOW - 30 * 60_000
    payload = to_alertmanager(case_alert(state="RESOLVED", ends_at=ended), BOARD, NOW, LEASE)
    assert payload["endsAt"] == "2025-03-10T11:30:00.000Z"
    assert payload["annotations"]["resolved_at"] == "2025-03-10T11:30:00.000Z"
    assert payload["annotations"]["waiting_time"] == "14 h 42 min"  # waiting_since → ends_at


def test_resolved_end_is_clamped_between_start_and_now() -> None:
    before_start = to_alertmanager(case_alert(state="RESOLVED", ends_at=NOW - 5 * HOUR), BOARD, NOW, LEASE)
    assert before_start["endsAt"] == before_start["startsAt"]  # Alertmanager rejects endsAt < startsAt
    future = to_alertmanager(case_alert(state="RESOLVED", ends_at=NOW + HOUR), BOARD, NOW, LEASE)
    assert future["endsAt"] == "2025-03-10T12:00:00.000Z"  # else it would stay firing for an hour
    assert future["annotations"]["resolved_at"] == "2025-03-10T13:00:00.000Z"


def test_feed_and_kpi_alerts() -> None:
    feed = to_alertmanager(
        case_alert(
            kind="FEED_SILENT",
            case_id=None,
            mission="",
            stage="",
            province="",
            journey="",
            waiting_since=None,
            value=45 * 60_000.0,
            threshold=30 * 60_000.0,
            severity="critical",
        ),
        BOARD,
        NOW,
        LEASE,
    )
    assert feed["labels"] == {
        "alertname": "FeedSilent",
        "agency": "SD-TRANSPORT",
        "severity": "critical",
        "alert_id": "a1b2c3",
    }
    assert "case_id" not in feed["annotations"] and "tracker_url" not in feed["annotations"]
    assert feed["annotations"]["silent_for"] == "45 min" == feed["annotations"]["waiting_time"]
    assert feed["generatorURL"] == f"{BOARD}/"
    kpi = to_alertmanager(
        case_alert(kind="KPI_TARGET", case_id=None, waiting_since=None, value=0.72, threshold=0.9),
        BOARD,
        NOW,
        LEASE,
    )
    assert kpi["labels"]["alertname"] == "KpiBelowTarget"
    assert (kpi["annotations"]["sla_compliance"], kpi["annotations"]["target"]) == ("72.0%", "90.0%")


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"severity": "page"}, "severity 'page'"),
        ({"kind": "OTHER"}, "unknown kind 'OTHER'"),
        ({"state": "RESOLVED", "ends_at": None}, "RESOLVED record has no ends_at"),
        ({"alert_id": ""}, "alert_id is empty"),
    ],
)
def test_bad_records_name_the_alert_and_the_reason(over: dict[str, Any], reason: str) -> None:
    with pytest.raises(AlertRecordError) as info:
        to_alertmanager(case_alert(**over), BOARD, NOW, LEASE)
    assert reason in str(info.value)
    if over.get("alert_id") != "":
        assert "a1b2c3" in str(info.value)


def test_a_record_through_the_avro_codec_maps_the_same() -> None:
    """Field names and types of the mapping match the backbone.alerts.v1 contract."""
    record = case_alert()
    decoded = Codec().decode(contracts.ALERTS, Codec().encode(contracts.ALERTS, record))
    assert to_alertmanager(decoded, BOARD, NOW, LEASE) == to_alertmanager(record, BOARD, NOW, LEASE)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0 s"),
        (59_999, "59 s"),
        (60_000, "1 min"),
        (172_800, "2 min 52 s"),  # two largest units, floored
        (HOUR, "1 h"),
        (HOUR + 60_000, "1 h 1 min"),
        (24 * HOUR, "1 d"),
        (50 * HOUR + 59 * 60_000, "2 d 2 h"),
        (-5, "0 s"),
    ],
)
def test_human_duration(ms: int, text: str) -> None:
    assert human_duration(ms) == text


@given(
    starts=st.integers(NOW - 400 * 24 * HOUR, NOW + 24 * HOUR),
    ends=st.integers(NOW - 400 * 24 * HOUR, NOW + 24 * HOUR),
    now=st.integers(NOW - HOUR, NOW + HOUR),
    state=st.sampled_from(["FIRING", "RESOLVED"]),
)
def test_alertmanager_time_rules_always_hold(starts: int, ends: int, now: int, state: str) -> None:
    payload = to_alertmanager(case_alert(state=state, starts_at=starts, ends_at=ends), BOARD, now, LEASE)
    start = datetime.fromisoformat(payload["startsAt"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(payload["endsAt"].replace("Z", "+00:00"))
    now_dt = datetime.fromtimestamp(now / 1000, tz=UTC)
    assert end >= start
    if state == "FIRING":
        assert (end - now_dt).total_seconds() >= LEASE / 1000  # still firing for a whole lease
    else:
        assert end <= max(now_dt, start)  # resolved now, not later


# -- the firing map ------------------------------------------------------------------------------
def test_firing_map_posts_each_transition_and_ignores_replays() -> None:
    held = FiringAlerts()
    fire, resolve = case_alert(), case_alert(state="RESOLVED", ends_at=NOW)
    assert held.transition(fire, 0) == [fire] and "a1b2c3" in held
    assert held.transition(resolve, 0) == [resolve] and len(held) == 0
    assert held.transition(fire, 0) == []  # a replayed FIRING of a resolved alert pages nobody
    assert len(held) == 0


def test_an_escalation_keeps_the_warning_firing_until_the_case_resolves() -> None:
    """The desk paged for the warning is not told "resolved" while the case still waits: the
    warning stays firing (Alertmanager's inhibit rule silences it under the critical, same
    alert_id) and is re-posted with it; both resolve together."""
    held = FiringAlerts()
    warning = case_alert()
    held.transition(warning, 0)
    critical = case_alert(severity="critical", emitted_at=NOW + 5)
    posts = held.transition(critical, 0)
    assert [(p["severity"], p["state"]) for p in posts] == [("critical", "FIRING")]
    assert held.records() == [warning, critical] and len(held) == 1
    assert held.transition(critical, 0) == [critical]  # a replay of the escalation keeps the warning
    assert held.records() == [warning, critical]
    posts = held.transition(case_alert(state="RESOLVED", severity="critical", ends_at=NOW + 9), 0)
    assert [(p["severity"], p["state"], p["ends_at"]) for p in posts] == [
        ("warning", "RESOLVED", NOW + 9),
        ("critical", "RESOLVED", NOW + 9),
    ]
    assert held.records() == []


def test_a_label_change_other_than_escalation_resolves_the_old_label_set() -> None:
    held = FiringAlerts()
    held.transition(case_alert(), 0)
    moved = case_alert(province="PK-PB", emitted_at=NOW + 5)  # e.g. an earlier start event, another desk
    posts = held.transition(moved, 0)
    assert [(p["province"], p["state"]) for p in posts] == [("PK-SD", "RESOLVED"), ("PK-PB", "FIRING")]
    assert posts[0]["ends_at"] == NOW + 5
    assert held.records() == [moved]
    posts = held.transition(case_alert(state="RESOLVED", ends_at=NOW + 9), 0)  # resolve says PK-SD
    assert [(p["province"], p["state"]) for p in posts] == [("PK-PB", "RESOLVED"), ("PK-SD", "RESOLVED")]


def test_firing_map_is_bounded_and_forgets_revoked_partitions() -> None:
    held = FiringAlerts(max_firing=3)
    for i in range(5):
        held.transition(case_alert(alert_id=f"id{i}"), i % 2)
    assert [r["alert_id"] for r in held.records()] == ["id2", "id3", "id4"] and held.evicted == 2
    assert held.drop_partitions({0}) == 2
    assert [r["alert_id"] for r in held.records()] == ["id3"]


# -- the Alertmanager client ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "error"),
    [
        (200, None),
        (500, AlertmanagerUnavailable),
        (503, AlertmanagerUnavailable),
        (429, AlertmanagerUnavailable),
        (400, AlertmanagerRejected),
    ],
)
def test_client_tells_outages_from_rejections(status: int, error: type[Exception] | None) -> None:
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(status, text="start time must be before end time" if status == 400 else "")

    client = AlertmanagerClient("http://am:9093/", transport=httpx.MockTransport(handler))
    payload = [to_alertmanager(case_alert(), BOARD, NOW, LEASE)]
    if error is None:
        client.post(payload)
    else:
        with pytest.raises(error):
            client.post(payload)
    assert seen == [("/api/v2/alerts", payload)]


def test_client_reports_an_unreachable_alertmanager_as_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(AlertmanagerUnavailable, match="ConnectError"):
        AlertmanagerClient("http://am:9093", transport=httpx.MockTransport(refuse)).post([{"labels": {}}])


# -- rendering the repo's configs ----------------------------------------------------------------
def test_alertmanager_render_changes_only_hosts_and_timings() -> None:
    original = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    rendered = render_alertmanager_config(
        "http://127.0.0.1:5555",
        Timings(group_wait="1s", group_interval="2s"),
        smtp_smarthost="127.0.0.1:2525",
    )
    hooks = [(r["name"], h["url"]) for r in rendered["receivers"] for h in r.get("webhook_configs", [])]
    assert hooks and all(url == f"http://127.0.0.1:5555/hooks/{name}" for name, url in hooks)
    assert rendered["route"]["group_wait"] == "1s" and rendered["route"]["group_interval"] == "2s"
    assert rendered["global"]["smtp_smarthost"] == "127.0.0.1:2525"
    assert rendered["inhibit_rules"] == original["inhibit_rules"]
    assert [r["name"] for r in rendered["receivers"]] == [r["name"] for r in original["receivers"]]
    assert rendered["route"]["repeat_interval"] == original["route"]["repeat_interval"]


def test_prometheus_render_points_at_given_addresses_and_the_repo_rules() -> None:
    rendered = render_prometheus_config({"backbone-processors": ["127.0.0.1:7001"]}, "http://127.0.0.1:7093")
    assert rendered["alerting"]["alertmanagers"] == [
        {"scheme": "http", "static_configs": [{"targets": ["127.0.0.1:7093"]}]}
    ]
    jobs = {j["job_name"]: j["static_configs"] for j in rendered["scrape_configs"]}
    assert jobs["backbone-processors"] == [{"targets": ["127.0.0.1:7001"]}]
    assert jobs["backbone-sink"] == [{"targets": ["127.0.0.1:9465"]}]  # untouched
    assert [Path(f).name for f in rendered["rule_files"]] == ["kpi.yml", "pipeline.yml"]
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in rendered["rule_files"])
    assert rendered["global"] == yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]
    with pytest.raises(StackError, match="no scrape job named backbone-nothing"):
        render_prometheus_config({"backbone-nothing": []}, "http://127.0.0.1:7093")
