"""A restarted `backbone up` replays ClickHouse's events into its fresh in-memory broker, so the
processors rebuild their state: an end event sent after the restart closes a case opened before
it, and backlog and money locked count the open cases of both runs.

Unit tests read the events back from chdb (every distinct event once, in stored order, the record
``backbone produce`` would have sent) and check how ``up`` plans its steps; the integration test
runs ``up`` twice on one data dir and compares the stored results with values computed by hand
from the input times."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from producers_fixtures import sample
from sink_fixtures import HOUR_MS, agency_events, chdb  # noqa: F401 - the chdb fixture
from up_fixtures import up_env

from backbone.config import load_settings
from backbone.runtime import SIMULATOR_SERIALS_PER_RUN, next_run_number, planned_services
from producers.records import prepare
from producers.simulator import SimulationConfig, generate
from schemas import contracts
from sinks import rows
from sinks.client import open_client
from sinks.history_replay import replay, stored_events

NOW_MS = int(time.time() * 1000)


def _store(client: Client, parts: list[list[tuple[str, dict[str, Any]]]]) -> list[str]:
    """Insert like the sink: one insert per part (each its own ``ingested_at``), offsets counting on.

    Returns the event ids in the order a replay must follow: by insert, then topic and offset,
    an event stored twice (a sink replay) at its last copy, the one ``events_distinct`` keeps.
    """
    spec = rows.events_spec()
    position: dict[str, tuple[int, str, int]] = {}
    offset = 0
    for n, part in enumerate(parts):
        batch = []
        for topic, raw in part:
            batch.append(rows.event_row(topic, raw, 0, offset))
            position[raw["event_id"]] = (n, topic, offset)
            offset += 1
        client.insert_arrow("events", spec.to_arrow(batch))
        time.sleep(0.01)  # a later insert, a later ingested_at
    return sorted(position, key=position.__getitem__)


def test_every_stored_event_is_read_once_in_stored_order_as_the_record_sent(chdb: Client) -> None:  # noqa: F811
    events = agency_events(12, seed=3)
    order = _store(chdb, [events[:20], events[20:40], events[40:], events[:5]])  # the last: re-stored copies
    got = list(stored_events(chdb, chunk_rows=7))  # pages of 7: page edges fall inside inserts
    assert len(got) == len(events)
    assert [r["event_id"] for _, r in got] == order
    sent = {r["event_id"]: (t, r) for t, r in events}
    for topic, record in got:
        want_topic, raw = sent[record["event_id"]]
        assert topic == want_topic
        assert prepare(topic, record, NOW_MS) == raw  # what the agency sent, in the raw shape


class _Publisher:
    """Records what ``replay`` hands over; refuses one record to show it is reported, not lost."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def publish_many(self, topic: str, records: list[dict[str, Any]]) -> list[Any]:
        from producers.publisher import Rejected

        self.calls.append((topic, [r["event_id"] for r in records]))
        return [
            Rejected(i, "agency", "no longer in the registry")
            for i, r in enumerate(records)
            if r["case_id"] == "EXP-3-00001"
        ]

    def poll_results(self) -> list[Any]:
        return []

    def flush(self) -> list[Any]:
        return []


def test_replay_publishes_runs_of_one_topic_in_order_and_reports_refusals(chdb: Client) -> None:  # noqa: F811
    events = agency_events(6, seed=3)
    order = _store(chdb, [events])
    publisher = _Publisher()
    result = replay(chdb, publisher)
    assert [e for _, ids in publisher.calls for e in ids] == order
    topic_of = {r["event_id"]: t for t, r in events}
    assert all({topic_of[e] for e in ids} == {topic} for topic, ids in publisher.calls)
    refused = [r for t, r in events if r["case_id"] == "EXP-3-00001"]
    assert len(result.rejected) == len(refused) > 0
    assert all("'EXP-3-00001'" in line and "no longer in the registry" in line for line in result.rejected)
    assert result.total == len(events) - len(refused)


def test_up_replays_history_only_into_its_embedded_broker_and_numbers_simulated_cases_past_earlier_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BACKBONE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert [next_run_number(tmp_path) for _ in range(3)] == [1, 2, 3]
    names = [s.name for s in planned_services(load_settings(), simulate=True, rate=1, workers=1, seed=1)]
    assert names[:2] == ["db-migrate", "history-replay"]  # before the sink and the processors
    production = load_settings(kafka_bootstrap_servers="kafka:9092")  # a real broker keeps its topics
    assert "history-replay" not in [s.name for s in planned_services(production, True, 1, 1, 1)]
    third = planned_services(load_settings(), simulate=True, rate=1, workers=1, seed=1, run_number=3)
    argv = next(s.argv for s in third if s.name == "simulator")
    assert argv[argv.index("--first-serial") + 1] == str(2 * SIMULATOR_SERIALS_PER_RUN + 1)
    config = SimulationConfig(
        start_ms=NOW_MS - 86_400_000, cases=30, span_ms=3_600_000, first_serial=2_000_001
    )
    serials = {int(e.raw["case_id"].rsplit("-", 1)[1]) for e in generate(config)}
    assert min(serials) == 2_000_001


# -- integration: two runs of `up` on one data dir ----------------------------------------------
def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _up_run(data_dir: Path, files: list[tuple[str, Path]], duration_s: int) -> str:
    """One `up --no-simulate` run: wait for the board line, produce ``files``, wait for the end."""
    env = up_env(data_dir)
    argv = [sys.executable, "-m", "backbone", "up", "--no-simulate", "--time-scale", "1"]
    proc = subprocess.Popen(
        [*argv, "--duration", str(duration_s)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    bootstrap = None
    for line in proc.stdout:
        lines.append(line)
        if "embedded Kafka (Tansu) on " in line:
            bootstrap = line.rsplit(" ", 1)[1].strip()
        if line.startswith("board:"):
            break
    assert bootstrap, "".join(lines)
    for topic, path in files:
        sent = subprocess.run(
            [
                sys.executable,
                "-m",
                "backbone",
                "produce",
                "-t",
                topic,
                "-f",
                str(path),
                "--bootstrap",
                bootstrap,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
    rest, _ = proc.communicate(timeout=duration_s + 120)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output[-3000:]
    return output


@pytest.mark.integration
@pytest.mark.slow
def test_a_restarted_up_rebuilds_state_from_the_stored_history(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    filed, cleared = now - timedelta(hours=5), now - timedelta(hours=2)

    def jsonl(name: str, topic: str, **fields: Any) -> tuple[str, Path]:
        import json

        path = tmp_path / name
        path.write_text(json.dumps(sample(topic, **fields)) + "\n", encoding="utf-8")
        return topic, path

    at = {"occurred_at": _iso(filed), "published_at": _iso(filed)}
    first = [
        jsonl("c1.jsonl", contracts.CUSTOMS, case_id="RST-1", status="FILED", **at),
        jsonl("r1.jsonl", contracts.REBATES, case_id="RST-R1", status="FILED", amount_pkr="100.25", **at),
    ]
    at = {"occurred_at": _iso(cleared), "published_at": _iso(cleared)}
    second = [
        jsonl("c2.jsonl", contracts.CUSTOMS, case_id="RST-1", status="CLEARED", **at),
        jsonl("r2.jsonl", contracts.REBATES, case_id="RST-R2", status="FILED", amount_pkr="7.00", **at),
    ]
    data_dir = tmp_path / "data"
    out1 = _up_run(data_dir, first, 25)
    assert "history-replay: replayed 0 stored events" in out1, out1[-3000:]
    out2 = _up_run(data_dir, second, 30)
    assert "history-replay: replayed 2 stored events" in out2, out2[-3000:]

    client = open_client(load_settings(data_dir=data_dir))
    try:
        record = client.query(
            "SELECT state, duration_ms, sla_met FROM stage_records_latest "
            "WHERE case_id = 'RST-1' AND stage = 'customs_clearance'"
        ).result_rows
        backlog = client.query(
            "SELECT open_cases, amount_pkr_open FROM backlog_latest WHERE stage = 'rebate_payment' "
            "AND open_cases > 0"
        ).result_rows
    finally:
        client.close()
    # filed in run 1, cleared in run 2: 3 h, within the 24 h SLA of config/missions.yaml
    assert record == [("CLOSED", int((cleared - filed).total_seconds() * 1000), True)]
    # both runs' claims are open: 100.25 + 7.00 locked (run 2 alone showed 1 case, 7.00)
    assert backlog == [(2, Decimal("107.25"))]
