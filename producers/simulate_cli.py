"""``backbone simulate``: publish simulated agency traffic (batch backfill or live), or write it to files.

Two modes over the same deterministic generator (:mod:`producers.simulator`):

* **batch** (default): every event with ``occurred_at`` in ``[start, start + span)``, published
  as fast as ``--rate`` allows; ``published_at`` is the simulated publication time.
* **live** (``--live``): a steady stream for demos. Journeys started ``--warmup`` ago are
  backfilled at once (so the processors know their start events), then each event is published
  when the wall clock reaches its delivery time, at about ``--rate`` events/s overall, until
  ``--duration`` runs out or Ctrl-C. ``published_at`` is the real publish time.

Exit codes: 0 every event acknowledged; 1 some deliveries failed; 2 usage or configuration
error (nothing sent); 3 broker unreachable or topic missing (nothing sent).
"""

from __future__ import annotations

import json
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn, TypedDict

import typer

from producers.simulator import HOUR, MINUTE, SimEvent, SimulationConfig

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKER = 3
BATCH_SIZE = 2000
MAX_SLEEP_S = 0.25  # wake up this often while waiting, to notice Ctrl-C and the duration
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
REMEMBERED_PUBLICATIONS = 200_000  # live mode: event_id → published_at, so a re-send stays identical

Clock = Callable[[], int]  # epoch milliseconds
Sleep = Callable[[float], None]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# -- pacing (pure: clock and sleep are injected) -------------------------------------------------


@dataclass
class Pacer:
    """Turns the generator's delivery-ordered events into batches that are due now.

    Live: an event goes out once ``clock() >= deliver_at`` (events already due at the start, the
    warm-up backfill, go at once) and gets ``published_at = clock()``; a duplicate re-send keeps
    the original's ``published_at``. Batch: events go out as fast as ``rate`` allows (0: no cap),
    with the generator's ``published_at``. Both stop after ``duration_s`` of wall time.
    """

    live: bool
    rate: float = 0.0
    duration_s: float = 0.0
    clock: Clock = wall_clock_ms
    sleep: Sleep = time.sleep
    batch_size: int = BATCH_SIZE
    published: OrderedDict[str, int] = field(default_factory=OrderedDict)
    stopped_early: bool = False

    def batches(self, events: Iterable[SimEvent]) -> Iterator[list[SimEvent]]:
        started = self.clock()
        deadline = started + int(self.duration_s * 1000) if self.duration_s > 0 else None
        sent = 0
        batch: list[SimEvent] = []
        for ev in events:
            wait_until = ev.deliver_at if self.live else self._rate_slot(started, sent)
            now = self.clock()
            if wait_until > now and batch:
                yield batch
                batch = []
            while wait_until > now:
                if deadline is not None and now >= deadline:
                    self.stopped_early = True
                    return
                self.sleep(min(MAX_SLEEP_S, (wait_until - now) / 1000))
                now = self.clock()
            if deadline is not None and now >= deadline:
                self.stopped_early = True
                break
            batch.append(self._stamp(ev, now) if self.live else ev)
            sent += 1
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _rate_slot(self, started: int, sent: int) -> int:
        """Batch mode: the earliest time the next event may go under the rate cap."""
        if self.rate <= 0:
            return 0
        return started + int(sent * 1000 / self.rate)

    def _stamp(self, ev: SimEvent, now: int) -> SimEvent:
        event_id = ev.raw["event_id"]
        published_at = self.published.get(event_id)
        if published_at is None:
            published_at = max(now, ev.raw["occurred_at"])
            self.published[event_id] = published_at
            if len(self.published) > REMEMBERED_PUBLICATIONS:
                self.published.popitem(last=False)
        return SimEvent(ev.topic, {**ev.raw, "published_at": published_at}, ev.deliver_at)


# -- outputs ------------------------------------------------------------------------------------


@dataclass
class TopicCounts:
    """What happened to the events of each topic."""

    sent: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    invalid_sent: Counter[str] = field(default_factory=Counter)  # deliberately invalid, acknowledged
    errors: Counter[str] = field(default_factory=Counter)  # reason → count

    @property
    def ok(self) -> bool:
        return not sum(self.failed.values())

    def lines(self) -> list[str]:
        topics = sorted(set(self.sent) | set(self.failed) | set(self.invalid_sent))
        out = [
            f"{t}: {self.sent[t]:,} sent, {self.failed[t]:,} failed"
            + (f" ({self.invalid_sent[t]:,} deliberately invalid)" if self.invalid_sent[t] else "")
            for t in topics
        ]
        out.append(f"total: {sum(self.sent.values()):,} sent, {sum(self.failed.values()):,} failed")
        out.extend(f"failure: {reason} ({n:,})" for reason, n in self.errors.most_common(5))
        return out


def is_contract_valid(ev: SimEvent, now_ms: int, max_future_skew_ms: int) -> bool:
    from schemas.validation import InvalidRecord, validate_event

    try:
        validate_event(ev.topic, ev.raw, now_ms, max_future_skew_ms=max_future_skew_ms)
    except InvalidRecord:
        return False
    return True


class KafkaSink:
    """Publishes batches: valid events through the :class:`~producers.publisher.Publisher` (validated,
    idempotent, ``acks=all``); deliberately invalid ones (``--invalid-share``) through a plain
    idempotent producer, since the publisher would rightly refuse them."""

    def __init__(self, settings: Any, bootstrap: str, clock: Clock = wall_clock_ms) -> None:
        from producers.publisher import Publisher

        self.publisher = Publisher(settings, bootstrap, clock=clock)
        self.settings = settings
        self.bootstrap = bootstrap
        self.clock = clock
        self.counts = TopicCounts()
        self._raw_producer: Any = None
        self._invalid_in_flight = 0

    def check(self, topics: Iterable[str]) -> None:
        for topic in topics:
            self.publisher.check_topic(topic)

    def send(self, batch: list[SimEvent]) -> None:
        now = self.clock()
        skew = self.settings.max_future_skew_ms
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for ev in batch:
            if is_contract_valid(ev, now, skew):
                by_topic.setdefault(ev.topic, []).append(ev.raw)
            else:
                self._send_invalid(ev)
        for topic, records in by_topic.items():
            for rejected in self.publisher.publish_many(topic, records, [topic] * len(records)):
                self.counts.failed[topic] += 1
                self.counts.errors[f"rejected {rejected.field}: {rejected.reason}"] += 1
        self._count(self.publisher.poll_results(0))
        if self._raw_producer is not None:
            self._raw_producer.poll(0)

    def _send_invalid(self, ev: SimEvent) -> None:
        if self._raw_producer is None:
            from confluent_kafka import Producer

            from backbone.kafka import client_config

            conf = client_config(self.settings, self.bootstrap)
            conf.update({"enable.idempotence": True, "acks": "all", "linger.ms": 5})
            self._raw_producer = Producer(conf)
        value = self.publisher.codec.encode(ev.topic, ev.raw)
        self._invalid_in_flight += 1
        self._raw_producer.produce(
            ev.topic, value, str(ev.raw.get("case_id", "")).encode(), on_delivery=self._on_invalid_delivery
        )

    def _on_invalid_delivery(self, err: Any, msg: Any) -> None:
        self._invalid_in_flight -= 1
        if err is None:
            self.counts.sent[msg.topic()] += 1
            self.counts.invalid_sent[msg.topic()] += 1
        else:
            self.counts.failed[msg.topic()] += 1
            self.counts.errors[f"{err.name()}: {err.str()}"] += 1

    def _count(self, results: Iterable[Any]) -> None:
        for r in results:
            if r.ok:
                self.counts.sent[r.topic] += 1
            else:
                self.counts.failed[r.topic] += 1
                self.counts.errors[str(r.error)] += 1

    def close(self) -> None:
        self._count(self.publisher.flush())
        if self._raw_producer is not None:
            remaining = self._raw_producer.flush(30)
            if remaining:
                self.counts.failed["(invalid events)"] += remaining
                self.counts.errors["not acknowledged within 30 s"] += remaining


def rich_json(topic: str, raw: dict[str, Any], with_topic: bool) -> str:
    """One JSON Lines record in the rich shape (ISO-8601 UTC timestamps, PKR decimal strings)."""
    from schemas.codec import rich_json_value, to_rich

    rec = to_rich(topic, raw)
    return json.dumps({"topic": topic, **rec} if with_topic else rec, default=rich_json_value)


class FileSink:
    """Writes JSON Lines: one file (``*.jsonl``) with a ``topic`` field per line, or one
    ``<topic>.jsonl`` per topic inside a directory (any other path), directly usable with
    ``backbone produce --topic T --file DIR/T.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.per_topic = path.is_dir() or path.suffix not in JSONL_SUFFIXES
        if self.per_topic:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, IO[str]] = {}
        self.counts = TopicCounts()

    def _file(self, topic: str) -> IO[str]:
        key = topic if self.per_topic else ""
        f = self.files.get(key)
        if f is None:
            f = self.files[key] = open(self.path / f"{topic}.jsonl" if self.per_topic else self.path, "w")  # noqa: SIM115
        return f

    def check(self, topics: Iterable[str]) -> None:
        return None

    def send(self, batch: list[SimEvent]) -> None:
        for ev in batch:
            self._file(ev.topic).write(rich_json(ev.topic, ev.raw, not self.per_topic) + "\n")
            self.counts.sent[ev.topic] += 1

    def close(self) -> None:
        for f in self.files.values():
            f.close()


# -- the command --------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


def parse_start(text: str) -> int:
    from schemas.codec import datetime_to_ms

    try:
        return datetime_to_ms(text, "--start")
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)


def parse_span(text: str, option: str) -> int:
    from stream_processors.missions import parse_duration_ms

    try:
        return parse_duration_ms(text)
    except ValueError as exc:
        _fail(f"{option}: {exc}", EXIT_USAGE)


class Shares(TypedDict):
    """The data-quality shares ``simulate`` takes as options (fields of ``SimulationConfig``)."""

    stall_share: float
    duplicate_share: float
    out_of_order_share: float
    invalid_share: float


def build_config(
    *,
    live: bool,
    now_ms: int,
    seed: int,
    cases: int,
    span_ms: int,
    start_ms: int | None,
    rate: float,
    warmup_ms: int,
    shares: Shares,
    delay_scale: float,
    first_serial: int = 1,
) -> tuple[SimulationConfig, str | None]:
    """The generator config for a run, and a note for the user when the run had to be cut."""
    from producers.simulator import mean_events_per_case

    if live:
        base = SimulationConfig(
            start_ms=now_ms - warmup_ms,
            seed=seed,
            **shares,
            delay_scale=delay_scale,
            first_serial=first_serial,
        )
        per_case = mean_events_per_case(base, within_ms=max(warmup_ms, 10 * MINUTE), sample_cases=500)
        case_rate = max(rate, 0.001) * 3600 / per_case
        return SimulationConfig(
            **{**base.__dict__, "cases": None, "case_rate_per_h": case_rate, "until_ms": None}
        ), None
    from schemas.validation import MIN_EVENT_TIME_MS

    if span_ms <= 0:
        _fail("--span must be longer than 0 (e.g. 7d or 36h)", EXIT_USAGE)
    # Batch: nothing may be in the future once published (late re-publications reach up to an hour).
    latest = now_ms - HOUR - MINUTE
    start = start_ms if start_ms is not None else (latest - span_ms) // MINUTE * MINUTE
    if start < MIN_EVENT_TIME_MS:
        option = "--start" if start_ms is not None else "--span"
        _fail(f"{option}: the span would start before 2000-01-01, the earliest valid event time", EXIT_USAGE)
    until = start + span_ms
    note = None
    if until > latest:
        cut = datetime.fromtimestamp(latest / 1000, tz=UTC)
        note = f"events after {cut:%Y-%m-%dT%H:%MZ} left out (the future)"
        until = latest
    if until <= start:
        _fail("--start is too recent: a batch run covers the past only (use --live for now)", EXIT_USAGE)
    config = SimulationConfig(
        start_ms=start,
        seed=seed,
        cases=cases,
        span_ms=span_ms,
        until_ms=until,
        **shares,
        delay_scale=delay_scale,
        first_serial=first_serial,
    )
    return config, note


def simulate(
    rate: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Events per second: the cap in batch mode (0: no cap), "
            "the target in live mode (default 50).",
        ),
    ] = None,
    duration: Annotated[
        float,
        typer.Option(min=0, help="Stop after this many seconds of wall time (0: until done or Ctrl-C)."),
    ] = 0.0,
    cases: Annotated[int, typer.Option(min=0, help="Batch: journeys started over the span.")] = 1000,
    span: Annotated[str, typer.Option(help="Batch: event-time span covered, e.g. 7d or 36h.")] = "7d",
    seed: Annotated[
        int, typer.Option(help="Seed: the same seed, start and options give the same events.")
    ] = 7,
    start: Annotated[
        str | None,
        typer.Option(help="Batch: ISO-8601 start of the span (default: the span ending an hour ago)."),
    ] = None,
    live: Annotated[
        bool, typer.Option("--live/--no-live", help="Live steady stream instead of a backfill.")
    ] = False,
    warmup: Annotated[
        str, typer.Option(help="Live: how far back journeys start (backfilled at once), e.g. 1h.")
    ] = "1h",
    stall_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of cases that stall forever.")
    ] = 0.03,
    duplicate_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of events re-sent with the same event_id.")
    ] = 0.01,
    out_of_order_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of cases with an event published after a later one.")
    ] = 0.02,
    invalid_share: Annotated[
        float, typer.Option(min=0, max=1, help="Share of events followed by a corrupted (invalid) copy.")
    ] = 0.0,
    delay_scale: Annotated[
        float, typer.Option(min=0.0001, help="Multiply every agency delay (e.g. 0.05 for a compressed demo).")
    ] = 1.0,
    first_serial: Annotated[
        int,
        typer.Option(
            min=1,
            max=10**12,
            help="Serial of the first case id of each kind (EXP-2026-000001); `up` continues after "
            "its earlier runs' cases, whose history ClickHouse keeps.",
        ),
    ] = 1,
    bootstrap: Annotated[
        str | None,
        typer.Option(help="Kafka bootstrap host:port (default: BACKBONE_KAFKA_BOOTSTRAP_SERVERS)."),
    ] = None,
    to_file: Annotated[
        Path | None,
        typer.Option(
            "--to-file",
            help="Write JSON Lines instead of publishing: a file (with a 'topic' field per line) or a "
            "directory (one <topic>.jsonl per topic, ready for `backbone produce`).",
        ),
    ] = None,
) -> None:
    """Simulate agency traffic: correlated export journeys, drawback claims and tariff notifications."""
    from backbone.cli import bootstrap_or_exit, settings_or_exit
    from producers.simulator import generate
    from schemas import contracts

    settings = settings_or_exit()
    now = wall_clock_ms()
    effective_rate = rate if rate is not None else (50.0 if live else 0.0)
    if live and effective_rate <= 0:
        _fail("--rate must be positive in live mode", EXIT_USAGE)
    shares: Shares = {
        "stall_share": stall_share,
        "duplicate_share": duplicate_share,
        "out_of_order_share": out_of_order_share,
        "invalid_share": invalid_share,
    }
    config, note = build_config(
        live=live,
        now_ms=now,
        seed=seed,
        cases=cases,
        span_ms=parse_span(span, "--span"),
        start_ms=parse_start(start) if start else None,
        rate=effective_rate,
        warmup_ms=parse_span(warmup, "--warmup"),
        shares=shares,
        delay_scale=delay_scale,
        first_serial=first_serial,
    )
    if note:
        typer.echo(f"note: {note}", err=True)

    sink: KafkaSink | FileSink
    if to_file is not None:
        sink = FileSink(to_file)
    else:
        servers = bootstrap_or_exit(settings, bootstrap)
        from producers.publisher import PublisherError

        try:
            sink = KafkaSink(settings, servers)
            sink.check(contracts.INPUT_TOPICS)
        except PublisherError as exc:
            _fail(str(exc), EXIT_BROKER)

    mode = "live" if live else "batch"
    began = datetime.fromtimestamp(config.start_ms / 1000, tz=UTC)
    typer.echo(
        f"simulating ({mode}, seed {seed}) from {began:%Y-%m-%dT%H:%M:%SZ}"
        + (f" at ~{effective_rate:g} events/s" if live else f", {cases:,} journeys")
        + (f" → {to_file}" if to_file else ""),
        err=True,
    )
    pacer = Pacer(live=live, rate=effective_rate if not live else 0.0, duration_s=duration)
    started = time.monotonic()
    interrupted = False
    try:
        for batch in pacer.batches(generate(config)):
            sink.send(batch)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sink.close()
    elapsed = time.monotonic() - started
    for line in sink.counts.lines():
        typer.echo(line)
    total = sum(sink.counts.sent.values())
    stop = " (interrupted)" if interrupted else " (duration reached)" if pacer.stopped_early else ""
    typer.echo(f"done in {elapsed:.1f} s ({total / max(elapsed, 1e-9):,.0f} events/s){stop}")
    if not sink.counts.ok:
        raise typer.Exit(EXIT_FAILED)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
