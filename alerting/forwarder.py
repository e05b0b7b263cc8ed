"""The alert forwarder: ``backbone.alerts.v1`` → Alertmanager v2 API, nothing lost.

Delivery contract:

* Consumes with confluent-kafka in group ``backbone-alert-forwarder``, auto-commit off. A batch's
  offsets are committed only after Alertmanager answered 2xx for every alert in it (or the
  record was parked in ``backbone.dead_letters.v1`` with its reason). An Alertmanager outage is
  retried with exponential back-off (tenacity) until it answers or the forwarder is stopped;
  a stopped forwarder has committed nothing it did not deliver, so a restart delivers the rest.
* Alertmanager resolves alerts whose ``endsAt`` passed, so FIRING alerts are posted with a
  lease (``endsAt = now + lease``) and re-posted every ``repost_interval_s`` while held in the
  bounded :class:`~alerting.firing.FiringAlerts` map. When partitions are assigned, that map is
  rebuilt from the topic up to the committed offsets, so a restarted forwarder keeps renewing
  alerts it delivered before it stopped.
* Delivery is at-least-once: a batch may be posted twice (e.g. a commit lost in a rebalance).
  Alertmanager de-duplicates by label set, so a repeat post changes nothing for the officer.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from alerting.alertmanager_payload import AlertRecordError, to_alertmanager
from alerting.firing import FiringAlerts
from backbone.config import Settings
from backbone.kafka import FAST_GROUP_SETTINGS, client_config
from backbone.metrics import Metrics
from schemas import contracts
from schemas.codec import Codec, DecodeError, codec_for

log = logging.getLogger(__name__)

GROUP_ID = "backbone-alert-forwarder"
SOURCE = "alert-forwarder"
POST_CHUNK = 500  # alerts per POST; Alertmanager handles far more, this bounds one request's size


class AlertmanagerUnavailable(RuntimeError):
    """Alertmanager could not be reached or answered 5xx/429: retry later."""


class AlertmanagerRejected(ValueError):
    """Alertmanager refused the payload (4xx): retrying the same payload cannot succeed."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"Alertmanager answered {status}: {body.strip()[:500]}")
        self.status = status
        self.body = body


class AlertmanagerClient:
    """Posts alerts to ``{base_url}/api/v2/alerts``."""

    def __init__(
        self, base_url: str, timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(timeout=timeout_s, transport=transport)

    def post(self, alerts: list[dict[str, Any]]) -> None:
        if not alerts:
            return
        try:
            resp = self._http.post(f"{self.base_url}/api/v2/alerts", json=alerts)
        except httpx.TransportError as exc:
            raise AlertmanagerUnavailable(f"{self.base_url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            raise AlertmanagerUnavailable(f"{self.base_url} answered {resp.status_code}: {resp.text[:200]}")
        if resp.status_code >= 400:
            raise AlertmanagerRejected(resp.status_code, resp.text)

    def close(self) -> None:
        self._http.close()


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class ForwarderOptions:
    """Tunables of the forwarder (defaults suit production; tests shorten the intervals)."""

    topic: str = contracts.ALERTS
    dead_letters_topic: str = contracts.DEAD_LETTERS
    group_id: str = GROUP_ID
    repost_interval_s: float = 60.0
    firing_lease_s: float = 900.0
    batch_size: int = 500
    poll_timeout_s: float = 1.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    max_firing: int = 50_000
    restore_timeout_s: float = 60.0
    consumer_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Delivery:
    message: Message
    record: dict[str, Any]
    payloads: list[dict[str, Any]]


@dataclass
class _Rejected:
    message: Message
    reason: str
    detail: str


class AlertForwarder:
    """Consumes alert transitions and delivers them to Alertmanager; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        alertmanager: AlertmanagerClient,
        metrics: Metrics | None = None,
        options: ForwarderOptions | None = None,
        bootstrap: str | None = None,
        codec: Codec | None = None,
        now_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.settings = settings
        self.options = options or ForwarderOptions()
        self.alertmanager = alertmanager
        self.metrics = metrics or Metrics()
        self.codec = codec or codec_for(settings)
        self.now_ms = now_ms
        self.firing = FiringAlerts(max_firing=self.options.max_firing)
        self._kafka_conf = client_config(settings, bootstrap)
        self._stop = threading.Event()
        self._to_restore: list[TopicPartition] = []
        self._next_repost = 0.0
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to return after the current step (interrupts retry waits)."""
        self._stop.set()

    def run(self) -> None:
        """Consume and deliver until :meth:`stop`. Undelivered records stay uncommitted."""
        opts = self.options
        consumer = Consumer(
            {
                **self._kafka_conf,
                **FAST_GROUP_SETTINGS,
                "group.id": opts.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # Long Alertmanager outages block polling; keep the membership for an hour of them.
                "max.poll.interval.ms": 3_600_000,
                **opts.consumer_overrides,
            }
        )
        self._consumer = consumer
        consumer.subscribe([opts.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.metrics.worker_up.labels(SOURCE).set(1)
        log.info(
            "alert forwarder started", extra={"topic": opts.topic, "alertmanager": self.alertmanager.base_url}
        )
        try:
            while not self._stop.is_set():
                messages = consumer.consume(num_messages=opts.batch_size, timeout=opts.poll_timeout_s)
                self._restore_assigned()
                if messages:
                    self._deliver(messages)
                if time.monotonic() >= self._next_repost and len(self.firing):
                    self._repost_firing()
        except AlertmanagerUnavailable as exc:
            if not self._stop.is_set():
                raise
            log.warning(
                "stopped while Alertmanager was unavailable; undelivered alerts stay uncommitted",
                extra={"error": str(exc)},
            )
        finally:
            self.metrics.worker_up.labels(SOURCE).set(0)
            consumer.close()
            if self._producer is not None:
                self._producer.flush(10)
            self.alertmanager.close()

    # -- delivery ----------------------------------------------------------------------------
    def _deliver(self, messages: list[Message]) -> None:
        now = self.now_ms()
        lease_ms = int(self.options.firing_lease_s * 1000)
        deliveries: list[_Delivery] = []
        rejected: list[_Rejected] = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            try:
                record = self.codec.decode(contracts.ALERTS, msg.value())
                to_alertmanager(
                    record, self.settings.board_url, now, lease_ms
                )  # validates before any state change
            except DecodeError as exc:
                rejected.append(_Rejected(msg, exc.reason, exc.detail))
                continue
            except AlertRecordError as exc:
                rejected.append(_Rejected(msg, "invalid_alert", str(exc)))
                continue
            posts = self.firing.transition(record, msg.partition())
            payloads = [to_alertmanager(r, self.settings.board_url, now, lease_ms) for r in posts]
            deliveries.append(_Delivery(msg, record, payloads))
        rejected.extend(self._post_deliveries(deliveries))
        self._dead_letter(rejected)
        self._commit(messages)
        self.metrics.alerts_firing.set(len(self.firing))

    def _post_deliveries(self, deliveries: list[_Delivery]) -> list[_Rejected]:
        """Post every delivery's payloads; isolate the records Alertmanager refuses."""
        payloads = [p for d in deliveries for p in d.payloads]
        try:
            for chunk in _chunks(payloads, POST_CHUNK):
                self._post_until_answered(chunk)
        except AlertmanagerRejected:
            rejected: list[_Rejected] = []
            for d in deliveries:
                try:
                    self._post_until_answered(d.payloads)
                except AlertmanagerRejected as exc:
                    self.firing.forget(d.record["alert_id"])
                    rejected.append(
                        _Rejected(d.message, "alertmanager_rejected", f"alert {d.record['alert_id']}: {exc}")
                    )
                else:
                    self._count_delivered(d)
            return rejected
        for d in deliveries:
            self._count_delivered(d)
        return []

    def _count_delivered(self, delivery: _Delivery) -> None:
        if delivery.payloads:  # a replayed FIRING of a resolved alert posts nothing
            self.metrics.alerts_delivered.labels(delivery.record["kind"], delivery.record["state"]).inc()

    def _post_until_answered(self, alerts: list[dict[str, Any]]) -> None:
        """Post, retrying while Alertmanager is unavailable; stops only when asked to stop."""
        opts = self.options
        retrying = Retrying(
            retry=retry_if_exception_type(AlertmanagerUnavailable),
            wait=wait_exponential(
                multiplier=opts.retry_initial_s, min=opts.retry_initial_s, max=opts.retry_max_s
            ),
            stop=lambda _state: self._stop.is_set(),
            sleep=self._sleep_unless_stopped,
            before_sleep=self._on_retry,
            reraise=True,
        )
        retrying(self.alertmanager.post, alerts)

    def _sleep_unless_stopped(self, seconds: float) -> None:
        """The retry's wait, cut short when the forwarder is asked to stop."""
        self._stop.wait(seconds)

    def _on_retry(self, state: RetryCallState) -> None:
        self.metrics.alert_delivery_errors.inc()
        exc = state.outcome.exception() if state.outcome is not None else None
        wait_s = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "Alertmanager unavailable; retrying",
            extra={
                "attempt": state.attempt_number,
                "retry_in_s": round(wait_s, 2),
                "error": str(exc),
            },
        )

    def _repost_firing(self) -> None:
        """Renew the lease of every held firing alert (its annotations are as the processors judged)."""
        now = self.now_ms()
        lease_ms = int(self.options.firing_lease_s * 1000)
        records = self.firing.records()
        for chunk in _chunks(records, POST_CHUNK):
            payloads = [to_alertmanager(r, self.settings.board_url, now, lease_ms) for r in chunk]
            try:
                self._post_until_answered(payloads)
            except AlertmanagerRejected:
                for record, payload in zip(chunk, payloads, strict=True):
                    try:
                        self._post_until_answered([payload])
                    except AlertmanagerRejected as exc:
                        log.error(
                            "Alertmanager refuses a held alert; no longer renewing it",
                            extra={"alert_id": record["alert_id"], "error": str(exc)},
                        )
                        self.firing.forget(record["alert_id"])
        self._next_repost = time.monotonic() + self.options.repost_interval_s
        self.metrics.alerts_firing.set(len(self.firing))

    # -- offsets and dead letters -------------------------------------------------------------
    def _commit(self, messages: Iterable[Message]) -> None:
        last: dict[tuple[str, int], int] = {}
        for msg in messages:
            if msg.error() is None:
                key = (msg.topic(), msg.partition())
                last[key] = max(last.get(key, -1), msg.offset())
        if not last or self._consumer is None:
            return
        offsets = [TopicPartition(t, p, off + 1) for (t, p), off in last.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Delivered but not committed (e.g. a rebalance): the records come again and are
            # re-posted, which Alertmanager de-duplicates.
            log.warning("offset commit failed; records will be re-delivered", extra={"error": str(exc)})

    def _dead_letter(self, rejected: list[_Rejected]) -> None:
        """Park records that cannot be delivered, with their bytes and reason; flush before commit."""
        if not rejected:
            return
        if self._producer is None:
            self._producer = Producer({**self._kafka_conf, "enable.idempotence": True, "acks": "all"})
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(str(err))

        now = self.now_ms()
        for r in rejected:
            m = r.message
            dead_letter_id = hashlib.sha1(f"{m.topic()}|{m.partition()}|{m.offset()}".encode()).hexdigest()
            value = self.codec.encode(
                contracts.DEAD_LETTERS,
                {
                    "dead_letter_id": dead_letter_id,
                    "source": SOURCE,
                    "topic": m.topic(),
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "key": m.key(),
                    "value": m.value(),
                    "reason": r.reason,
                    "detail": r.detail,
                    "received_at": now,
                },
            )
            self._producer.produce(
                self.options.dead_letters_topic,
                value=value,
                key=dead_letter_id.encode(),
                on_delivery=on_delivery,
            )
            self.metrics.dead_letters.labels(SOURCE, m.topic(), r.reason).inc()
            self.metrics.alert_records_rejected.labels(r.reason).inc()
            log.error(
                "alert record parked as a dead letter",
                extra={
                    "topic": m.topic(),
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "reason": r.reason,
                    "detail": r.detail,
                },
            )
        remaining = self._producer.flush(30)
        if remaining or failures:
            raise KafkaException(
                KafkaError(
                    KafkaError._MSG_TIMED_OUT,
                    f"dead letters not acknowledged ({remaining} pending, errors: {failures[:3]}); "
                    "batch not committed",
                )
            )

    # -- rebalance: rebuild the firing map from what was already delivered -------------------
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._to_restore.extend(partitions)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {p.partition for p in partitions}
        self._to_restore = [p for p in self._to_restore if p.partition not in revoked]
        dropped = self.firing.drop_partitions(revoked)
        if dropped:
            log.info(
                "partitions revoked; their firing alerts are no longer renewed here",
                extra={"dropped": dropped},
            )

    def _restore_assigned(self) -> None:
        """Replay newly assigned partitions up to the committed offsets into the firing map."""
        if not self._to_restore or self._consumer is None:
            return
        pending, self._to_restore = self._to_restore, []
        committed = self._consumer.committed(pending, timeout=30)
        ends = {tp.partition: tp.offset for tp in committed if tp.offset > 0}
        if not ends:
            return
        replay = Consumer(
            {**self._kafka_conf, "group.id": f"{self.options.group_id}-restore", "enable.auto.commit": False}
        )
        restored = 0
        try:
            replay.assign([TopicPartition(self.options.topic, p, OFFSET_BEGINNING) for p in ends])
            deadline = time.monotonic() + self.options.restore_timeout_s
            while ends and time.monotonic() < deadline:
                for msg in replay.consume(num_messages=1000, timeout=0.5):
                    if msg.error() is not None or msg.partition() not in ends:
                        continue
                    if msg.offset() < ends[msg.partition()]:
                        try:
                            record = self.codec.decode(contracts.ALERTS, msg.value())
                        except DecodeError:
                            pass  # parked as a dead letter when it was first consumed
                        else:
                            self.firing.transition(record, msg.partition())
                            restored += 1
                    if msg.offset() >= ends[msg.partition()] - 1:
                        del ends[msg.partition()]
            if ends:
                log.warning(
                    "firing map restore timed out; some held alerts may expire",
                    extra={"partitions": sorted(ends)},
                )
        finally:
            replay.close()
        self._next_repost = 0.0  # renew what was restored right away
        self.metrics.alerts_firing.set(len(self.firing))
        log.info("firing alerts restored", extra={"records": restored, "firing": len(self.firing)})


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
