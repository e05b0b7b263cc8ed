"""Helpers for the producer and contract tests: hand-written valid records, a fresh broker, a plain consumer.

The sample records are written out by hand (not built by the code under test), and
:func:`expected_raw` derives their raw shape with plain arithmetic, so tests compare the
publisher's output against an independent oracle.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from backbone.config import Settings, load_settings
from backbone.embedded.broker import TansuBroker
from backbone.kafka import ensure_topics
from schemas import contracts

REPO = Path(__file__).resolve().parent.parent
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
OCCURRED_ISO = "2025-03-01T09:30:00.250+05:00"  # = 2025-03-01T04:30:00.250Z
OCCURRED_MS = 1_740_803_400_250


def new_event_id() -> str:
    return str(uuid.uuid4())


def sample(topic: str, case_id: str = "EXP-2025-0001", **overrides: Any) -> dict[str, Any]:
    """A valid record of ``topic`` in the file/rich shape (ISO timestamps, PKR decimal strings)."""
    base: dict[str, Any] = {
        "event_id": new_event_id(),
        "case_id": case_id,
        "occurred_at": OCCURRED_ISO,
        "published_at": "2025-03-01T09:31:00+05:00",
    }
    family: dict[str, dict[str, Any]] = {
        contracts.CUSTOMS: {
            "agency": "FBR-CUSTOMS",
            "province": "PK-PB",
            "status": "CLEARED",
            "port": "KPT",
            "hs_code": "5208.11",
            "declared_value_pkr": "1250000.75",
            "container_ids": ["MSCU1234567", "TGHU7654321"],
            "exporter_id": "NTN-4410021",
        },
        contracts.PERMITS: {
            "agency": "PB-TRANSPORT",
            "province": "PK-PB",
            "status": "ISSUED",
            "from_province": "PK-PB",
            "to_province": "PK-SD",
            "vehicle_reg": "LES-4521",
        },
        contracts.PORTS: {
            "agency": "PQA",
            "province": "PK-SD",
            "status": "GATE_IN",
            "port": "PQA",
            "terminal": "QICT",
            "container_id": "MSCU1234567",
            "vessel": "MAERSK KOWLOON",
        },
        contracts.REBATES: {
            "agency": "FBR-DRAWBACK",
            "province": "PK-IS",
            "status": "FILED",
            "exporter_id": "NTN-4410021",
            "amount_pkr": "84500.50",
        },
        contracts.ENERGY: {
            "agency": "NEPRA",
            "province": "PK-IS",
            "status": "DETERMINED",
            "regulator": "NEPRA",
            "instrument": "SRO 1234(I)/2025",
            "sector": "power",
        },
    }
    record = {**base, **family[topic]}
    record.update(overrides)
    return record


def iso_to_ms(text: str) -> int:
    """Independent ISO → epoch-ms (exact integer arithmetic on timedelta)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def expected_raw(topic: str, record: dict[str, Any]) -> dict[str, Any]:
    """The raw record the contract should carry for a sample: ms timestamps, paisa, defaults filled."""
    out: dict[str, Any] = {}
    for f in contracts.current(topic).schema["fields"]:
        name = f["name"]
        value = record.get(name, f.get("default"))
        if name in ("occurred_at", "published_at") and isinstance(value, str):
            value = iso_to_ms(value)
        elif name.endswith("_pkr") and value is not None:
            value = int(Decimal(str(value)) * 100)
        out[name] = value
    return out


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of this test's own: agency topics have fixed names, so isolation needs a broker."""
    with TansuBroker(log_file=tmp_path / "tansu.log") as b:
        yield b
        if b.process is not None:
            b.process.kill()  # memory storage: nothing to shut down gracefully (SIGTERM waits ~5 s)
            b.process.wait()


@pytest.fixture
def broker_settings(fresh_broker: TansuBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings (from the environment, as the CLI reads them) pointing at the fresh broker."""
    for key in list(os.environ):
        if key.startswith("BACKBONE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", fresh_broker.bootstrap)
    monkeypatch.setenv("BACKBONE_DATA_DIR", str(tmp_path / "data"))
    settings = load_settings()
    ensure_topics(settings, fresh_broker.bootstrap, contracts.INPUT_TOPICS, partitions=3)
    return settings


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """Read ``topic`` from offset 0 on every partition until ``expected`` messages (or the timeout).

    Counts messages instead of trusting high watermarks (Tansu reports them wrong), and keeps
    reading ~1 s past the expected count so that extra (duplicate) messages would be seen.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = list(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                if msg.error() is None:
                    messages.append(msg)
            if len(messages) >= expected and settle_until is None:
                settle_until = time.monotonic() + 1.0
            if settle_until is not None and time.monotonic() > settle_until:
                break
        return messages
    finally:
        consumer.close()


def unreachable_bootstrap() -> str:
    """A loopback address nothing listens on (a bound-then-closed free port)."""
    from backbone.embedded.broker import free_port

    return f"127.0.0.1:{free_port()}"
