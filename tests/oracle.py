"""An independent oracle for the stream processors, written from ``stream_processors/SEMANTICS.md``.

Every expected stage record, KPI window, backlog, feed freshness and alert in the tests comes
from here: a plain pandas computation over the *set* of raw events, sharing no code with the
processors (only :func:`stream_processors.missions.load_missions` to read the missions file, and
the contract check :func:`schemas.validation.validate_event` that defines which events are
valid). Frames use the column names of the output Avro schemas (``schemas/avro/backbone.*``);
processing-time fields (``version``, ``as_of``, ``emitted_at``, ``last_seen_at``,
``late_events``, alert ``summary``/``severity``) are not functions of the events and are left
out. Money is raw integer paisa, timestamps epoch milliseconds.

Readings of SEMANTICS.md where the text leaves a choice (the most literal one is taken):

* duplicates: the first occurrence of an ``event_id`` among the *valid* events wins;
* a CANCELLED instance has ``ended_at``/``duration_ms``/``sla_met`` null; its CASE_SLA wait is
  measured to the first cancel event (``cancel_at - started_at``) and it resolves at that time;
* KPI_TARGET: ``{group}`` in the alert id is the group fields joined by ``|``
  (``mission|journey|stage|owner_agency|province|port``); a window is closed when
  ``watermark >= window_end + grace``; only windows that have completions of the group are
  evaluated; RESOLVED carries the resolving window's end;
* FEED_SILENT episodes are the gaps between consecutive event times of an agency longer than
  its threshold, plus the final silence up to ``now`` (arrival-dependent details, e.g. several
  events arriving together, are not modelled);
* CASE_SLA is the set rule; the arrival-dependent exception (an end delayed past
  ``started_at + sla_ms`` fires even within the SLA) is not modelled;
* backlog: every group that has at least one stage instance gets a row (0 when none is open).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas import contracts
from schemas.validation import InvalidRecord, validate_event
from stream_processors.missions import Missions, load_missions

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MISSIONS = REPO / "config" / "missions.yaml"
FAR_FUTURE_MS = 2**62  # validation "now" when the caller does not want the future-skew check
GROUP = ["mission", "journey", "stage", "owner_agency", "province", "port"]

STAGE_COLUMNS = [
    "record_id",
    "case_id",
    "mission",
    "journey",
    "stage",
    "owner_agency",
    "province",
    "port",
    "state",
    "started_at",
    "ended_at",
    "duration_ms",
    "sla_ms",
    "sla_met",
    "amount_pkr",
]
KPI_COLUMNS = [
    "kpi_id",
    "window",
    "window_start",
    "window_end",
    *GROUP,
    "completions",
    "sla_met",
    "sla_compliance",
    "p50_ms",
    "p90_ms",
    "mean_ms",
    "throughput_per_h",
]
BACKLOG_COLUMNS = ["backlog_id", *GROUP, "open_cases", "oldest_started_at", "amount_pkr_open"]
FEED_COLUMNS = ["agency", "topic", "last_occurred_at", "last_published_at", "events_total"]
ALERT_COLUMNS = [
    "alert_id",
    "kind",
    "state",
    "mission",
    "journey",
    "stage",
    "agency",
    "province",
    "port",
    "case_id",
    "starts_at",
    "ends_at",
    "waiting_since",
    "value",
    "threshold",
]


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def lower_quantile(sorted_values: Sequence[int], q: float) -> int:
    """SEMANTICS.md's exact reference: ``sorted(durations)[floor(q * (n - 1))]``."""
    return sorted_values[math.floor(q * (len(sorted_values) - 1))]


@dataclass
class OracleResult:
    """Everything the processors should end up with, as DataFrames named after the Avro fields."""

    events: pd.DataFrame  # the valid, distinct events the rest is computed from
    stage_records: pd.DataFrame
    kpi_windows: pd.DataFrame
    backlog: pd.DataFrame
    feed_freshness: pd.DataFrame
    case_sla_alerts: pd.DataFrame
    kpi_target_alerts: pd.DataFrame
    feed_silent_alerts: pd.DataFrame
    invalid: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)  # (topic, raw, reason)
    duplicates: int = 0

    @property
    def alerts(self) -> pd.DataFrame:
        frames = [
            f for f in (self.case_sla_alerts, self.kpi_target_alerts, self.feed_silent_alerts) if len(f)
        ]
        return pd.concat(frames, ignore_index=True) if frames else _empty(ALERT_COLUMNS)

    def firing_ids(self, kind: str = "CASE_SLA") -> set[str]:
        a = self.alerts
        return set(a.loc[(a["kind"] == kind) & (a["state"] == "FIRING"), "alert_id"])

    def resolved_ids(self, kind: str = "CASE_SLA") -> set[str]:
        a = self.alerts
        return set(a.loc[(a["kind"] == kind) & (a["state"] == "RESOLVED"), "alert_id"])


def rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Frame → list of plain dicts (pandas NA → None, numpy scalars → Python), for comparisons."""
    out = []
    for rec in frame.astype(object).to_dict("records"):
        out.append(
            {k: (None if _is_na(v) else (v.item() if hasattr(v, "item") else v)) for k, v in rec.items()}
        )
    return out


def _is_na(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


# -- inputs ---------------------------------------------------------------------------------


def _port_topics() -> set[str]:
    """Families whose records carry a ``port`` (customs and container moves), from the schemas."""
    return {t for t in contracts.INPUT_TOPICS if "port" in contracts.current(t).field_names}


def valid_distinct_events(
    events: Iterable[Sequence[Any]], validation_now_ms: int
) -> tuple[pd.DataFrame, list[tuple[str, dict[str, Any], str]], int]:
    """Keep events that pass the contract, then the first of each ``event_id``.

    ``events`` are ``(topic, raw, ...)`` sequences (a simulator ``SimEvent`` fits).
    """
    money_fields = sorted({m for t in contracts.INPUT_TOPICS for m in contracts.current(t).money_fields})
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    invalid: list[tuple[str, dict[str, Any], str]] = []
    duplicates = 0
    for item in events:
        topic, raw = item[0], item[1]
        try:
            validate_event(topic, raw, validation_now_ms)
        except InvalidRecord as exc:
            invalid.append((topic, dict(raw), str(exc)))
            continue
        if raw["event_id"] in seen:
            duplicates += 1
            continue
        seen.add(raw["event_id"])
        row = {name: raw.get(name) for name in contracts.ENVELOPE_FIELDS}
        row["topic"] = topic
        row["port"] = raw.get("port")
        for m in money_fields:
            row[m] = raw.get(m)
        kept.append(row)
    columns = ["topic", *contracts.ENVELOPE_FIELDS, "port", *money_fields]
    frame = pd.DataFrame(kept, columns=columns)
    for c in ("occurred_at", "published_at"):
        frame[c] = frame[c].astype("int64")
    return frame, invalid, duplicates


# -- stage instances ------------------------------------------------------------------------


def stage_records(ev: pd.DataFrame, missions: Missions) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage instances (SEMANTICS.md "Stage instances") and, per instance, its first cancel time."""
    port_topics = _port_topics()
    frames = []
    for ref in missions.stages:
        m, j, s = ref.mission.id, ref.journey.id, ref.stage
        starts = ev[(ev["topic"] == s.start.topic) & (ev["status"] == s.start.status)]
        if starts.empty:
            continue
        first = starts.sort_values(["case_id", "occurred_at", "event_id"]).drop_duplicates(
            "case_id", keep="first"
        )
        ends = ev[(ev["topic"] == s.end.topic) & (ev["status"] == s.end.status)]
        ended = ends.groupby("case_id")["occurred_at"].min().rename("ended_at")
        cancel_mask = pd.Series(False, index=ev.index)
        for c in s.cancel_on:
            cancel_mask |= (ev["topic"] == c.topic) & (ev["status"] == c.status)
        cancelled = ev[cancel_mask].groupby("case_id")["occurred_at"].min().rename("cancel_at")
        rec = first.set_index("case_id").join(ended, how="left").join(cancelled, how="left").reset_index()
        rec["mission"], rec["journey"], rec["stage"] = m, j, s.id
        rec["started_at"] = rec["occurred_at"]
        rec["port"] = rec["port"].fillna("") if s.start.topic in port_topics else ""
        rec["port"] = rec["port"].astype(object)
        rec["owner_agency"] = [
            s.owner_by_port.get(port) or s.owner_by_province.get(prov) or s.owner
            for port, prov in zip(rec["port"], rec["province"], strict=True)
        ]
        has_end = rec["ended_at"].notna()
        has_cancel = rec["cancel_at"].notna()
        rec["state"] = "OPEN"
        rec.loc[has_cancel & ~has_end, "state"] = "CANCELLED"
        rec.loc[has_end, "state"] = "CLOSED"
        rec["ended_at"] = rec["ended_at"].astype("Int64")
        rec["cancel_at"] = rec["cancel_at"].astype("Int64")
        rec["duration_ms"] = (rec["ended_at"] - rec["started_at"]).clip(lower=0).astype("Int64")
        rec["sla_ms"] = s.sla_ms
        rec["sla_met"] = (rec["duration_ms"] <= s.sla_ms).astype("boolean")
        if s.money_field:
            rec["amount_pkr"] = rec[s.money_field].astype("Int64")
        else:
            rec["amount_pkr"] = pd.array([pd.NA] * len(rec), dtype="Int64")
        rec["record_id"] = [sha1(f"{c}|{m}|{j}|{s.id}") for c in rec["case_id"]]
        frames.append(rec[[*STAGE_COLUMNS, "cancel_at"]])
    if not frames:
        empty = _empty([*STAGE_COLUMNS, "cancel_at"])
        return empty[STAGE_COLUMNS], empty[["record_id", "cancel_at"]]
    allrec = pd.concat(frames, ignore_index=True).sort_values("record_id", ignore_index=True)
    return allrec[STAGE_COLUMNS], allrec[["record_id", "cancel_at"]]


# -- KPI windows ------------------------------------------------------------------------------


def kpi_windows(records: pd.DataFrame, missions: Missions) -> pd.DataFrame:
    """SEMANTICS.md "KPI windows": every epoch-aligned window that contains a completion's end."""
    done = records[records["state"] == "CLOSED"]
    if done.empty:
        return _empty(KPI_COLUMNS)
    parts = []
    ended = done["ended_at"].astype("int64").to_numpy()
    base = done[[*GROUP, "duration_ms", "sla_met"]].reset_index(drop=True)
    for w in missions.windows:
        step = w.hop_ms or w.size_ms
        per = (
            w.size_ms // step
        )  # windows per completion: the ones starting at end//step*step, one step back, ...
        rows_ = np.repeat(np.arange(len(base)), per)
        back = np.tile(np.arange(per), len(base))
        part = base.iloc[rows_].reset_index(drop=True)
        part["window"] = w.name
        part["window_start"] = (ended[rows_] // step - back) * step
        part["window_end"] = part["window_start"] + w.size_ms
        part["size_h"] = w.size_ms / 3_600_000
        parts.append(part)
    wins = pd.concat(parts, ignore_index=True)
    wins["duration_ms"] = wins["duration_ms"].astype("int64")
    wins["sla_met"] = wins["sla_met"].astype(bool)
    keys = ["window", "window_start", *GROUP]
    wins = wins.sort_values([*keys, "duration_ms"], ignore_index=True)
    grouped = wins.groupby(keys, sort=False)
    wins["n"] = grouped["duration_ms"].transform("size")
    wins["rank"] = grouped.cumcount()
    agg = grouped.agg(
        window_end=("window_end", "first"),
        completions=("duration_ms", "size"),
        sla_met=("sla_met", "sum"),
        mean_ms=("duration_ms", "mean"),
        size_h=("size_h", "first"),
    ).reset_index()
    for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9)):
        pick = wins[wins["rank"] == (q * (wins["n"] - 1)).apply(math.floor)]
        agg = agg.merge(
            pick[[*keys, "duration_ms"]].rename(columns={"duration_ms": name}), on=keys, how="left"
        )
    agg["sla_compliance"] = agg["sla_met"] / agg["completions"]
    agg["throughput_per_h"] = agg["completions"] / agg["size_h"]
    agg["kpi_id"] = [
        sha1(
            f"{r.window}|{r.window_start}|{r.mission}|{r.journey}|{r.stage}|{r.owner_agency}|{r.province}|{r.port}"
        )
        for r in agg.itertuples()
    ]
    for c in ("window_start", "window_end", "completions", "sla_met", "p50_ms", "p90_ms"):
        agg[c] = agg[c].astype("int64")
    return agg[KPI_COLUMNS].sort_values(["window", "window_start", *GROUP], ignore_index=True)


# -- backlog and feeds --------------------------------------------------------------------------


def backlog(records: pd.DataFrame, missions: Missions) -> pd.DataFrame:
    """SEMANTICS.md "Backlog": per KPI group over OPEN instances; groups with none open show 0."""
    if records.empty:
        return _empty(BACKLOG_COLUMNS)
    money_stages = {(r.mission.id, r.journey.id, r.stage.id) for r in missions.stages if r.stage.money_field}
    groups = records[GROUP].drop_duplicates().reset_index(drop=True)
    open_ = records[records["state"] == "OPEN"]
    agg = (
        open_.groupby(GROUP)
        .agg(
            open_cases=("record_id", "size"),
            oldest_started_at=("started_at", "min"),
            amount_sum=("amount_pkr", lambda s: int(s.dropna().sum())),
        )
        .reset_index()
    )
    out = groups.merge(agg, on=GROUP, how="left")
    out["open_cases"] = out["open_cases"].fillna(0).astype("int64")
    out["oldest_started_at"] = out["oldest_started_at"].astype("Int64")
    is_money = [
        (m, j, s) in money_stages
        for m, j, s in zip(out["mission"], out["journey"], out["stage"], strict=True)
    ]
    out["amount_pkr_open"] = pd.array(
        [
            (int(a) if not _is_na(a) else 0) if money else pd.NA
            for a, money in zip(out["amount_sum"], is_money, strict=True)
        ],
        dtype="Int64",
    )
    out["backlog_id"] = [
        sha1(f"{r.mission}|{r.journey}|{r.stage}|{r.owner_agency}|{r.province}|{r.port}")
        for r in out.itertuples()
    ]
    return out[BACKLOG_COLUMNS].sort_values(GROUP, ignore_index=True)


def feed_freshness(ev: pd.DataFrame) -> pd.DataFrame:
    """SEMANTICS.md "Feed freshness": newest event time, newest publication, the newest event's topic
    (ties: the greatest topic name) and the count of valid distinct events, per agency."""
    if ev.empty:
        return _empty(FEED_COLUMNS)
    newest = ev.sort_values(["agency", "occurred_at", "topic"], ascending=[True, False, False])
    newest = newest.drop_duplicates("agency", keep="first").set_index("agency")
    grouped = ev.groupby("agency")
    out = pd.DataFrame(
        {
            "agency": newest.index,
            "topic": newest["topic"].values,
            "last_occurred_at": newest["occurred_at"].values,
        }
    )
    out["last_published_at"] = out["agency"].map(grouped["published_at"].max()).astype("int64")
    out["events_total"] = out["agency"].map(grouped.size()).astype("int64")
    return out[FEED_COLUMNS].sort_values("agency", ignore_index=True)


# -- alerts -------------------------------------------------------------------------------------


def case_sla_alerts(records: pd.DataFrame, cancels: pd.DataFrame, now_ms: int) -> pd.DataFrame:
    """CASE_SLA: FIRING when the wait (to end, cancel or now) exceeds the SLA; RESOLVED once ended."""
    if records.empty:
        return _empty(ALERT_COLUMNS)
    rec = records.merge(cancels, on="record_id", how="left")
    closed = rec["state"] == "CLOSED"
    cancelled = rec["state"] == "CANCELLED"
    until = pd.Series(now_ms, index=rec.index, dtype="int64")
    until[closed] = rec.loc[closed, "ended_at"].astype("int64")
    until[cancelled] = rec.loc[cancelled, "cancel_at"].astype("int64")
    fired = rec[(until - rec["started_at"]) > rec["sla_ms"]].copy()
    fired["alert_id"] = [sha1(f"CASE_SLA|{r}") for r in fired["record_id"]]
    base = pd.DataFrame(
        {
            "alert_id": fired["alert_id"],
            "kind": "CASE_SLA",
            "mission": fired["mission"],
            "journey": fired["journey"],
            "stage": fired["stage"],
            "agency": fired["owner_agency"],
            "province": fired["province"],
            "port": fired["port"],
            "case_id": fired["case_id"],
            "starts_at": (fired["started_at"] + fired["sla_ms"]).astype("int64"),
            "waiting_since": fired["started_at"].astype("int64"),
            "value": None,
            "threshold": fired["sla_ms"].astype(float),
        }
    )
    firing = base.assign(state="FIRING", ends_at=pd.array([pd.NA] * len(base), dtype="Int64"))
    ended = fired["state"].isin(["CLOSED", "CANCELLED"])
    resolved = base[ended.values].assign(state="RESOLVED")
    ends = fired.loc[ended, "ended_at"].where(
        fired.loc[ended, "state"] == "CLOSED", fired.loc[ended, "cancel_at"]
    )
    resolved["ends_at"] = pd.array(ends.astype("Int64").values, dtype="Int64")
    out = pd.concat([firing, resolved], ignore_index=True)
    return out[ALERT_COLUMNS].sort_values(["alert_id", "state"], ignore_index=True)


def kpi_target_alerts(
    kpis: pd.DataFrame, missions: Missions, watermark_ms: int, grace_ms: int
) -> pd.DataFrame:
    """KPI_TARGET episodes over the target's closed windows (watermark >= window_end + grace)."""
    out: list[dict[str, Any]] = []
    if kpis.empty:
        return _empty(ALERT_COLUMNS)
    for mission, target, ref in missions.targets:
        sel = kpis[
            (kpis["window"] == target.window)
            & (kpis["mission"] == mission.id)
            & (kpis["journey"] == ref.journey.id)
            & (kpis["stage"] == ref.stage.id)
            & (kpis["window_end"] + grace_ms <= watermark_ms)
        ].sort_values("window_start")
        for group, windows in sel.groupby(GROUP, sort=True):
            open_id: str | None = None
            for w in windows.itertuples():
                breach = (
                    w.completions >= target.min_completions and w.sla_compliance < target.min_sla_compliance
                )
                meets = (
                    w.completions >= target.min_completions and w.sla_compliance >= target.min_sla_compliance
                )
                common = {
                    "kind": "KPI_TARGET",
                    "mission": group[0],
                    "journey": group[1],
                    "stage": group[2],
                    "agency": group[3],
                    "province": group[4],
                    "port": group[5],
                    "case_id": None,
                    "waiting_since": None,
                    "threshold": float(target.min_sla_compliance),
                }
                if open_id is None and breach:
                    open_id = sha1(f"KPI_TARGET|{target.id}|{'|'.join(group)}|{w.window_start}")
                    out.append(
                        {
                            **common,
                            "alert_id": open_id,
                            "state": "FIRING",
                            "starts_at": int(w.window_end),
                            "ends_at": None,
                            "value": float(w.sla_compliance),
                            "window_start": int(w.window_start),
                        }
                    )
                    first_end = int(w.window_end)
                elif open_id is not None and meets:
                    out.append(
                        {
                            **common,
                            "alert_id": open_id,
                            "state": "RESOLVED",
                            "starts_at": first_end,
                            "ends_at": int(w.window_end),
                            "value": float(w.sla_compliance),
                            "window_start": int(w.window_start),
                        }
                    )
                    open_id = None
    if not out:
        return _empty([*ALERT_COLUMNS, "window_start"])
    frame = pd.DataFrame(out)
    return frame[[*ALERT_COLUMNS, "window_start"]]


def feed_silent_alerts(ev: pd.DataFrame, missions: Missions, now_ms: int) -> pd.DataFrame:
    """FEED_SILENT episodes: gaps between an agency's consecutive event times longer than its threshold."""
    feeds = missions.feeds
    out: list[dict[str, Any]] = []
    for agency, times in ev.groupby("agency")["occurred_at"]:
        threshold = feeds.silence_ms.get(agency, feeds.default_silence_ms)
        ts = sorted(set(int(t) for t in times)) + [None]
        for last, nxt in zip(ts[:-1], ts[1:], strict=True):
            silent_until = now_ms if nxt is None else nxt
            if silent_until - last <= threshold:
                continue
            common = {
                "alert_id": sha1(f"FEED_SILENT|{agency}|{last}"),
                "kind": "FEED_SILENT",
                "mission": "",
                "journey": "",
                "stage": "",
                "agency": agency,
                "province": "",
                "port": "",
                "case_id": None,
                "starts_at": last + threshold,
                "waiting_since": last,
                "value": None,
                "threshold": float(threshold),
            }
            out.append({**common, "state": "FIRING", "ends_at": None})
            if nxt is not None:
                out.append({**common, "state": "RESOLVED", "ends_at": nxt})
    if not out:
        return _empty(ALERT_COLUMNS)
    return pd.DataFrame(out)[ALERT_COLUMNS]


@functools.cache
def _load(path: Path) -> Missions:
    return load_missions(path)


# -- entry point --------------------------------------------------------------------------------


def compute(
    events: Iterable[Sequence[Any]],
    now_ms: int,
    missions: Missions | Path | None = None,
    *,
    validation_now_ms: int | None = None,
    watermark_ms: int | None = None,
    grace_ms: int = 3_600_000,
) -> OracleResult:
    """Everything SEMANTICS.md defines, from raw events ``(topic, raw, ...)`` in any order.

    ``now_ms`` is the clock for open cases and silent feeds. ``validation_now_ms`` is the "now"
    of the contract's future-skew check (default: no future check). ``watermark_ms`` decides
    which windows are closed for KPI_TARGET (default: the newest ``occurred_at``).
    """
    if not isinstance(missions, Missions):
        missions = _load(Path(missions or DEFAULT_MISSIONS).resolve())
    ev, invalid, duplicates = valid_distinct_events(events, validation_now_ms or FAR_FUTURE_MS)
    records, cancels = stage_records(ev, missions)
    kpis = kpi_windows(records, missions)
    watermark = watermark_ms if watermark_ms is not None else (int(ev["occurred_at"].max()) if len(ev) else 0)
    return OracleResult(
        events=ev,
        stage_records=records,
        kpi_windows=kpis,
        backlog=backlog(records, missions),
        feed_freshness=feed_freshness(ev),
        case_sla_alerts=case_sla_alerts(records, cancels, now_ms),
        kpi_target_alerts=kpi_target_alerts(kpis, missions, watermark, grace_ms),
        feed_silent_alerts=feed_silent_alerts(ev, missions, now_ms),
        invalid=invalid,
        duplicates=duplicates,
    )


def as_mapping(frame: pd.DataFrame, key: str) -> dict[str, dict[str, Any]]:
    """``rows(frame)`` keyed by ``key`` (record_id, kpi_id, backlog_id, agency...)."""
    return {r[key]: r for r in rows(frame)}


__all__: list[str] = [
    "OracleResult",
    "compute",
    "rows",
    "as_mapping",
    "sha1",
    "lower_quantile",
    "valid_distinct_events",
    "stage_records",
    "kpi_windows",
    "backlog",
    "feed_freshness",
    "case_sla_alerts",
    "kpi_target_alerts",
    "feed_silent_alerts",
]
