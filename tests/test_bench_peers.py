"""The processor benchmark's peers compute the same KPIs as the independent oracle.

A benchmark ratio means something only if the peers do the same job: the naive Faust peer and
the Quix Streams peer run as real child processes against a real Tansu broker on a few hundred
seeded simulated events, and their 1-minute KPI windows must equal the oracle's (completions
and SLA met exactly, p50/p90 within SEMANTICS.md's 1% of the exact lower quantile). The grace
is set far beyond the data's span so that no consumption order can make a completion late.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import fastavro
import oracle
import pytest

from backbone.bench_data import EncodedEvents, simulated_events
from backbone.bench_peers import kpi_compare, naive_faust, peer_topic, quix_job
from backbone.bench_peers.ceiling import SINGLE_OBJECT_HEADER, codec_decoder, plain_fastavro_decoder
from backbone.bench_processor import Workspace, facts_drained, peer_argv, publish, read_peer_windows
from backbone.config import load_settings
from backbone.embedded.broker import TansuBroker
from backbone.kafka import ensure_topics
from schemas import contracts
from schemas.codec import Codec

EVENTS = 350
SEED = 5
NO_LATE_GRACE_MS = str(400 * 24 * 3_600_000)


@pytest.fixture(scope="module")
def events() -> list:  # type: ignore[type-arg]
    return simulated_events(EVENTS, SEED)


@pytest.fixture(scope="module")
def filled_broker(tmp_path_factory: pytest.TempPathFactory, events: list) -> Iterator[tuple[str, Path]]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("bench-peers")
    with TansuBroker(log_file=root / "tansu.log") as broker:
        settings = load_settings(kafka_bootstrap_servers=broker.bootstrap, topic_partitions=3)
        ensure_topics(
            settings,
            broker.bootstrap,
            (
                *contracts.INPUT_TOPICS,
                *naive_faust.output_topics().values(),
                quix_job.STAGE_RECORDS_TOPIC,
                quix_job.KPI_WINDOWS_TOPIC,
            ),
            partitions=3,
        )
        publish(broker.bootstrap, EncodedEvents.from_events(events).messages)
        yield broker.bootstrap, root


def oracle_windows(
    events: list, window: str = "1m"
) -> dict[kpi_compare.WindowKey, tuple[int, int, int, int]]:  # type: ignore[type-arg]
    newest = max(e.raw["published_at"] for e in events)
    expected = oracle.compute([(e.topic, e.raw) for e in events], now_ms=newest)
    return {
        kpi_compare.window_key(r): (r["completions"], r["sla_met"], r["p50_ms"], r["p90_ms"])
        for r in oracle.rows(expected.kpi_windows)
        if r["window"] == window
    }


def assert_equals_oracle(
    got: dict[kpi_compare.WindowKey, kpi_compare.WindowFigures],
    expected: dict,
    who: str,  # type: ignore[type-arg]
) -> None:
    one_minute = {k: v for k, v in got.items() if k.window == "1m" and v.completions > 0}
    assert expected, "the oracle found no completions: the test data proves nothing"
    assert set(one_minute) == set(expected), (
        f"{who}: windows only in the peer {sorted(set(one_minute) - set(expected))[:3]}, "
        f"only in the oracle {sorted(set(expected) - set(one_minute))[:3]}"
    )
    for key, (completions, met, p50, p90) in expected.items():
        fig = one_minute[key]
        assert (fig.completions, fig.sla_met) == (completions, met), (
            f"{who} {key}: {fig} vs oracle {expected[key]}"
        )
        assert abs(fig.p50_ms - p50) <= 0.01 * p50 and abs(fig.p90_ms - p90) <= 0.01 * p90, (
            f"{who} {key}: quantiles {fig.p50_ms}/{fig.p90_ms} vs exact {p50}/{p90}"
        )


@pytest.mark.integration
def test_naive_faust_peer_equals_oracle(filled_broker: tuple[str, Path], events: list) -> None:  # type: ignore[type-arg]
    bootstrap, root = filled_broker
    ws = Workspace(bootstrap, root, 3, len(events), {"BACKBONE_GRACE_MS": NO_LATE_GRACE_MS})
    run = ws.run_job("naive", peer_argv("backbone.bench_peers.naive_faust", "test-naive"), lambda _c: True)
    assert run.complete and run.events_per_s > 0
    got = read_peer_windows(
        bootstrap,
        run,
        peer_topic(naive_faust.PEER, contracts.KPI_WINDOWS),
        lambda v: Codec().decode(contracts.KPI_WINDOWS, v),
    )
    assert_equals_oracle(got, oracle_windows(events), "naive Faust")


@pytest.mark.integration
def test_quix_peer_equals_oracle(filled_broker: tuple[str, Path], events: list) -> None:  # type: ignore[type-arg]
    bootstrap, root = filled_broker
    ws = Workspace(bootstrap, root, 3, len(events), {"BACKBONE_GRACE_MS": NO_LATE_GRACE_MS})
    run = ws.run_job("quix", peer_argv("backbone.bench_peers.quix_job", "test-quix"), facts_drained)
    assert run.complete and run.events_per_s > 0
    got = read_peer_windows(bootstrap, run, quix_job.KPI_WINDOWS_TOPIC, kpi_compare.json_rows)
    assert_equals_oracle(got, oracle_windows(events), "Quix")


def test_ceiling_decoders_agree_with_the_codec(events: list) -> None:  # type: ignore[type-arg]
    """The plain-fastavro ceiling decodes the same records as the codec (it does the same work)."""
    codec, plain = codec_decoder(), plain_fastavro_decoder()
    for topic, _key, value in EncodedEvents.from_events(events[:200]).messages:
        via_codec, via_plain = codec(topic, value), plain(topic, value)
        assert via_plain["event_id"] == via_codec["event_id"]
        assert via_plain["occurred_at"] == via_codec["occurred_at"]
        schema = contracts.current(topic).parsed_raw
        body = io.BytesIO(value[SINGLE_OBJECT_HEADER:])
        assert fastavro.schemaless_reader(body, schema, None) == via_plain


def test_agreement_reports_each_kind_of_difference() -> None:
    def key(start: int, window: str = "1m") -> kpi_compare.WindowKey:
        return kpi_compare.WindowKey(window, start, "m", "j", "s", "A", "PK-PB", "")

    ref = {
        key(0): kpi_compare.WindowFigures(3, 2, 1000, 2000),
        key(60_000): kpi_compare.WindowFigures(1, 1, 5, 5),
    }
    assert kpi_compare.agree(ref, dict(ref), "1m").equal
    within = {**ref, key(0): kpi_compare.WindowFigures(3, 2, 1009, 2019)}
    assert kpi_compare.agree(ref, within, "1m").equal
    beyond = {**ref, key(0): kpi_compare.WindowFigures(3, 2, 1011, 2000)}
    assert len(kpi_compare.agree(ref, beyond, "1m").mismatches) == 1
    miscount = {**ref, key(0): kpi_compare.WindowFigures(3, 1, 1000, 2000)}
    assert not kpi_compare.agree(ref, miscount, "1m").equal
    missing = {key(0): ref[key(0)]}
    result = kpi_compare.agree(ref, missing, "1m")
    assert (result.only_reference, result.equal) == (1, False)
    rows = [
        {
            "window": "1m",
            "window_start": 0,
            "mission": "m",
            "journey": "j",
            "stage": "s",
            "owner_agency": "A",
            "province": "PK-PB",
            "port": "",
            "completions": c,
            "sla_met": c,
            "p50_ms": 1,
            "p90_ms": 1,
            "version": v,
        }
        for c, v in ((5, 2), (9, 3), (7, 1))
    ]
    assert kpi_compare.latest_windows(rows)[key(0)].completions == 9
