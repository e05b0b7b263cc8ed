"""End to end with the real Debian Prometheus and Alertmanager on loopback and a real Tansu broker.

(a) alert records on the alerts topic → forwarder → Alertmanager → the desk's webhook, then
    resolved; an Alertmanager outage delays delivery without losing or committing anything;
    undecodable records are parked as dead letters.
(b) a KPI gauge below its mission target → Prometheus (repo rules) → Alertmanager → webhook.
(c) a FeedSilent alert inhibits the CaseSlaBreach alerts of the same agency only.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest
import yaml
from alerting_fixtures import WebhookReceiver, for_alert, start_stack, webhook_receiver
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import start_http_server

from alerting.forwarder import AlertForwarder, AlertmanagerClient, ForwarderOptions
from alerting.stack import JOB_FORWARDER, JOB_PROCESSORS, JOB_SINK, AlertingStack
from backbone.config import DEFAULT_MISSIONS_FILE, Settings, load_settings
from backbone.embedded.broker import TansuBroker, free_port
from backbone.kafka import client_config, ensure_topics
from backbone.metrics import Metrics
from schemas import contracts
from schemas.codec import Codec
from stream_processors.missions import load_missions

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
LEASE_S = 4.0


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def kpi_endpoint() -> Iterator[tuple[Metrics, int]]:
    """A processors-like metrics endpoint with the missions file's targets (what Prometheus scrapes)."""
    metrics = Metrics()
    metrics.publish_missions(load_missions(DEFAULT_MISSIONS_FILE))
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    yield metrics, port
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def stack(
    webhook: WebhookReceiver,
    kpi_endpoint: tuple[Metrics, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AlertingStack]:
    _metrics, port = kpi_endpoint
    running = start_stack(
        tmp_path_factory.mktemp("alerting"),
        webhook,
        scrape_targets={JOB_PROCESSORS: [f"127.0.0.1:{port}"], JOB_SINK: [], JOB_FORWARDER: []},
    )
    yield running
    running.stop()


def now_ms() -> int:
    return int(time.time() * 1000)


def case_sla_record(
    state: str,
    case_id: str,
    agency: str,
    province: str,
    severity: str,
    waited_ms: int,
    sla_ms: int = 12 * HOUR_MS,
    ends_at: int | None = None,
) -> dict[str, Any]:
    """A CASE_SLA transition as the processors emit it (SEMANTICS.md), for the permit hand-off."""
    record_id = hashlib.sha1(
        f"{case_id}|export_competitiveness|export_shipment|permit_handoff".encode()
    ).hexdigest()
    started_at = now_ms() - waited_ms
    return {
        "alert_id": hashlib.sha1(f"CASE_SLA|{record_id}".encode()).hexdigest(),
        "kind": "CASE_SLA",
        "state": state,
        "severity": severity,
        "mission": "export_competitiveness",
        "journey": "export_shipment",
        "stage": "permit_handoff",
        "agency": agency,
        "province": province,
        "port": "",
        "case_id": case_id,
        "summary": f"Case {case_id}: movement permit not issued 12 h after customs clearance ({agency}).",
        "starts_at": started_at + sla_ms,
        "ends_at": ends_at,
        "waiting_since": started_at,
        "value": float(waited_ms - sla_ms),
        "threshold": float(sla_ms),
        "emitted_at": now_ms(),
    }


def feed_silent_record(agency: str, silent_ms: int) -> dict[str, Any]:
    last = now_ms() - silent_ms
    return {
        "alert_id": hashlib.sha1(f"FEED_SILENT|{agency}|{last}".encode()).hexdigest(),
        "kind": "FEED_SILENT",
        "state": "FIRING",
        "severity": "critical",
        "mission": "",
        "journey": "",
        "stage": "",
        "agency": agency,
        "province": "",
        "port": "",
        "case_id": None,
        "summary": f"No events from {agency} for 45 minutes.",
        "starts_at": last + 30 * 60_000,
        "ends_at": None,
        "waiting_since": None,
        "value": float(silent_ms),
        "threshold": 30 * 60_000.0,
        "emitted_at": now_ms(),
    }


class AlertTopic:
    """A private alerts topic (and dead-letter topic) for one test, with a producer."""

    def __init__(self, settings: Settings, broker: TansuBroker, unique: str) -> None:
        self.settings = settings
        self.bootstrap = broker.bootstrap
        self.name = f"{contracts.ALERTS}.{unique}"
        self.dead_letters = f"{contracts.DEAD_LETTERS}.{unique}"
        self.group = f"backbone-alert-forwarder-{unique}"
        ensure_topics(settings, broker.bootstrap, [self.name, self.dead_letters], partitions=2)
        self.codec = Codec()
        self._producer = Producer({**client_config(settings, broker.bootstrap), "acks": "all"})

    def send(self, record: dict[str, Any] | bytes, key: str | None = None) -> None:
        value = record if isinstance(record, bytes) else self.codec.encode(contracts.ALERTS, record)
        k = key if key is not None else (record["alert_id"] if isinstance(record, dict) else "garbage")
        self._producer.produce(self.name, value=value, key=k.encode())
        assert self._producer.flush(10) == 0, "record not acknowledged by the broker"

    def committed(self) -> int:
        """Sum of the forwarder group's committed offsets (records delivered and committed)."""
        c = Consumer({**client_config(self.settings, self.bootstrap), "group.id": self.group})
        try:
            parts = c.committed([TopicPartition(self.name, p) for p in (0, 1)], timeout=10)
        finally:
            c.close()
        return sum(max(tp.offset, 0) for tp in parts)


@pytest.fixture
def alert_topic(settings: Settings, broker: TansuBroker, unique: str) -> AlertTopic:
    return AlertTopic(settings, broker, unique)


@contextmanager
def running_forwarder(
    topic: AlertTopic, alertmanager_url: str, metrics: Metrics, lease_s: float = LEASE_S
) -> Iterator[AlertForwarder]:
    """The forwarder in a thread, with short re-post/lease intervals; its errors fail the test."""
    forwarder = AlertForwarder(
        topic.settings,
        AlertmanagerClient(alertmanager_url, timeout_s=2.0),
        metrics,
        ForwarderOptions(
            topic=topic.name,
            dead_letters_topic=topic.dead_letters,
            group_id=topic.group,
            repost_interval_s=1.0,
            firing_lease_s=lease_s,
            poll_timeout_s=0.2,
            retry_initial_s=0.2,
            retry_max_s=1.0,
        ),
        bootstrap=topic.bootstrap,
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            forwarder.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="forwarder")
    thread.start()
    try:
        yield forwarder
    finally:
        forwarder.stop()
        thread.join(20)
        assert not thread.is_alive(), "forwarder did not stop"
        if errors:
            raise errors[0]


def am_alerts(stack: AlertingStack, alert_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{stack.alertmanager_url}/api/v2/alerts", params={"filter": f'alert_id="{alert_id}"'})
    resp.raise_for_status()
    return list(resp.json())


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


# -- (a) the alert path ---------------------------------------------------------------------------
def test_case_alert_reaches_the_owner_desk_once_and_resolves(
    stack: AlertingStack,
    webhook: WebhookReceiver,
    alert_topic: AlertTopic,
    settings: Settings,
) -> None:
    case_id = f"EXP-{uuid.uuid4().hex[:8]}"
    # Waiting 30 h on a 12 h SLA: overdue by more than the SLA again, so critical.
    firing = case_sla_record("FIRING", case_id, "SD-TRANSPORT", "PK-SD", "critical", waited_ms=30 * HOUR_MS)
    alert_id = firing["alert_id"]
    metrics = Metrics()
    with running_forwarder(alert_topic, stack.alertmanager_url, metrics):
        alert_topic.send(firing)
        got = webhook.wait_for(
            for_alert("sd-transport-critical", "firing", alert_id=alert_id),
            30,
            "firing notification at the Sindh transport critical desk",
        )
        (alert,) = got.alerts(alert_id=alert_id)
        assert got.path == "/hooks/sd-transport-critical"
        assert alert["labels"] == {
            "alertname": "CaseSlaBreach",
            "mission": "export_competitiveness",
            "stage": "permit_handoff",
            "agency": "SD-TRANSPORT",
            "province": "PK-SD",
            "severity": "critical",
            "alert_id": alert_id,
        }
        notes = alert["annotations"]
        assert notes["case_id"] == case_id
        assert notes["tracker_url"] == f"http://127.0.0.1:8050/#case/{case_id}"
        assert notes["waiting_time"] == "1 d 6 h"
        assert notes["overdue_by"] == "18 h"
        assert notes["threshold"] == "12 h"
        assert case_id in notes["summary"]
        assert alert["generatorURL"] == notes["tracker_url"]
        # Critical alerts also reach the command centre (route with continue).
        webhook.wait_for(for_alert("command-centre", "firing", alert_id=alert_id), 10, "command centre copy")
        assert not webhook.matching(for_alert("sd-transport", "firing", alert_id=alert_id)), (
            "warning desk paged"
        )

        # Held past its lease: re-posts keep it firing, and nobody is paged twice.
        time.sleep(LEASE_S + 2.5)
        (held,) = am_alerts(stack, alert_id)
        assert held["status"]["state"] == "active"
        assert len(webhook.matching(for_alert("sd-transport-critical", "firing", alert_id=alert_id))) == 1
        assert not webhook.matching(for_alert("sd-transport-critical", "resolved", alert_id=alert_id))
        assert metrics.registry.get_sample_value("backbone_alerts_firing") == 1

        ended_at = now_ms() - 60_000
        resolved = {**firing, "state": "RESOLVED", "ends_at": ended_at, "emitted_at": now_ms()}
        alert_topic.send(resolved)
        done = webhook.wait_for(
            for_alert("sd-transport-critical", "resolved", alert_id=alert_id), 30, "resolved notification"
        )
        (res,) = done.alerts(alert_id=alert_id)
        assert res["status"] == "resolved"
        ended = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ended_at / 1000))
        assert res["endsAt"].startswith(ended) and res["annotations"]["resolved_at"].startswith(ended)
        wait_until(lambda: alert_topic.committed() == 2, 10, "both records committed")
        assert metrics.registry.get_sample_value("backbone_alerts_firing") == 0
    delivered = "backbone_alerts_delivered_total"
    assert metrics.registry.get_sample_value(delivered, {"kind": "CASE_SLA", "state": "FIRING"}) == 1
    assert metrics.registry.get_sample_value(delivered, {"kind": "CASE_SLA", "state": "RESOLVED"}) == 1


def test_alertmanager_outage_delays_delivery_without_loss(
    webhook: WebhookReceiver,
    alert_topic: AlertTopic,
    tmp_path: Path,
) -> None:
    down_port = free_port()  # nothing listens here yet
    firing = case_sla_record(
        "FIRING", f"EXP-{uuid.uuid4().hex[:8]}", "PB-TRANSPORT", "PK-PB", "warning", waited_ms=14 * HOUR_MS
    )
    metrics = Metrics()
    with running_forwarder(alert_topic, f"http://127.0.0.1:{down_port}", metrics):
        alert_topic.send(firing)
        wait_until(
            lambda: (metrics.registry.get_sample_value("backbone_alert_delivery_errors_total") or 0) >= 3,
            30,
            "retries against the outage",
        )
        assert alert_topic.committed() == 0, "offset committed before Alertmanager accepted the alert"
        late_stack = start_stack(tmp_path / "late", webhook, alertmanager_port=down_port)
        try:
            got = webhook.wait_for(
                for_alert("pb-transport", "firing", alert_id=firing["alert_id"]),
                30,
                "delivery once Alertmanager is back",
            )
            assert got.alerts(alert_id=firing["alert_id"])[0]["labels"]["severity"] == "warning"
            wait_until(lambda: alert_topic.committed() == 1, 10, "offset committed after delivery")
        finally:
            late_stack.stop()


def test_undecodable_alert_record_is_parked_and_the_next_one_delivered(
    stack: AlertingStack,
    webhook: WebhookReceiver,
    alert_topic: AlertTopic,
    settings: Settings,
) -> None:
    garbage = b"\x07not avro at all"
    firing = case_sla_record(
        "FIRING", f"EXP-{uuid.uuid4().hex[:8]}", "KP-TRANSPORT", "PK-KP", "warning", waited_ms=13 * HOUR_MS
    )
    # Same key, so the same partition: the good record sits behind the bad one.
    alert_topic.send(garbage, key=firing["alert_id"])
    alert_topic.send(firing)
    with running_forwarder(alert_topic, stack.alertmanager_url, Metrics()):
        webhook.wait_for(
            for_alert("kp-transport", "firing", alert_id=firing["alert_id"]), 30, "the good record"
        )
        wait_until(lambda: alert_topic.committed() == 2, 10, "both records committed")
    parked = parked_records(settings, alert_topic, wait_s=10)
    assert len(parked) == 1
    dead = Codec().decode(contracts.DEAD_LETTERS, parked[0].value())
    assert (dead["source"], dead["topic"], dead["reason"], dead["value"]) == (
        "alert-forwarder",
        alert_topic.name,
        "bad_framing",
        garbage,
    )


def parked_records(settings: Settings, alert_topic: AlertTopic, wait_s: float) -> list[Any]:
    """What the forwarder parked in the test's dead-letter topic (waits up to ``wait_s`` for one)."""
    consumer = Consumer({**client_config(settings, alert_topic.bootstrap), "group.id": "dl-reader"})
    try:
        consumer.assign([TopicPartition(alert_topic.dead_letters, p, 0) for p in (0, 1)])
        parked: list[Any] = []
        deadline = time.monotonic() + wait_s
        while not parked and time.monotonic() < deadline:
            parked = [m for m in consumer.consume(num_messages=10, timeout=0.5) if m.error() is None]
        parked += [m for m in consumer.consume(num_messages=10, timeout=0.5) if m.error() is None]
    finally:
        consumer.close()
    return parked


def test_an_alert_with_an_odd_case_id_is_accepted_with_a_tracker_link(
    stack: AlertingStack,
    webhook: WebhookReceiver,
    alert_topic: AlertTopic,
    settings: Settings,
) -> None:
    """QA: case_id "A\\nB\\0C" gave generatorURL ".../#/case/A\\nB\\0C"; Alertmanager answered 422 and
    the alert was dead-lettered (alertmanager_rejected). Percent-encoded, it is delivered."""
    case_id = f"A\nB\x00C {uuid.uuid4().hex[:6]}#%/?"
    firing = case_sla_record("FIRING", case_id, "SD-TRANSPORT", "PK-SD", "warning", waited_ms=13 * HOUR_MS)
    alert_id = firing["alert_id"]
    with running_forwarder(alert_topic, stack.alertmanager_url, Metrics()):
        alert_topic.send(firing)
        got = webhook.wait_for(for_alert("sd-transport", "firing", alert_id=alert_id), 30, "the odd-id alert")
        wait_until(lambda: alert_topic.committed() == 1, 10, "the record committed")
    (alert,) = got.alerts(alert_id=alert_id)
    link = f"http://127.0.0.1:8050/#case/{quote(case_id, safe='')}"
    assert alert["generatorURL"] == link == alert["annotations"]["tracker_url"]
    assert alert["annotations"]["case_id"] == case_id
    assert unquote(urlsplit(link).fragment.removeprefix("case/")) == case_id
    (held,) = am_alerts(stack, alert_id)
    assert held["generatorURL"] == link
    assert parked_records(settings, alert_topic, wait_s=1) == []


# -- (b) a KPI rule fires from scraped metrics ---------------------------------------------------
def test_kpi_below_target_fires_from_scraped_metrics_and_resolves(
    stack: AlertingStack,
    webhook: WebhookReceiver,
    kpi_endpoint: tuple[Metrics, int],
) -> None:
    metrics, _port = kpi_endpoint
    # The oracle reads the target straight from the missions file.
    spec = yaml.safe_load(DEFAULT_MISSIONS_FILE.read_text())
    (target,) = [t for m in spec["missions"] for t in m.get("targets", []) if t["stage"] == "permit_handoff"]
    floor = float(target["min_sla_compliance"])
    group = {"mission": "export_competitiveness", "stage": "permit_handoff", "province": "PK-SD"}
    metrics.sla_compliance.labels(agency="SD-TRANSPORT", **group).set(floor - 0.15)
    metrics.sla_compliance.labels(agency="BA-TRANSPORT", **{**group, "province": "PK-BA"}).set(floor)
    for agency, province in (("SD-TRANSPORT", "PK-SD"), ("BA-TRANSPORT", "PK-BA")):
        # a window that just ended with the target's minimum completions: the rule may judge it
        window = {**group, "agency": agency, "province": province}
        metrics.sla_window_completions.labels(**window).set(int(target["min_completions"]))
        metrics.sla_window_end.labels(**window).set(time.time())

    got = webhook.wait_for(
        for_alert("sd-transport", "firing", alertname="SlaComplianceBelowTarget"),
        45,
        "KPI alert from Prometheus at the Sindh transport desk",
    )
    (alert,) = got.alerts(alertname="SlaComplianceBelowTarget")
    assert {k: alert["labels"][k] for k in ("mission", "stage", "agency", "province", "severity")} == {
        **group,
        "agency": "SD-TRANSPORT",
        "severity": "warning",
    }
    assert f"is {round((floor - 0.15) * 100)}%" in alert["annotations"]["summary"]

    metrics.sla_compliance.labels(agency="SD-TRANSPORT", **group).set(min(1.0, floor + 0.05))
    webhook.wait_for(
        for_alert("sd-transport", "resolved", alertname="SlaComplianceBelowTarget"), 45, "KPI alert resolved"
    )
    assert not webhook.matching(
        lambda n: bool(n.alerts(alertname="SlaComplianceBelowTarget", agency="BA-TRANSPORT"))
    )


# -- (c) a silent feed inhibits the SLA alerts of its agency -------------------------------------
def test_feed_silent_inhibits_case_alerts_of_the_same_agency_only(
    stack: AlertingStack,
    webhook: WebhookReceiver,
    alert_topic: AlertTopic,
) -> None:
    feed = feed_silent_record("KPT", silent_ms=45 * 60_000)
    port_case = case_sla_record(
        "FIRING", f"EXP-{uuid.uuid4().hex[:8]}", "KPT", "PK-SD", "warning", waited_ms=13 * HOUR_MS
    )
    port_case["stage"], port_case["port"] = "port_loading", "KPT"
    other = case_sla_record(
        "FIRING", f"EXP-{uuid.uuid4().hex[:8]}", "PQA", "PK-SD", "warning", waited_ms=13 * HOUR_MS
    )
    other["stage"], other["port"] = "port_loading", "PQA"
    with running_forwarder(alert_topic, stack.alertmanager_url, Metrics()):
        alert_topic.send(feed)
        webhook.wait_for(
            for_alert("ports-critical", "firing", alertname="FeedSilent", agency="KPT"),
            30,
            "FeedSilent at the ports critical desk",
        )
        alert_topic.send(port_case)
        alert_topic.send(other)
        # The control case (another port authority, no silent feed) is delivered...
        webhook.wait_for(for_alert("ports", "firing", alert_id=other["alert_id"]), 30, "the PQA case alert")

        # ...while KPT's case alert is held back, and Alertmanager says why.
        def inhibited() -> bool:
            found = am_alerts(stack, port_case["alert_id"])
            return (
                bool(found)
                and found[0]["status"]["state"] == "suppressed"
                and bool(found[0]["status"]["inhibitedBy"])
            )

        wait_until(inhibited, 15, "the KPT case alert to be inhibited")
        time.sleep(3)  # a few group intervals: had it not been inhibited, it would have been sent
        assert not webhook.matching(lambda n: bool(n.alerts(alert_id=port_case["alert_id"])))


def test_an_escalated_case_pages_the_critical_lanes_and_the_warning_desk_hears_no_false_resolve(
    stack: AlertingStack,
    webhook: WebhookReceiver,
    alert_topic: AlertTopic,
) -> None:
    """QA pass 6: warning past the SLA, then critical past twice the SLA (same alert_id). The
    critical desk and the command centre are paged; the warning stays firing in Alertmanager,
    inhibited by the critical, so the warning desk is not told the case resolved while it waits."""
    case_id = f"EXP-{uuid.uuid4().hex[:8]}"
    warning = case_sla_record("FIRING", case_id, "BA-TRANSPORT", "PK-BA", "warning", waited_ms=13 * HOUR_MS)
    alert_id = warning["alert_id"]
    with running_forwarder(alert_topic, stack.alertmanager_url, Metrics()):
        alert_topic.send(warning)
        webhook.wait_for(
            for_alert("ba-transport", "firing", alert_id=alert_id), 30, "the warning at the desk"
        )
        critical = {**warning, "severity": "critical", "value": float(13 * HOUR_MS), "emitted_at": now_ms()}
        alert_topic.send(critical)
        webhook.wait_for(
            for_alert("ba-transport-critical", "firing", alert_id=alert_id), 30, "the critical desk paged"
        )
        webhook.wait_for(for_alert("command-centre", "firing", alert_id=alert_id), 10, "command centre copy")

        def warning_inhibited() -> bool:
            held = {a["labels"]["severity"]: a["status"] for a in am_alerts(stack, alert_id)}
            return (
                held.get("critical", {}).get("state") == "active"
                and held.get("warning", {}).get("state") == "suppressed"
                and bool(held["warning"]["inhibitedBy"])
            )

        wait_until(warning_inhibited, 15, "the warning inhibited by the critical")
        time.sleep(LEASE_S + 2.5)  # past a lease: both are re-posted, the warning is not resolved
        assert warning_inhibited()
        assert not webhook.matching(for_alert("ba-transport", "resolved", alert_id=alert_id))

        resolved = {**critical, "state": "RESOLVED", "ends_at": now_ms() - 1_000, "emitted_at": now_ms()}
        alert_topic.send(resolved)
        webhook.wait_for(
            for_alert("ba-transport-critical", "resolved", alert_id=alert_id), 30, "critical resolved"
        )
        wait_until(
            lambda: (
                {a["status"]["state"] for a in am_alerts(stack, alert_id)} <= {"resolved"}
                or not am_alerts(stack, alert_id)
            ),
            30,
            "both label sets resolved in Alertmanager",
        )


def test_restarted_forwarder_keeps_renewing_what_it_delivered_before(
    stack: AlertingStack, webhook: WebhookReceiver, alert_topic: AlertTopic
) -> None:
    firing = case_sla_record(
        "FIRING", f"EXP-{uuid.uuid4().hex[:8]}", "BA-TRANSPORT", "PK-BA", "warning", waited_ms=20 * HOUR_MS
    )
    alert_id = firing["alert_id"]
    lease_s = 30.0  # well past a restart (group rejoin takes 3-5 s on Tansu, far more on a loaded machine)
    with running_forwarder(alert_topic, stack.alertmanager_url, Metrics(), lease_s):
        alert_topic.send(firing)
        webhook.wait_for(for_alert("ba-transport", "firing", alert_id=alert_id), 30, "first delivery")
        wait_until(lambda: alert_topic.committed() == 1, 10, "offset committed")
    stopped_at = time.monotonic()  # the first forwarder's last lease ends within lease_s of this
    restarted = Metrics()
    with running_forwarder(alert_topic, stack.alertmanager_url, restarted, lease_s):
        # Nothing new on the topic: the held alert comes back from the records before the commit.
        wait_until(lambda: restarted.registry.get_sample_value("backbone_alerts_firing") == 1, 20, "restore")
        time.sleep(
            max(0.0, stopped_at + lease_s + 2.5 - time.monotonic())
        )  # past the first forwarder's lease
        (held,) = am_alerts(stack, alert_id)
        assert held["status"]["state"] == "active"
        assert not webhook.matching(for_alert("ba-transport", "resolved", alert_id=alert_id))
        alert_topic.send({**firing, "state": "RESOLVED", "ends_at": now_ms(), "emitted_at": now_ms()})
        webhook.wait_for(
            for_alert("ba-transport", "resolved", alert_id=alert_id), 30, "resolved after restart"
        )
    assert len(webhook.matching(for_alert("ba-transport", "firing", alert_id=alert_id))) == 1


# -- the full path: simulator → processor → alerts topic → forwarder → Alertmanager → desk --------
def _stalled_permit_case(now: int) -> tuple[list[Any], Any]:
    """From a simulated run, a shipment stuck after its permit request (cleared 13 h+ ago), and a
    permit request of another case by the same department (a sign of life of that feed)."""
    from producers.simulator import DAY, MINUTE, SimulationConfig, generate

    owners = yaml.safe_load(DEFAULT_MISSIONS_FILE.read_text())["missions"][0]["journeys"][0]["stages"][1]
    assert owners["id"] == "permit_handoff"
    for seed in range(11, 31):
        config = SimulationConfig(
            start_ms=now - 3 * DAY,
            cases=60,
            span_ms=2 * DAY,
            seed=seed,
            stall_share=0.5,
            duplicate_share=0.0,
            out_of_order_share=0.0,
            until_ms=now - 10 * MINUTE,
        )
        by_case: dict[str, list[Any]] = {}
        for event in generate(config):
            by_case.setdefault(event.raw["case_id"], []).append(event)
        for events in by_case.values():
            statuses = [(e.topic, e.raw["status"]) for e in events]
            cleared = [e.raw for e in events if (e.topic, e.raw["status"]) == (contracts.CUSTOMS, "CLEARED")]
            if not cleared or statuses[-1] != (contracts.PERMITS, "REQUESTED"):
                continue
            wait_h = (now - cleared[0]["occurred_at"]) / HOUR_MS
            owner = owners["owner_by_province"].get(cleared[0]["province"])
            if owner is None or wait_h < 13 or abs(wait_h - 24) < 0.5:
                continue
            sign_of_life = [
                e
                for other in by_case.values()
                if other is not events
                for e in other
                if e.topic == contracts.PERMITS
                and e.raw["status"] == "REQUESTED"
                and e.raw["agency"] == owner
            ]
            if sign_of_life:
                return events, sign_of_life[0]
    pytest.fail("no simulated shipment stalled after its permit request in 20 seeds")


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_stalled_simulated_case_pages_its_desk_and_resolves_when_the_late_event_arrives(
    stack: AlertingStack, webhook: WebhookReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = now_ms()
    events, sign_of_life = _stalled_permit_case(now)
    case_id = events[0].raw["case_id"]
    # The oracle: SEMANTICS.md over the raw events and the missions file, not the processor's code.
    stage = yaml.safe_load(DEFAULT_MISSIONS_FILE.read_text())["missions"][0]["journeys"][0]["stages"][1]
    sla_ms = int(stage["sla"].rstrip("h")) * HOUR_MS
    cleared = min(
        e.raw["occurred_at"] for e in events if e.raw["status"] == "CLEARED" and e.topic == contracts.CUSTOMS
    )
    start_event = next(
        e.raw for e in events if e.raw["status"] == "CLEARED" and e.raw["occurred_at"] == cleared
    )
    province, port = start_event["province"], start_event["port"]  # the stage's start event fixes both
    owner = stage["owner_by_province"][province]
    severity = "critical" if now - cleared > 2 * sla_ms else "warning"
    record_id = hashlib.sha1(
        f"{case_id}|export_competitiveness|export_shipment|permit_handoff".encode()
    ).hexdigest()
    alert_id = hashlib.sha1(f"CASE_SLA|{record_id}".encode()).hexdigest()
    desk = owner.lower() + ("-critical" if severity == "critical" else "")

    with TansuBroker(log_file=tmp_path / "tansu.log") as broker:
        for key in [k for k in os.environ if k.startswith("BACKBONE_")]:
            monkeypatch.delenv(key)
        env = {
            **os.environ,
            "BACKBONE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "BACKBONE_TOPIC_PARTITIONS": "2",
            "BACKBONE_DATA_DIR": str(tmp_path / "data"),
            "BACKBONE_CLOCK": "wall",
        }
        for key, value in env.items():
            if key.startswith("BACKBONE_"):
                monkeypatch.setenv(key, value)
        settings = load_settings()
        ensure_topics(settings, broker.bootstrap)
        cli = [sys.executable, "-m", "backbone"]
        logs = {name: tmp_path / f"{name}.log" for name in ("processor", "forwarder")}
        processor = subprocess.Popen(
            [*cli, "process", "--metrics-port", str(free_port())],
            env=env,
            stdout=logs["processor"].open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        forwarder = subprocess.Popen(
            [
                *cli,
                "alerting",
                "forward",
                "--alertmanager-url",
                stack.alertmanager_url,
                "--metrics-port",
                "-1",
                "--repost-interval",
                "1",
                "--firing-lease",
                "10",
            ],
            env=env,
            stdout=logs["forwarder"].open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            producer = Producer({**client_config(settings, broker.bootstrap), "acks": "all"})
            codec = Codec()

            def publish(topic: str, raw: dict[str, Any]) -> None:
                producer.produce(topic, value=codec.encode(topic, raw), key=raw["case_id"].encode())
                assert producer.flush(10) == 0

            fresh = now_ms()
            publish(
                contracts.PERMITS,
                {
                    **sign_of_life.raw,
                    "event_id": str(uuid.uuid4()),
                    "occurred_at": fresh - 60_000,
                    "published_at": fresh - 59_000,
                },
            )
            for event in events:
                publish(event.topic, event.raw)

            def hint() -> str:
                return " | ".join(f"{n}: {p.read_text(errors='replace')[-800:]}" for n, p in logs.items())

            try:
                got = webhook.wait_for(
                    for_alert(desk, "firing", alert_id=alert_id), 90, f"CaseSlaBreach for {case_id} at {desk}"
                )
            except pytest.fail.Exception:
                raise AssertionError(hint()) from None
            (alert,) = got.alerts(alert_id=alert_id)
            assert alert["labels"] == {
                "alertname": "CaseSlaBreach",
                "mission": "export_competitiveness",
                "stage": "permit_handoff",
                "agency": owner,
                "province": province,
                "port": port,
                "severity": severity,
                "alert_id": alert_id,
            }
            assert alert["annotations"]["case_id"] == case_id
            notes = alert["annotations"]
            assert notes["tracker_url"] == f"http://127.0.0.1:8050/#case/{quote(case_id, safe='')}"
            # the processor's summary and the forwarder's annotations state the same judged numbers
            assert f" has waited {notes['waiting_time']} at " in notes["summary"], notes
            assert notes["summary"].endswith(f": {notes['overdue_by']} past its {notes['threshold']} SLA"), (
                notes
            )
            assert alert["startsAt"].startswith(
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((cleared + sla_ms) / 1000))
            )

            # The permit is issued at last: the late event resolves the alert.
            requested = next(e for e in reversed(events) if e.topic == contracts.PERMITS)
            issued_at = now_ms() - 1000
            publish(
                contracts.PERMITS,
                {
                    **requested.raw,
                    "event_id": str(uuid.uuid4()),
                    "status": "ISSUED",
                    "occurred_at": issued_at,
                    "published_at": issued_at + 200,
                },
            )
            try:
                done = webhook.wait_for(
                    for_alert(desk, "resolved", alert_id=alert_id), 60, "resolved notification"
                )
            except pytest.fail.Exception:
                raise AssertionError(hint()) from None
            (res,) = done.alerts(alert_id=alert_id)
            assert res["annotations"]["resolved_at"].startswith(
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(issued_at / 1000))
            )
            assert len(webhook.matching(for_alert(desk, "firing", alert_id=alert_id))) == 1
        finally:
            _stop_process(forwarder)
            _stop_process(processor)
