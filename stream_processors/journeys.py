"""Hop 1: per-case journey state, stage records, CASE_SLA alerts and facts for the KPI hop.

Implements the "Stage instances" and "CASE_SLA" rules of ``SEMANTICS.md`` over batches of raw
agency messages. Everything a case needs lives in one state value keyed by its ``case_id``:

``{"e": [event_id, ...], "i": {stage_id: instance}, "lt": newest occurred_at of the case,
"p": input partition index}``

where ``stage_id`` is the first 8 hex digits of ``sha1("mission|journey|stage")`` (short, and
stable when stages are added to the missions file) and an instance is a list (compact JSON)::

    [started_at, start_event_id, province, port, amount_paisa, ended_at, cancelled_at, version, alert]

``alert`` is 0 (no CASE_SLA emitted), 1 (FIRING emitted, severity warning), 3 (FIRING emitted
with severity critical: first seen, or escalated, past twice the SLA) or 2 (RESOLVED emitted). An
end or a cancel seen before the start is kept in an instance whose ``started_at`` is ``None``.

**Facts.** Every change of an instance's KPI contribution is sent to hop 2 as a retraction of
the old one and an addition of the new one, each tagged with the ``(topic, partition,
offset)`` of the event that caused it: an OPEN instance contributes to its group's backlog
(``started_at``, amount), a CLOSED one is a completion (``ended_at``, duration, SLA met), a
CANCELLED one nothing. A correction (earlier start or end, different province) therefore moves
a completion between windows or groups exactly.

**Eviction.** A case whose instances are all CLOSED or CANCELLED (and that holds no end or
cancel waiting for its start) is *complete*. Once the engine's watermark (newest occurred_at
seen) passes the case's newest event time + ``case_retention_ms``, its state is replaced by a
tombstone ``{"x": watermark at eviction, "h": [first 8 hex digits of each event_id]}``. Events
for a tombstoned case are not folded in: a re-sent one (its id prefix is in ``h``) is a
duplicate; a new one that marks a stage boundary goes to the dead letters with reason
``evicted_case`` (so it cannot re-open a finished case, and nothing is lost); any other new
event only counts for its feed's freshness. Tombstones are deleted ``tombstone_retention_ms``
later, so state stays
bounded by the traffic of the retention periods, not by history.

**Overdue checks.** Open instances are judged against :class:`~stream_processors.watermarks.CatchUpClock`'s
judge time of their partition, ``min(now, low watermark)``, not against "now" alone, so a
catch-up does not fire CASE_SLA for stages whose end event is still waiting to be read (the
``p`` in the case state says which partition index; states written before it existed are
judged against the lowest judge time of all partitions).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from hashlib import sha1
from typing import Any

from backbone.config import Settings
from schemas import contracts
from schemas.alert_wording import human_duration, overdue_shown_ms
from schemas.codec import Codec, DecodeError
from schemas.registry import Registry, default_registry
from schemas.validation import InvalidRecord, validate_event
from stream_processors import ids
from stream_processors.api import (
    BACKLOG_FACT,
    COMPLETION_FACT,
    FEED_FACT,
    PROCESSOR_SOURCE,
    InputMessage,
    Outputs,
    StateStore,
    encode_facts,
    feed_key,
)
from stream_processors.clock import Clock, WallClock
from stream_processors.missions import Missions
from stream_processors.watermarks import CatchUpClock

# Instance list slots.
STARTED, START_EID, PROVINCE, PORT, AMOUNT, ENDED, CANCELLED, VERSION, ALERT = range(9)
START, END, CANCEL = 0, 1, 2
_KINDS = {"start": START, "end": END, "cancel": CANCEL}

NO_ALERT, FIRING, RESOLVED, FIRING_CRITICAL = 0, 1, 2, 3
"""An instance's CASE_SLA state. FIRING is the warning; FIRING_CRITICAL once overdue by more than
the SLA again (a second FIRING record, same alert_id, severity critical)."""
EVICTED_CASE = "evicted_case"

DEFAULT_MIN_CASE_RETENTION_MS = 3_600_000
DEFAULT_TOMBSTONE_RETENTION_MS = 24 * 3_600_000
_ID_CACHE_SIZE = 200_000
MAX_FACTS_PER_MESSAGE = 4000
"""Most facts in one facts message: about 270 KB at ~67 bytes a fact, well under Kafka's 1 MB
default ``message.max.bytes``. A group can gain two facts per event of a batch (a retraction and
an addition), so a backfill of one stage at one desk in a large batch would otherwise make one
message too large to produce; it gets several, in order, each retraction beside its addition."""


@dataclass(frozen=True, slots=True)
class StageInfo:
    """What the hot path needs about one stage, computed once from the missions file."""

    key: str
    """Short stable id of the stage in case state: sha1("mission|journey|stage")[:8]."""
    group_prefix: str
    """``mission|journey|stage|``: the start of its KPI group keys."""
    mission: str
    journey: str
    stage: str
    name: str
    sla_ms: int
    has_port: bool
    money_field: str | None
    owner_by_port: dict[str, str]
    owner_by_province: dict[str, str]
    default_owner: str
    places: dict[tuple[str, str], tuple[str, str]]
    """(province, port) → (KPI group key, owner agency), filled as places are met (hot path)."""

    def place(self, province: str, port: str) -> tuple[str, str]:
        """(group key, owner) of an instance started in ``province`` / ``port``."""
        try:
            return self.places[(province, port)]
        except KeyError:
            owner = self.owner_by_port.get(port) or self.owner_by_province.get(province) or self.default_owner
            found = self.places[(province, port)] = (f"{self.group_prefix}{owner}|{province}|{port}", owner)
            return found

    def owner(self, province: str, port: str) -> str:
        """``Stage.owner_for`` with plain dicts."""
        return self.place(province, port)[1]

    def group_key(self, province: str, port: str) -> str:
        return self.place(province, port)[0]


def stage_infos(missions: Missions) -> dict[str, StageInfo]:
    """Stage id (see :class:`StageInfo`) → info, for every stage of the missions file."""
    out: dict[str, StageInfo] = {}
    for ref in missions.stages:
        m, j, s = ref.key
        stage = ref.stage
        key = sha1(f"{m}|{j}|{s}".encode()).hexdigest()[:8]
        if key in out:
            raise ValueError(f"stage ids of {m}|{j}|{s} and {out[key].group_prefix} collide; rename one")
        start_fields = contracts.current(stage.start.topic).field_names
        out[key] = StageInfo(
            key=key,
            group_prefix=f"{m}|{j}|{s}|",
            mission=m,
            journey=j,
            stage=s,
            name=stage.name,
            sla_ms=stage.sla_ms,
            has_port="port" in start_fields,
            money_field=stage.money_field,
            owner_by_port=dict(stage.owner_by_port),
            owner_by_province=dict(stage.owner_by_province),
            default_owner=stage.owner,
            places={},
        )
    return out


def is_complete(state: dict[str, Any]) -> bool:
    """No OPEN instance and no end/cancel still waiting for its start (see module docstring)."""
    for inst in state["i"].values():
        if inst[STARTED] is None or (inst[ENDED] is None and inst[CANCELLED] is None):
            return False
    return True


class JourneyEngine:
    """Hop 1 of the processors (see :class:`stream_processors.api.JourneyProcessor`)."""

    def __init__(
        self,
        missions: Missions,
        settings: Settings,
        codec: Codec | None = None,
        registry: Registry | None = None,
        *,
        case_retention_ms: int | None = None,
        tombstone_retention_ms: int = DEFAULT_TOMBSTONE_RETENTION_MS,
        partition_idle_ms: int | None = None,
        wall_clock: Clock | None = None,
    ) -> None:
        self.missions = missions
        self.codec = codec or Codec()
        self.registry = registry or default_registry()
        self.max_future_skew_ms = settings.max_future_skew_ms
        self.case_retention_ms = (
            case_retention_ms
            if case_retention_ms is not None
            else settings.case_retention_ms or max(2 * settings.grace_ms, DEFAULT_MIN_CASE_RETENTION_MS)
        )
        self.tombstone_retention_ms = tombstone_retention_ms
        self.stages = stage_infos(missions)
        by_path = {info.group_prefix[:-1]: info for info in self.stages.values()}
        self.boundaries: dict[tuple[str, str], tuple[tuple[StageInfo, int], ...]] = {
            ev: tuple((by_path["|".join(ref.key)], _KINDS[kind]) for ref, kind in refs)
            for ev, refs in missions.stages_by_event.items()
        }
        self.max_facts_per_message = MAX_FACTS_PER_MESSAGE
        self.watermark_ms: int | None = None
        """Newest occurred_at seen (valid, distinct events): drives eviction; sent with the facts."""
        idle = partition_idle_ms
        if idle is None:
            idle = settings.partition_idle_ms
        self.catch_up = CatchUpClock(contracts.INPUT_TOPICS, idle, wall_clock or WallClock())
        """Judge time of overdue checks per partition (see :mod:`stream_processors.watermarks`)."""
        # Per input partition index (None: states from before "p" existed): a heap of
        # (started_at + sla, case_id, stage_key) for open instances not yet alerted.
        self._deadlines: dict[int | None, list[tuple[int, str, str]]] = {}
        self._evictions: list[tuple[int, str]] = []  # (watermark at which to look again, case_id)
        self._record_ids: dict[tuple[str, str], str] = {}

    # -- hot path ---------------------------------------------------------------------------
    def process(self, batch: Sequence[InputMessage], states: StateStore, now_ms: int) -> Outputs:
        out = Outputs()
        by_case = self._decode_batch(batch, now_ms, out)
        facts: dict[str, list[list[Any]]] = {}
        feeds: dict[tuple[str, str, int], list[Any]] = {}  # see _count_feed
        valid = out.valid_events
        duplicates = out.duplicates
        records = out.stage_records
        boundaries = self.boundaries
        apply_boundary = self._apply_boundary
        batch_max = self.watermark_ms
        judge_times: dict[int | None, int] = {}
        evictions = self._evictions
        retention = self.case_retention_ms
        for case_id, events in by_case.items():
            state = states.get(case_id)
            if state is None:
                state = {"e": [], "i": {}, "lt": 0, "p": events[0][0].partition}
            elif "x" in state:
                self._tombstoned(case_id, state, events, feeds, now_ms, out)
                states[case_id] = state
                continue
            seen: list[str] = state["e"]
            insts: dict[str, list[Any]] = state["i"]
            latest = state["lt"]
            touched: dict[str, StageInfo] | None = None
            fresh = False
            for msg, raw in events:
                event_id = raw["event_id"]
                topic = msg.topic
                if event_id in seen:
                    duplicates[topic] = duplicates.get(topic, 0) + 1
                    continue
                seen.append(event_id)
                fresh = True
                occurred = raw["occurred_at"]
                if occurred > latest:
                    latest = occurred
                agency = raw["agency"]
                counted = (topic, agency)
                valid[counted] = valid.get(counted, 0) + 1
                feed_at = (agency, topic, msg.partition)
                feed = feeds.get(feed_at)
                if feed is None:
                    feeds[feed_at] = [msg.offset, 1, occurred, raw["published_at"], {occurred}]
                else:
                    _fold_feed(feed, msg.offset, occurred, raw["published_at"])
                bounds = boundaries.get((topic, raw["status"]))
                if bounds:
                    for info, kind in bounds:
                        if apply_boundary(info, kind, insts, msg, raw, occurred, event_id, facts):
                            if touched is None:
                                touched = {info.key: info}
                            else:
                                touched[info.key] = info
            if not fresh:
                continue
            state["lt"] = latest
            if batch_max is None or latest > batch_max:
                batch_max = latest
            states[case_id] = state
            if touched is None:
                continue
            partition = state.get("p")
            judge = judge_times.get(partition)
            if judge is None:
                judge = judge_times[partition] = self._judge_time(now_ms, partition)
            for info in touched.values():
                inst = insts[info.key]
                if inst[STARTED] is not None:
                    records.append(self._stage_record(case_id, info, inst, now_ms))
                    self._case_alert(case_id, info, inst, now_ms, judge, partition, out.alerts)
            if is_complete(state):
                heapq.heappush(evictions, (latest + retention, case_id))
        self.watermark_ms = batch_max
        out.max_occurred_at = batch_max if by_case else None
        self._emit_facts(facts, feeds, out)
        self._evict(states, exclude=by_case)
        return out

    def _judge_time(self, now_ms: int, partition: int | None) -> int:
        """When open instances of ``partition`` (None: unknown, the lowest of all) are judged overdue."""
        return self.catch_up.judge_time(now_ms, partition)

    def _decode_batch(
        self, batch: Sequence[InputMessage], now_ms: int, out: Outputs
    ) -> dict[str, list[tuple[InputMessage, dict[str, Any]]]]:
        """Decode and validate; group the valid events by case, keeping arrival order.

        Also tells the catch-up clock how far each input topic-partition has been read.
        """
        by_case: dict[str, list[tuple[InputMessage, dict[str, Any]]]] = {}
        decode = self.codec.decode
        registry = self.registry
        skew = self.max_future_skew_ms
        dead_letters = out.dead_letters
        newest: dict[tuple[str, int], int] = {}
        for msg in batch:
            topic = msg.topic
            try:
                raw = decode(topic, msg.value)
            except DecodeError as exc:
                dead_letters.append(dead_letter(msg, exc.reason, exc.detail, now_ms))
                continue
            ts = msg.timestamp_ms
            try:
                validate_event(topic, raw, now_ms if ts is None or ts < now_ms else ts, registry, skew)
            except InvalidRecord as exc:
                dead_letters.append(dead_letter(msg, "invalid_record", f"{exc.field}: {exc.reason}", now_ms))
                continue
            case_id: str = raw["case_id"]
            if msg.key is None or msg.key != case_id.encode():
                dead_letters.append(
                    dead_letter(
                        msg,
                        "case_id_key_mismatch",
                        f"message key {msg.key!r:.80} differs from case_id {case_id!r}; "
                        "events must be keyed by case_id",
                        now_ms,
                    )
                )
                continue
            tp = (topic, msg.partition)
            occurred = raw["occurred_at"]
            if occurred > newest.get(tp, occurred - 1):
                newest[tp] = occurred
            events = by_case.get(case_id)
            if events is None:
                by_case[case_id] = [(msg, raw)]
            else:
                events.append((msg, raw))
        if newest:
            catch_up = self.catch_up
            wall_ms = catch_up.wall_ms()
            for (topic, partition), occurred in newest.items():
                catch_up.observe(topic, partition, occurred, wall_ms)
        return by_case

    def _apply_boundary(
        self,
        info: StageInfo,
        kind: int,
        insts: dict[str, list[Any]],
        msg: InputMessage,
        raw: dict[str, Any],
        occurred: int,
        event_id: str,
        facts: dict[str, list[list[Any]]],
    ) -> bool:
        """Fold one start/end/cancel into an instance; emit facts if its contribution moved."""
        inst = insts.get(info.key)
        if inst is None:
            inst = [None, None, None, None, None, None, None, None, NO_ALERT]
            insts[info.key] = inst
            old = None
        elif kind == START:
            started = inst[STARTED]
            if started is not None and (
                occurred > started or (occurred == started and event_id >= inst[START_EID])
            ):
                return False
            old = _contribution(info, inst)
        elif kind == END:
            if inst[ENDED] is not None and occurred >= inst[ENDED]:
                return False
            old = _contribution(info, inst)
        else:
            if inst[CANCELLED] is not None and occurred >= inst[CANCELLED]:
                return False
            old = _contribution(info, inst)
        if kind == START:
            inst[STARTED] = occurred
            inst[START_EID] = event_id
            inst[PROVINCE] = raw["province"]
            inst[PORT] = raw["port"] if info.has_port else ""
            inst[AMOUNT] = raw[info.money_field] if info.money_field else None
            visible = True
        elif kind == END:
            inst[ENDED] = occurred
            visible = inst[STARTED] is not None
        else:
            inst[CANCELLED] = occurred
            visible = inst[STARTED] is not None and inst[ENDED] is None
        new = _contribution(info, inst)
        if new != old:
            topic, partition, offset = msg.topic, msg.partition, msg.offset
            if old is not None:
                group_facts = facts.get(old[0])
                if group_facts is None:
                    group_facts = facts[old[0]] = []
                group_facts.append([old[1], topic, partition, offset, -1, *old[2:]])
            if new is not None:
                group_facts = facts.get(new[0])
                if group_facts is None:
                    group_facts = facts[new[0]] = []
                group_facts.append([new[1], topic, partition, offset, 1, *new[2:]])
        return visible

    def _emit_facts(
        self, facts: dict[str, list[list[Any]]], feeds: dict[tuple[str, str, int], list[Any]], out: Outputs
    ) -> None:
        wm = self.watermark_ms
        limit = self.max_facts_per_message
        for key, group_facts in facts.items():
            group_facts.sort(key=_cause)  # stable: a retraction stays before its addition
            for chunk in _chunks(group_facts, limit):
                out.facts.append((key, encode_facts(wm, chunk)))
        by_agency: dict[str, list[list[Any]]] = {}
        for (agency, topic, partition), (offset, n, occurred, published, times) in feeds.items():
            by_agency.setdefault(agency, []).append(
                [FEED_FACT, topic, partition, offset, n, occurred, published, sorted(times)]
            )
        for agency, feed_facts in by_agency.items():
            out.facts.append((feed_key(agency), encode_facts(wm, feed_facts)))

    def _tombstoned(
        self,
        case_id: str,
        tombstone: dict[str, Any],
        events: list[tuple[InputMessage, dict[str, Any]]],
        feeds: dict[tuple[str, str, int], list[Any]],
        now_ms: int,
        out: Outputs,
    ) -> None:
        seen: list[str] = tombstone["h"]
        for msg, raw in events:
            prefix = raw["event_id"][:8]
            if prefix in seen:
                out.duplicates[msg.topic] = out.duplicates.get(msg.topic, 0) + 1
                continue
            seen.append(prefix)
            if self.boundaries.get((msg.topic, raw["status"])):
                out.dead_letters.append(
                    dead_letter(
                        msg,
                        EVICTED_CASE,
                        f"case {case_id!r} completed and was evicted; a late {raw['status']} event "
                        f"(event_id {raw['event_id']}) is parked here instead of re-opening it",
                        now_ms,
                    )
                )
                continue
            agency = raw["agency"]
            vk = (msg.topic, agency)
            out.valid_events[vk] = out.valid_events.get(vk, 0) + 1
            _count_feed(feeds, agency, msg, raw, raw["occurred_at"])

    # -- outputs ----------------------------------------------------------------------------
    def _record_id(self, case_id: str, info: StageInfo) -> str:
        """``ids.record_id``, memoised: an instance is emitted at least twice (OPEN, then CLOSED)."""
        key = (case_id, info.key)
        record_id = self._record_ids.get(key)
        if record_id is None:
            if len(self._record_ids) >= _ID_CACHE_SIZE:
                self._record_ids.clear()
            record_id = self._record_ids[key] = ids.record_id(case_id, info.mission, info.journey, info.stage)
        return record_id

    def _stage_record(self, case_id: str, info: StageInfo, inst: list[Any], now_ms: int) -> dict[str, Any]:
        started, ended = inst[STARTED], inst[ENDED]
        duration: int | None = None
        sla_met: bool | None = None
        if ended is not None:
            state = "CLOSED"
            duration = ended - started if ended > started else 0
            sla_met = duration <= info.sla_ms
        elif inst[CANCELLED] is not None:
            state = "CANCELLED"
        else:
            state = "OPEN"
        previous = inst[VERSION]
        version = inst[VERSION] = (
            now_ms if previous is None or now_ms > previous else previous + 1
        )  # ids.next_version, inlined
        province, port = inst[PROVINCE], inst[PORT]
        return {
            "record_id": self._record_id(case_id, info),
            "case_id": case_id,
            "mission": info.mission,
            "journey": info.journey,
            "stage": info.stage,
            "owner_agency": info.place(province, port)[1],
            "province": province,
            "port": port,
            "state": state,
            "started_at": started,
            "ended_at": ended,
            "duration_ms": duration,
            "sla_ms": info.sla_ms,
            "sla_met": sla_met,
            "amount_pkr": inst[AMOUNT],
            "version": version,
        }

    def _case_alert(
        self,
        case_id: str,
        info: StageInfo,
        inst: list[Any],
        now_ms: int,
        judge_ms: int,
        partition: int | None,
        alerts: list[dict[str, Any]],
    ) -> bool:
        """Apply the CASE_SLA rule to one instance; True if its alert state changed.

        A closed or cancelled instance is judged on its own times; an open one at ``judge_ms``
        (``min(now, low watermark)`` of its partition), else its next deadline goes on the heap:
        the SLA, or twice the SLA for a warning that may still escalate to critical. A RESOLVED
        record carries the severity its alert last fired with, so it resolves that alert (the
        same labels in Alertmanager).
        """
        started, ended, cancelled = inst[STARTED], inst[ENDED], inst[CANCELLED]
        sla = info.sla_ms
        state = inst[ALERT]
        closed_at = ended if ended is not None else cancelled  # a cancelled case waited until its cancel
        if closed_at is not None:
            if state == RESOLVED:
                return False
            overdue = closed_at - started - sla
            if state == NO_ALERT and overdue > 0:
                state = self._fire(case_id, info, inst, overdue, now_ms, alerts)
            if state != NO_ALERT:
                severity = "critical" if state == FIRING_CRITICAL else "warning"
                alerts.append(
                    self._case_sla(
                        case_id, info, inst, "RESOLVED", max(0, overdue), closed_at, now_ms, severity
                    )
                )
                state = RESOLVED
        elif state == NO_ALERT or state == FIRING:
            overdue = judge_ms - started - sla
            if state == NO_ALERT and overdue > 0:
                state = self._fire(case_id, info, inst, overdue, now_ms, alerts)
            elif state == FIRING and overdue > sla:
                alerts.append(
                    self._case_sla(case_id, info, inst, "FIRING", overdue, None, now_ms, "critical")
                )
                state = FIRING_CRITICAL
            if state != FIRING_CRITICAL:
                heap = self._deadlines.get(partition)
                if heap is None:
                    heap = self._deadlines[partition] = []
                heapq.heappush(heap, (started + (sla if state == NO_ALERT else 2 * sla), case_id, info.key))
        if state != inst[ALERT]:
            inst[ALERT] = state
            return True
        return False

    def _fire(
        self,
        case_id: str,
        info: StageInfo,
        inst: list[Any],
        overdue: int,
        now_ms: int,
        alerts: list[dict[str, Any]],
    ) -> int:
        """The first FIRING record of an instance: critical if already overdue by more than the SLA."""
        critical = overdue > info.sla_ms
        alerts.append(
            self._case_sla(
                case_id, info, inst, "FIRING", overdue, None, now_ms, "critical" if critical else "warning"
            )
        )
        return FIRING_CRITICAL if critical else FIRING

    def _case_sla(
        self,
        case_id: str,
        info: StageInfo,
        inst: list[Any],
        state: str,
        overdue: int,
        ends_at: int | None,
        now_ms: int,
        severity: str,
    ) -> dict[str, Any]:
        started = inst[STARTED]
        province, port = inst[PROVINCE], inst[PORT]
        owner = info.owner(province, port)
        rid = self._record_id(case_id, info)
        if state == "FIRING":
            waited = overdue + info.sla_ms  # judge time - start
            shown = overdue_shown_ms(waited, info.sla_ms)  # so the sentence adds up in its words
            summary = (
                f"Case {case_id} has waited {human_duration(waited)} at '{info.name}' ({owner}): "
                f"{human_duration(shown)} past its {human_duration(info.sla_ms)} SLA"
            )
        else:
            stayed = human_duration((ends_at or 0) - started)
            summary = f"Case {case_id} left '{info.name}' ({owner}) after {stayed}"
        return {
            "alert_id": ids.case_sla_alert_id(rid),
            "kind": "CASE_SLA",
            "state": state,
            "severity": severity,
            "mission": info.mission,
            "journey": info.journey,
            "stage": info.stage,
            "agency": owner,
            "province": province,
            "port": port,
            "case_id": case_id,
            "summary": summary,
            "starts_at": started + info.sla_ms,
            "ends_at": ends_at,
            "waiting_since": started,
            "value": float(overdue),
            "threshold": float(info.sla_ms),
            "emitted_at": now_ms,
        }

    # -- timers -----------------------------------------------------------------------------
    def sweep(self, states: StateStore, now_ms: int) -> Outputs:
        """CASE_SLA FIRING for open instances past their deadline at their partition's judge time
        (``min(now, low watermark)``, see :mod:`stream_processors.watermarks`); evict complete cases.

        O(instances due): each partition's deadlines are a heap, popped only while due.
        """
        out = Outputs()
        changed: dict[str, dict[str, Any]] = {}
        wall_ms = self.catch_up.wall_ms()
        for partition, heap in self._deadlines.items():
            if not heap:
                continue
            judge = self.catch_up.judge_time(now_ms, partition, wall_ms)
            while heap and heap[0][0] < judge:
                _, case_id, stage_key = heapq.heappop(heap)
                state = changed.get(case_id) or states.get(case_id)
                if not isinstance(state, dict) or "i" not in state:  # gone, or a tombstone
                    continue
                inst = state["i"].get(stage_key)
                info = self.stages.get(stage_key)
                if inst is None or info is None or inst[STARTED] is None:
                    continue
                if inst[ALERT] != NO_ALERT and inst[ALERT] != FIRING:  # critical or resolved: nothing due
                    continue
                if inst[ENDED] is not None or inst[CANCELLED] is not None:
                    continue
                if self._case_alert(case_id, info, inst, now_ms, judge, partition, out.alerts):
                    changed[case_id] = state
        for case_id, state in changed.items():
            states[case_id] = state
        self._evict(states)
        return out

    def _evict(self, states: StateStore, exclude: dict[str, Any] | None = None) -> None:
        wm = self.watermark_ms
        heap = self._evictions
        if wm is None:
            return
        deferred: list[tuple[int, str]] = []
        while heap and heap[0][0] <= wm:
            _, case_id = heapq.heappop(heap)
            state = states.get(case_id)
            if state is not None and "x" in state:
                if state["x"] + self.tombstone_retention_ms <= wm:
                    del states[case_id]
                continue
            if state is None or not is_complete(state):
                continue
            due = state["lt"] + self.case_retention_ms
            if due > wm or (exclude is not None and case_id in exclude):
                # A case of the batch being applied waits for the next call (batch or sweep),
                # due already: keyed ``wm + 1`` it waited for a newer event, which the end of a
                # replay never brings (its last batch's complete cases stayed live for good).
                deferred.append((due, case_id))
                continue
            states[case_id] = {"x": wm, "h": [event_id[:8] for event_id in state["e"]]}
            deferred.append((wm + self.tombstone_retention_ms, case_id))
        for entry in deferred:
            heapq.heappush(heap, entry)

    def rebuild_index(self, states: StateStore) -> None:
        """Rebuild deadlines, evictions and the watermark from the state store.

        Also restarts the catch-up clock: the partitions that hold cases are expected, so open
        instances are not judged until those partitions are read again (or have been idle for
        the idle time), whatever "now" says.
        """
        deadlines: dict[int | None, list[tuple[int, str, str]]] = {}
        evictions: list[tuple[int, str]] = []
        partitions: set[int] = set()
        wm = self.watermark_ms
        for case_id, state in list(states.items()):
            if isinstance(state, dict) and "x" in state:
                evictions.append((state["x"] + self.tombstone_retention_ms, case_id))
                continue
            if not isinstance(state, dict):
                continue
            if wm is None or state["lt"] > wm:
                wm = state["lt"]
            partition = state.get("p")
            if partition is not None:
                partitions.add(partition)
            for key, inst in state["i"].items():
                info = self.stages.get(key)
                if (
                    info is not None
                    and inst[STARTED] is not None
                    and (inst[ALERT] == NO_ALERT or inst[ALERT] == FIRING)
                    and inst[ENDED] is None
                    and inst[CANCELLED] is None
                ):
                    slas = 1 if inst[ALERT] == NO_ALERT else 2  # when it fires, or escalates
                    deadlines.setdefault(partition, []).append(
                        (inst[STARTED] + slas * info.sla_ms, case_id, key)
                    )
            if is_complete(state):
                evictions.append((state["lt"] + self.case_retention_ms, case_id))
        for heap in deadlines.values():
            heapq.heapify(heap)
        heapq.heapify(evictions)
        self._deadlines, self._evictions, self.watermark_ms = deadlines, evictions, wm
        self.catch_up.forget()
        self.catch_up.expect(partitions)


def _contribution(info: StageInfo, inst: list[Any]) -> tuple[Any, ...] | None:
    """(group key, fact kind, payload...) this instance adds to hop 2, or None."""
    started = inst[STARTED]
    if started is None:
        return None
    ended = inst[ENDED]
    if ended is not None:
        duration = ended - started if ended > started else 0
        return (
            info.place(inst[PROVINCE], inst[PORT])[0],
            COMPLETION_FACT,
            ended,
            duration,
            1 if duration <= info.sla_ms else 0,
        )
    if inst[CANCELLED] is not None:
        return None
    return (info.place(inst[PROVINCE], inst[PORT])[0], BACKLOG_FACT, started, inst[AMOUNT])


def _count_feed(
    feeds: dict[tuple[str, str, int], list[Any]],
    agency: str,
    msg: InputMessage,
    raw: dict[str, Any],
    occurred: int,
) -> None:
    """Per (agency, topic, partition): [max offset, count, max occurred_at, max published_at, the
    set of event times (hop 2 finds silences in them)]."""
    key = (agency, msg.topic, msg.partition)
    feed = feeds.get(key)
    if feed is None:
        feeds[key] = [msg.offset, 1, occurred, raw["published_at"], {occurred}]
    else:
        _fold_feed(feed, msg.offset, occurred, raw["published_at"])


def _fold_feed(feed: list[Any], offset: int, occurred: int, published: int) -> None:
    if offset > feed[0]:
        feed[0] = offset
    feed[1] += 1
    if occurred > feed[2]:
        feed[2] = occurred
    if published > feed[3]:
        feed[3] = published
    feed[4].add(occurred)


def _cause(fact: list[Any]) -> tuple[str, int, int]:
    return (fact[1], fact[2], fact[3])


def _chunks(facts: list[list[Any]], limit: int) -> Iterator[list[list[Any]]]:
    """``facts`` (sorted by cause) in runs of about ``limit``, never splitting one cause's facts."""
    if len(facts) <= limit:
        yield facts
        return
    start = 0
    while start < len(facts):
        end = min(start + limit, len(facts))
        while end < len(facts) and _cause(facts[end]) == _cause(facts[end - 1]):
            end += 1
        yield facts[start:end]
        start = end


def dead_letter(msg: InputMessage, reason: str, detail: str, now_ms: int) -> dict[str, Any]:
    """A dead-letter record for a message the processors cannot fold in (raw shape)."""
    return {
        "dead_letter_id": ids.dead_letter_id(msg.topic, msg.partition, msg.offset),
        "source": PROCESSOR_SOURCE,
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "key": msg.key,
        "value": msg.value,
        "reason": reason,
        "detail": detail,
        "received_at": now_ms,
    }
