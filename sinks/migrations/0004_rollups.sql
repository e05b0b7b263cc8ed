-- Pre-aggregated data for the board's heaviest queries: the 30-day KPI trend, money locked by
-- age, and event counts per feed.
--
-- The catch with rollups here: the tables they summarise hold several versions of a record
-- (OPEN then CLOSED, corrections, replays). An ordinary materialized view sees every inserted
-- version and would count a completion twice after a replay or a correction. So:
-- * rollups of stage records are REFRESHABLE materialized views computed from the deduplicated
--   `stage_records_latest`: every refresh recomputes the rollup and swaps it in atomically, so
--   the board never sees a half-built or double-counted rollup (needs ClickHouse >= 24.10 on a
--   server; chdb 4.x has it). Cost: one pass over the stage records per refresh (a few hundred
--   ms per million records), hence the period of one minute.
-- * the event-count rollup is an incremental view whose aggregate is duplicate-insensitive
--   (uniqExact of event_id), so an event inserted twice counts once.

-- Daily KPI per completion day x KPI group. Counts and sums are plain numbers (additive across
-- groups and days); the duration distribution is an aggregate state so the board can merge any
-- set of days/provinces into one p50/p90: quantilesExactLowMerge(0.5, 0.9)(duration_quantiles).
-- The values are exact durations from the data (no sketch); ClickHouse picks the rank as
-- floor(q * n), so p90 may sit one rank above SEMANTICS.md's floor(q * (n - 1)). The KPI windows
-- and `backbone recompute` follow SEMANTICS.md exactly; this rollup is the trend view.
-- ORDER BY starts with the stage so a 30-day trend of one stage reads one range; partitioned by
-- month; no TTL (it is small and the trend is the point).
CREATE TABLE IF NOT EXISTS kpi_daily
(
    day Date,
    mission LowCardinality(String),
    journey LowCardinality(String),
    stage LowCardinality(String),
    owner_agency LowCardinality(String),
    province LowCardinality(String),
    port LowCardinality(String),
    completions SimpleAggregateFunction(sum, UInt64),
    sla_met SimpleAggregateFunction(sum, UInt64),
    duration_ms_sum SimpleAggregateFunction(sum, Int64),
    duration_quantiles AggregateFunction(quantilesExactLow(0.5, 0.9), Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (mission, journey, stage, day, owner_agency, province, port);

CREATE MATERIALIZED VIEW IF NOT EXISTS kpi_daily_refresh
REFRESH EVERY 1 MINUTE TO kpi_daily AS
SELECT
    toDate(ended_at) AS day,
    mission, journey, stage, owner_agency, province, port,
    toUInt64(count()) AS completions,
    toUInt64(countIf(sla_met)) AS sla_met,
    toInt64(sum(assumeNotNull(duration_ms))) AS duration_ms_sum,
    quantilesExactLowState(0.5, 0.9)(assumeNotNull(duration_ms)) AS duration_quantiles
FROM stage_records_latest
WHERE state = 'CLOSED' AND ended_at IS NOT NULL AND duration_ms IS NOT NULL
GROUP BY day, mission, journey, stage, owner_agency, province, port;

-- The same rollup with final values, for panels that show one group per row.
CREATE VIEW IF NOT EXISTS kpi_daily_summary AS
SELECT
    day, mission, journey, stage, owner_agency, province, port,
    completions, sla_met,
    sla_met / completions AS sla_compliance,
    duration_ms_sum / completions AS mean_ms,
    duration_quantiles_ms[1] AS p50_ms,
    duration_quantiles_ms[2] AS p90_ms
FROM
(
    SELECT
        day, mission, journey, stage, owner_agency, province, port,
        sum(kpi_daily.completions) AS completions,
        sum(kpi_daily.sla_met) AS sla_met,
        sum(kpi_daily.duration_ms_sum) AS duration_ms_sum,
        quantilesExactLowMerge(0.5, 0.9)(kpi_daily.duration_quantiles) AS duration_quantiles_ms
    FROM kpi_daily
    GROUP BY day, mission, journey, stage, owner_agency, province, port
);

-- Open cases by age bucket (0-30, 31-60, 61-90, 90+ days, as a delivery unit reports money
-- locked), with the money they hold. Recomputed every minute against the clock.
CREATE TABLE IF NOT EXISTS backlog_ageing
(
    mission LowCardinality(String),
    journey LowCardinality(String),
    stage LowCardinality(String),
    owner_agency LowCardinality(String),
    province LowCardinality(String),
    port LowCardinality(String),
    age_bucket LowCardinality(String),
    open_cases UInt64,
    amount_pkr_open Nullable(Decimal(18, 2)),
    oldest_started_at Nullable(DateTime64(3, 'UTC')),
    as_of DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (mission, journey, stage, owner_agency, province, port, age_bucket);

CREATE MATERIALIZED VIEW IF NOT EXISTS backlog_ageing_refresh
REFRESH EVERY 1 MINUTE TO backlog_ageing AS
SELECT
    mission, journey, stage, owner_agency, province, port,
    multiIf(age_days <= 30, '0-30d', age_days <= 60, '31-60d', age_days <= 90, '61-90d', '90d+') AS age_bucket,
    toUInt64(count()) AS open_cases,
    sum(amount_pkr) AS amount_pkr_open,
    min(started_at) AS oldest_started_at,
    max(now_utc) AS as_of
FROM
(
    SELECT *, now64(3, 'UTC') AS now_utc,
           intDiv(toUnixTimestamp64Milli(now_utc) - toUnixTimestamp64Milli(assumeNotNull(started_at)), 86400000) AS age_days
    FROM stage_records_latest
    WHERE state = 'OPEN' AND started_at IS NOT NULL
)
GROUP BY mission, journey, stage, owner_agency, province, port, age_bucket;

-- Distinct events per day x feed x status, maintained on every insert into `events`. uniqExact
-- of event_id makes a re-inserted event count once. Read with uniqExactMerge(events).
CREATE TABLE IF NOT EXISTS events_daily
(
    day Date,
    topic LowCardinality(String),
    agency LowCardinality(String),
    province LowCardinality(String),
    status LowCardinality(String),
    events AggregateFunction(uniqExact, UUID),
    last_occurred_at SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (topic, agency, day, province, status);

CREATE MATERIALIZED VIEW IF NOT EXISTS events_daily_mv TO events_daily AS
SELECT
    toDate(occurred_at) AS day, topic, agency, province, status,
    uniqExactState(event_id) AS events,
    max(occurred_at) AS last_occurred_at
FROM events
GROUP BY day, topic, agency, province, status;
