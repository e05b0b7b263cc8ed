-- The stream processors' outputs, one table per backbone.* topic, one column per Avro field
-- (same names, so board SQL reads like the contracts in schemas/avro/backbone.*).
--
-- Common choices, and why:
-- * ReplacingMergeTree(version) keyed on the record's deterministic id: the processors re-emit
--   a record with a higher version as it changes (OPEN -> CLOSED, a window filling up) and a
--   replay re-emits the same versions; the highest version per id is the truth. Copies are
--   removed by background merges; the `*_latest` views (0003) use FINAL so the board never
--   sees more than one row per id in between.
-- * Every column placed in ORDER BY before the id is a function of the id (never of a field
--   that a later version may change), so all versions of a record share the whole sorting key
--   and merge. The leading columns are the ones board queries filter on.
-- * A PARTITION BY must also be immutable per id, or versions would land in different
--   partitions and never merge; tables without such a column are not partitioned.
-- * Timestamps DateTime64(3, 'UTC'), money Decimal(18, 2), enums LowCardinality(String).
-- * `version` is UInt64 (ReplacingMergeTree needs an unsigned version): a negative version is
--   rejected by the sink and parked in dead_letters with the reason.

-- Stage instances (SEMANTICS.md "Stage instances"). owner_agency/province/port come from the
-- start event and may change when an earlier start event arrives late, so they are not in the
-- key; (mission, journey, stage, case_id) are fixed by record_id. Not partitioned: no date
-- column is fixed per record (a correction can move started_at/ended_at).
CREATE TABLE IF NOT EXISTS stage_records
(
    record_id String,
    case_id String CODEC(ZSTD(1)),
    mission LowCardinality(String),
    journey LowCardinality(String),
    stage LowCardinality(String),
    owner_agency LowCardinality(String),
    province LowCardinality(String),
    port LowCardinality(String),
    state LowCardinality(String),
    started_at Nullable(DateTime64(3, 'UTC')) CODEC(ZSTD(1)),
    ended_at Nullable(DateTime64(3, 'UTC')) CODEC(ZSTD(1)),
    duration_ms Nullable(Int64),
    sla_ms Int64,
    sla_met Nullable(Bool),
    amount_pkr Nullable(Decimal(18, 2)),
    version UInt64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (mission, journey, stage, case_id, record_id);

-- KPI windows. Everything before kpi_id is part of the id (window, window_start, group), so the
-- 30-day trend of one stage (WHERE window = '24h' AND stage = ... AND window_start >= ...) reads
-- one narrow range. Partitioned by month of window_start (fixed per kpi_id).
-- TTL: 1-minute windows are for the live board only; they are dropped after 35 days (the 1h and
-- 24h windows, and the daily rollup, keep the history). A `backbone recompute` can rebuild them.
CREATE TABLE IF NOT EXISTS kpi_windows
(
    kpi_id String,
    window LowCardinality(String),
    window_start DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    window_end DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    mission LowCardinality(String),
    journey LowCardinality(String),
    stage LowCardinality(String),
    owner_agency LowCardinality(String),
    province LowCardinality(String),
    port LowCardinality(String),
    completions Int64,
    sla_met Int64,
    sla_compliance Nullable(Float64),
    p50_ms Nullable(Int64),
    p90_ms Nullable(Int64),
    mean_ms Nullable(Float64),
    throughput_per_h Float64,
    late_events Int64,
    version UInt64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (window, mission, journey, stage, window_start, owner_agency, province, port, kpi_id)
TTL toDateTime(window_start) + INTERVAL 35 DAY DELETE WHERE window = '1m';

-- Alert transitions with their history: one row per (alert_id, state), so FIRING and RESOLVED
-- both stay (the board shows when it fired and when it cleared). A replay re-emits the same
-- transitions; the latest emitted_at per (alert_id, state) is kept. Not partitioned (ids are
-- hashes; no date is fixed per (alert_id, state) across replays except starts_at, and alert
-- volume is small). `alerts_current` (0003) gives one row per alert: its latest state.
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id String,
    kind LowCardinality(String),
    state LowCardinality(String),
    severity LowCardinality(String),
    mission LowCardinality(String),
    journey LowCardinality(String),
    stage LowCardinality(String),
    agency LowCardinality(String),
    province LowCardinality(String),
    port LowCardinality(String),
    case_id Nullable(String),
    summary String CODEC(ZSTD(1)),
    starts_at DateTime64(3, 'UTC'),
    ends_at Nullable(DateTime64(3, 'UTC')),
    waiting_since Nullable(DateTime64(3, 'UTC')),
    value Nullable(Float64),
    threshold Nullable(Float64),
    emitted_at DateTime64(3, 'UTC'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(emitted_at)
ORDER BY (alert_id, state);

-- Inputs nobody could process: from the processors (undecodable or invalid agency events) and
-- from the sink itself (an output record it cannot decode, or a row ClickHouse rejects).
-- key/value keep the original bytes (String is binary-safe) so an operator can fix and replay.
-- dead_letter_id is deterministic (topic|partition|offset), so a replay replaces, not adds.
-- Not partitioned and no TTL: nothing here may disappear before someone has looked at it.
CREATE TABLE IF NOT EXISTS dead_letters
(
    dead_letter_id String,
    source LowCardinality(String),
    topic LowCardinality(String),
    partition Int32,
    offset Int64,
    key Nullable(String) CODEC(ZSTD(1)),
    value Nullable(String) CODEC(ZSTD(1)),
    reason LowCardinality(String),
    detail String CODEC(ZSTD(1)),
    received_at DateTime64(3, 'UTC'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
ORDER BY dead_letter_id;

-- Backlog per KPI group, re-emitted when it changes: after merges one row per group, so the
-- "current backlog" is already pre-aggregated by the processors and tiny to read.
CREATE TABLE IF NOT EXISTS backlog
(
    backlog_id String,
    mission LowCardinality(String),
    journey LowCardinality(String),
    stage LowCardinality(String),
    owner_agency LowCardinality(String),
    province LowCardinality(String),
    port LowCardinality(String),
    open_cases Int64,
    oldest_started_at Nullable(DateTime64(3, 'UTC')),
    amount_pkr_open Nullable(Decimal(18, 2)),
    as_of DateTime64(3, 'UTC'),
    version UInt64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (mission, journey, stage, owner_agency, province, port, backlog_id);

-- Last event seen per agency feed; the agency code is the id.
CREATE TABLE IF NOT EXISTS feed_freshness
(
    agency LowCardinality(String),
    topic LowCardinality(String),
    last_occurred_at DateTime64(3, 'UTC'),
    last_published_at DateTime64(3, 'UTC'),
    last_seen_at DateTime64(3, 'UTC'),
    events_total Int64,
    version UInt64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree(version)
ORDER BY agency;
