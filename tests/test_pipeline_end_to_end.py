"""Simulated traffic → processors (``backbone process``) → sink → ClickHouse equals the oracle.

The same comparison the processor tests make on the output topics (``processor_fixtures.
differences``) is made here on what the board reads: the ``*_latest`` / ``alerts_history``
views of ClickHouse, through a reader with the topic reader's interface. Then every topic is
replayed into ClickHouse by a second consumer group: still no duplicates, still the oracle.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from processor_fixtures import (  # noqa: F401 - module_broker is a fixture
    OutputReader,
    WorkerProcess,
    create_topics,
    differences,
    module_broker,
    oracle_for,
    publish_events,
    scrape_metrics,
    simulated_events,
    wait_until,
    worker_env,
)
from sink_fixtures import SinkThread

from backbone.config import load_settings
from backbone.embedded.broker import TansuBroker
from schemas import contracts
from sinks import rows
from sinks.client import open_client
from sinks.migrate import migrate

pytestmark = pytest.mark.integration

LATEST_VIEWS = {
    contracts.STAGE_RECORDS: "stage_records_latest",
    contracts.KPI_WINDOWS: "kpi_windows_latest",
    contracts.BACKLOG: "backlog_latest",
    contracts.FEED_FRESHNESS: "feed_freshness_latest",
    contracts.ALERTS: "alerts_history",
}


def _raw_select(topic: str) -> str:
    """Columns back in the contracts' raw shape: epoch ms for times, paisa for money."""
    exprs = []
    for c in rows.output_spec(topic).columns:
        if c.kind == "timestamp":
            exprs.append(f"toUnixTimestamp64Milli({c.name}) AS {c.name}")
        elif c.kind == "money":
            exprs.append(f"if(isNull({c.name}), NULL, toInt64({c.name} * 100)) AS {c.name}")
        else:
            exprs.append(f"`{c.name}`")
    return ", ".join(exprs)


class ClickHouseReader:
    """What the board sees, with :class:`processor_fixtures.OutputReader`'s interface."""

    def __init__(self, client: Client) -> None:
        self.records: dict[str, list[dict[str, Any]]] = {}
        for topic, view in LATEST_VIEWS.items():
            result = client.query(f"SELECT {_raw_select(topic)} FROM {view}")
            bools = {c.name for c in rows.output_spec(topic).columns if c.kind == "bool"}
            self.records[topic] = [
                {k: (bool(v) if k in bools and v is not None else v) for k, v in r.items()}
                for r in result.named_results()
            ]

    def latest(self, topic: str, key: str, version: str | None = "version") -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for rec in self.records[topic]:
            assert rec[key] not in out, f"{topic}: {key} {rec[key]} shows twice on the board"
            out[rec[key]] = rec
        return out


def _check_board_equals_topics(client: Client, topics: OutputReader) -> None:
    """The sink's own contract: the board shows exactly the latest record per id of every topic."""
    board = ClickHouseReader(client)
    for topic, key in (
        (contracts.STAGE_RECORDS, "record_id"),
        (contracts.KPI_WINDOWS, "kpi_id"),
        (contracts.BACKLOG, "backlog_id"),
        (contracts.FEED_FRESHNESS, "agency"),
    ):
        want = topics.latest(topic, key)
        got = board.latest(topic, key)
        assert set(got) == set(want), (
            f"{topic}: {len(set(want) - set(got))} missing, {len(set(got) - set(want))} extra"
        )
        wrong = [k for k in want if {f: got[k][f] for f in want[k]} != want[k]]
        assert not wrong, f"{topic}: {len(wrong)} records differ, e.g. {got[wrong[0]]} != {want[wrong[0]]}"
    want_alerts = {(a["alert_id"], a["state"]) for a in topics.records[contracts.ALERTS]}
    assert {(a["alert_id"], a["state"]) for a in board.records[contracts.ALERTS]} == want_alerts
    want_dead = {d["dead_letter_id"] for d in topics.records[contracts.DEAD_LETTERS]}
    got_dead = {r[0] for r in client.query("SELECT dead_letter_id FROM dead_letters_latest").result_rows}
    assert got_dead == want_dead


def _check_board_equals_oracle(client: Client, expected: Any) -> None:
    problems = differences(ClickHouseReader(client), expected, limit=20)
    assert not problems, "ClickHouse differs from the oracle:\n" + "\n".join(problems)
    events = {r[0] for r in client.query("SELECT toString(event_id) FROM events_distinct").result_rows}
    assert events == set(expected.events["event_id"])
    assert client.query("SELECT count() FROM events_distinct").result_rows == [(len(expected.events),)]
    dead = client.query("SELECT source, count() FROM dead_letters_latest GROUP BY source").result_rows
    assert dict(dead) == {"processor": len(expected.invalid)}


def test_simulated_traffic_through_processors_and_sink_equals_the_oracle(
    module_broker: TansuBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    events = simulated_events(cases=300, seed=11)  # as in test_processor_worker.py
    expected = oracle_for(events)
    assert expected.invalid and expected.duplicates, (
        "the simulation should include invalid and duplicate events"
    )
    create_topics(module_broker.bootstrap)
    settings = load_settings(kafka_bootstrap_servers=module_broker.bootstrap, data_dir=tmp_path / "data")
    client = open_client(settings)
    migrate(client)
    worker = WorkerProcess(
        worker_env(module_broker.bootstrap, tmp_path / "worker-data"),
        tmp_path / "worker.log",
        app_id="e2e-proc",
    ).start()
    reader = OutputReader(module_broker.bootstrap)
    try:
        with SinkThread(settings, client, f"e2e-sink-{uuid.uuid4().hex[:6]}") as sink:
            published = publish_events(module_broker.bootstrap, events)
            matched = wait_until(
                reader, lambda: not differences(reader, expected), timeout_s=180, workers=[worker]
            )
            outputs = sum(len(v) for v in reader.records.values())
            sink.wait_committed(published + outputs, timeout_s=120)
        _check_board_equals_topics(client, reader)
        assert matched, (
            "the processors' topics never matched the oracle:\n"
            + "\n".join(differences(reader, expected))
            + "\n--- worker log ---\n"
            + worker.log_tail()
        )
        _check_board_equals_oracle(client, expected)
        # The worker drained the whole backlog flat out, alone in its group: one assignment, no
        # rebalance (a batch loop that starved the consumer's heartbeats would get it evicted).
        assert scrape_metrics(worker)[("backbone_processor_assignments_total", "")] == 1, worker.log_tail()

        with SinkThread(settings, client, f"e2e-replay-{uuid.uuid4().hex[:6]}") as replay:
            replay.wait_committed(published + outputs, timeout_s=120)
        _check_board_equals_topics(client, reader)
        _check_board_equals_oracle(client, expected)
    finally:
        reader.close()
        worker.stop()
        client.close()
