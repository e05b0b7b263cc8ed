"""Fixtures and record builders for the storage and sink tests (imported by tests/test_*sink*.py).

Records are built here independently of ``sinks.rows``: tests compare what ClickHouse holds with
these raw records, never with the sink's own conversion.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, Producer, TopicPartition

from backbone.config import Settings, load_settings
from backbone.embedded.broker import TansuBroker
from backbone.kafka import client_config, ensure_topics
from schemas import contracts
from schemas.codec import Codec
from sinks.client import open_client
from sinks.migrate import migrate

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR_MS = 3_600_000


@pytest.fixture
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """A Tansu broker of this test's own (starts in < 1 s): the sink reads the canonical topic
    names, which other tests write to on the session broker."""
    log_file = tmp_path_factory.mktemp("sink-broker") / "tansu.log"
    with TansuBroker(log_file=log_file) as b:
        ensure_topics(load_settings(kafka_bootstrap_servers=b.bootstrap), b.bootstrap, partitions=3)
        yield b


@pytest.fixture
def sink_settings(private_broker: TansuBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings on the private broker with a private chdb path and a free metrics port."""
    for key in list(os.environ):
        if key.startswith("BACKBONE_"):
            monkeypatch.delenv(key)
    env = {
        "BACKBONE_KAFKA_BOOTSTRAP_SERVERS": private_broker.bootstrap,
        "BACKBONE_DATA_DIR": str(tmp_path / "data"),
        "BACKBONE_SINK_METRICS_PORT": "0",
        "BACKBONE_BOARD_PORT": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load_settings()


@pytest.fixture
def chdb(tmp_path: Path) -> Iterator[Client]:
    """A migrated database in a private chdb path, closed after the test."""
    settings = load_settings(data_dir=tmp_path / "chdb-data")
    client = open_client(settings)
    migrate(client)
    try:
        yield client
    finally:
        client.close()


# -- record builders (raw shape: epoch ms, paisa) -------------------------------------------------
def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def envelope(
    case_id: str, status: str, occurred_at: int, agency: str, province: str, publish_delay_ms: int
) -> dict[str, Any]:
    """The fields every agency event carries, first, in the contracts' order; each family's
    builder adds its own fields after them (published ``publish_delay_ms`` after the event)."""
    return {
        "event_id": str(uuid.uuid4()),
        "case_id": case_id,
        "agency": agency,
        "province": province,
        "status": status,
        "occurred_at": occurred_at,
        "published_at": occurred_at + publish_delay_ms,
    }


def customs_event(case_id: str, status: str, occurred_at: int, **over: Any) -> dict[str, Any]:
    return {
        **envelope(case_id, status, occurred_at, "FBR-CUSTOMS", "PK-PB", publish_delay_ms=1000),
        "port": "KPT",
        "hs_code": "520512",
        "declared_value_pkr": 1_234_567_89,
        "container_ids": ["MSCU1234565", "MSCU7654321"],
        "exporter_id": "NTN-1",
        "gd_number": None,
        **over,
    }


def permit_event(case_id: str, status: str, occurred_at: int, **over: Any) -> dict[str, Any]:
    return {
        **envelope(case_id, status, occurred_at, "SD-TRANSPORT", "PK-SD", publish_delay_ms=500),
        "from_province": "PK-PB",
        "to_province": "PK-SD",
        "vehicle_reg": "LES-1234",
        **over,
    }


def port_event(case_id: str, status: str, occurred_at: int, **over: Any) -> dict[str, Any]:
    return {
        **envelope(case_id, status, occurred_at, "PQA", "PK-SD", publish_delay_ms=200),
        "port": "PQA",
        "terminal": "QICT",
        "container_id": "MSCU1234565",
        "vessel": None,
        **over,
    }


def rebate_event(case_id: str, status: str, occurred_at: int, **over: Any) -> dict[str, Any]:
    return {
        **envelope(case_id, status, occurred_at, "FBR-DRAWBACK", "PK-PB", publish_delay_ms=100),
        "exporter_id": "NTN-9",
        "amount_pkr": 50_000_00,
        **over,
    }


def energy_event(case_id: str, status: str, occurred_at: int, **over: Any) -> dict[str, Any]:
    return {
        **envelope(case_id, status, occurred_at, "NEPRA", "PK-IS", publish_delay_ms=100),
        "regulator": "NEPRA",
        "instrument": "SRO-1/2026",
        "sector": "power",
        **over,
    }


def agency_events(n_cases: int, seed: int = 1) -> list[tuple[str, dict[str, Any]]]:
    """(topic, raw event) for ``n_cases`` export cases plus rebate and energy cases, all five families."""
    rng = random.Random(seed)
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(n_cases):
        case = f"EXP-{seed}-{i:05d}"
        t0 = BASE_MS + rng.randrange(0, 30 * 24) * HOUR_MS
        out.append(
            (contracts.CUSTOMS, customs_event(case, "FILED", t0, gd_number=f"GD-{i}" if i % 2 else None))
        )
        out.append((contracts.CUSTOMS, customs_event(case, "CLEARED", t0 + rng.randrange(1, 30) * HOUR_MS)))
        out.append((contracts.PERMITS, permit_event(case, "ISSUED", t0 + 40 * HOUR_MS)))
        out.append((contracts.PORTS, port_event(case, "GATE_IN", t0 + 50 * HOUR_MS, vessel="IMO9811000")))
        if i % 3 == 0:
            claim = f"DBK-{seed}-{i:05d}"
            out.append(
                (contracts.REBATES, rebate_event(claim, "FILED", t0, amount_pkr=rng.randrange(1, 10**9)))
            )
        if i % 5 == 0:
            out.append((contracts.ENERGY, energy_event(f"TAR-{seed}-{i}", "DETERMINED", t0)))
    return out


def stage_record(case_id: str, version: int, state: str = "CLOSED", **over: Any) -> dict[str, Any]:
    started = BASE_MS
    ended = BASE_MS + 5 * HOUR_MS if state == "CLOSED" else None
    rec: dict[str, Any] = {
        "record_id": sha1(f"{case_id}|export_competitiveness|export_shipment|customs_clearance"),
        "case_id": case_id,
        "mission": "export_competitiveness",
        "journey": "export_shipment",
        "stage": "customs_clearance",
        "owner_agency": "FBR-CUSTOMS",
        "province": "PK-PB",
        "port": "KPT",
        "state": state,
        "started_at": started,
        "ended_at": ended,
        "duration_ms": None if ended is None else ended - started,
        "sla_ms": 24 * HOUR_MS,
        "sla_met": None if ended is None else True,
        "amount_pkr": None,
        "version": version,
    }
    rec.update(over)
    return rec


def kpi_window(i: int, version: int, **over: Any) -> dict[str, Any]:
    start = BASE_MS + i * HOUR_MS
    rec: dict[str, Any] = {
        "kpi_id": sha1(
            f"1h|{start}|export_competitiveness|export_shipment|customs_clearance|FBR-CUSTOMS|PK-PB|KPT"
        ),
        "window": "1h",
        "window_start": start,
        "window_end": start + HOUR_MS,
        "mission": "export_competitiveness",
        "journey": "export_shipment",
        "stage": "customs_clearance",
        "owner_agency": "FBR-CUSTOMS",
        "province": "PK-PB",
        "port": "KPT",
        "completions": 10 + i,
        "sla_met": 9,
        "sla_compliance": 9 / (10 + i),
        "p50_ms": 3_600_000,
        "p90_ms": 7_200_000,
        "mean_ms": 4_000_000.5,
        "throughput_per_h": float(10 + i),
        "late_events": 0,
        "version": version,
    }
    rec.update(over)
    return rec


def alert(i: int, state: str, emitted_at: int) -> dict[str, Any]:
    return {
        "alert_id": sha1(f"CASE_SLA|{i}"),
        "kind": "CASE_SLA",
        "state": state,
        "severity": "warning",
        "mission": "export_competitiveness",
        "journey": "export_shipment",
        "stage": "customs_clearance",
        "agency": "FBR-CUSTOMS",
        "province": "PK-PB",
        "port": "KPT",
        "case_id": f"EXP-{i}",
        "summary": f"case EXP-{i} waits past its SLA",
        "starts_at": BASE_MS + 24 * HOUR_MS,
        "ends_at": BASE_MS + 30 * HOUR_MS if state == "RESOLVED" else None,
        "waiting_since": BASE_MS,
        "value": 1000.0,
        "threshold": float(24 * HOUR_MS),
        "emitted_at": emitted_at,
    }


def backlog(i: int, version: int, open_cases: int) -> dict[str, Any]:
    return {
        "backlog_id": sha1(f"g{i}"),
        "mission": "export_competitiveness",
        "journey": "rebate_claim",
        "stage": "rebate_payment",
        "owner_agency": "FBR-DRAWBACK",
        "province": f"PK-{['PB', 'SD', 'KP'][i % 3]}",
        "port": "",
        "open_cases": open_cases,
        "oldest_started_at": BASE_MS if open_cases else None,
        "amount_pkr_open": open_cases * 100_00 if open_cases else None,
        "as_of": BASE_MS + version,
        "version": version,
    }


def freshness(agency: str, version: int) -> dict[str, Any]:
    return {
        "agency": agency,
        "topic": contracts.CUSTOMS,
        "last_occurred_at": BASE_MS + version,
        "last_published_at": BASE_MS + version + 10,
        "last_seen_at": BASE_MS + version + 20,
        "events_total": version,
        "version": version,
    }


def dead_letter(i: int) -> dict[str, Any]:
    return {
        "dead_letter_id": sha1(f"{contracts.CUSTOMS}|0|{i}"),
        "source": "processor",
        "topic": contracts.CUSTOMS,
        "partition": 0,
        "offset": i,
        "key": f"EXP-{i}".encode(),
        "value": b"\x00\xffnot avro",
        "reason": "undecodable",
        "detail": "Avro body is corrupt",
        "received_at": BASE_MS + i,
    }


# -- Kafka helpers ---------------------------------------------------------------------------------
def produce(
    settings: Settings, records: list[tuple[str, dict[str, Any]]], key_field: str | None = None
) -> None:
    """Encode with the project's codec and produce, keyed by case_id (or the given field)."""
    codec = Codec()
    producer = Producer(
        {**client_config(settings), "enable.idempotence": True, "acks": "all", "linger.ms": 5}
    )
    for topic, raw in records:
        key = raw.get(key_field or "case_id") or raw.get("record_id") or raw.get("alert_id")
        producer.produce(
            topic, value=codec.encode(topic, raw), key=None if key is None else str(key).encode()
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "producer could not deliver every record"


def produce_bytes(settings: Settings, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    producer = Producer(client_config(settings))
    for v in values:
        producer.produce(topic, value=v, key=key)
    assert producer.flush(30) == 0


def committed_total(settings: Settings, group: str, topics: tuple[str, ...]) -> int:
    """Sum of the group's committed offsets over every partition of ``topics`` (0 when none)."""
    consumer = Consumer({**client_config(settings), "group.id": group, "enable.auto.commit": False})
    try:
        md = consumer.list_topics(timeout=10)
        tps = [TopicPartition(t, p) for t in topics for p in md.topics[t].partitions]
        return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
    finally:
        consumer.close()


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


ALL_TOPICS = contracts.INPUT_TOPICS + contracts.OUTPUT_TOPICS


class SinkThread:
    """Runs a :class:`sinks.sink.Sink` in a thread of the test process (same chdb engine)."""

    def __init__(self, settings: Settings, inserter: Any, group: str, **config: Any) -> None:
        import threading

        from backbone.metrics import Metrics
        from sinks.sink import Sink, SinkConfig

        self.settings = settings
        self.group = group
        self.metrics = Metrics()
        defaults: dict[str, Any] = {"max_batch_age_s": 0.3, "retry_initial_s": 0.05, "retry_max_s": 0.5}
        self.sink = Sink(
            settings, inserter, self.metrics, SinkConfig(group_id=group, **{**defaults, **config})
        )
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"sink-{group}")

    def _run(self) -> None:
        try:
            self.sink.run(self.stop_event)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self) -> SinkThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_committed(self, total: int, timeout_s: float = 60.0) -> None:
        def done() -> bool:
            if self.error is not None:
                raise AssertionError(f"sink failed: {self.error!r}") from self.error
            return committed_total(self.settings, self.group, ALL_TOPICS) >= total

        wait_for(done, timeout_s, f"group {self.group} to commit {total} offsets", interval_s=0.5)

    def stop(self, timeout_s: float = 60.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "sink thread did not stop"
        if self.error is not None:
            raise AssertionError(f"sink failed: {self.error!r}") from self.error

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value
