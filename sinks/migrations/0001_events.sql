-- Raw agency events: every valid event of the five families, one row per event_id.
--
-- Why these choices:
-- * ReplacingMergeTree keyed on the event id: the pipeline is at-least-once (a sink restart or
--   a topic replay inserts an event again); background merges keep one row per key and
--   `events_distinct` (FINAL) hides not-yet-merged copies. `event_id` is the producer's
--   idempotency key: a re-sent event keeps its id *and* its content, so any copy is the event.
-- * ORDER BY (topic, case_id, event_id): every column of the key is a function of the event, so
--   copies of an event share the whole key and merge. `topic` first (5 values) lets per-family
--   queries skip granules; `case_id` next serves the case tracker (all of a case's events of a
--   family in one range) and the recompute's GROUP BY case_id reads cases together.
-- * PARTITION BY month of occurred_at: immutable per event (copies land in the same partition and
--   merge), monthly parts keep merges cheap and let an operator detach/move old history.
-- * LowCardinality for codes (agency, province, status, port...): few distinct values, stored as
--   dictionary ids, and GROUP BY on them is fast. Money is Decimal(18, 2), exact (paisa / 100).
-- * Codecs: timestamps with Delta+ZSTD (a case's events sit together and are close in time),
--   free text with ZSTD; UUIDs are random and stay on the default LZ4.
-- * No TTL: raw events are the source of truth for `backbone recompute` and audits.
CREATE TABLE IF NOT EXISTS events
(
    event_id UUID,
    case_id String CODEC(ZSTD(1)),
    topic LowCardinality(String),
    agency LowCardinality(String),
    province LowCardinality(String),
    status LowCardinality(String),
    occurred_at DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    published_at DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    -- family fields; empty string / NULL / [] when the event's family has no such field
    port LowCardinality(String) DEFAULT '',
    hs_code LowCardinality(String) DEFAULT '',
    declared_value_pkr Nullable(Decimal(18, 2)),
    container_ids Array(String) CODEC(ZSTD(1)),
    exporter_id Nullable(String) CODEC(ZSTD(1)),
    gd_number Nullable(String) CODEC(ZSTD(1)),
    from_province LowCardinality(String) DEFAULT '',
    to_province LowCardinality(String) DEFAULT '',
    vehicle_reg String DEFAULT '' CODEC(ZSTD(1)),
    terminal LowCardinality(String) DEFAULT '',
    container_id String DEFAULT '' CODEC(ZSTD(1)),
    vessel Nullable(String) CODEC(ZSTD(1)),
    amount_pkr Nullable(Decimal(18, 2)),
    regulator LowCardinality(String) DEFAULT '',
    instrument String DEFAULT '' CODEC(ZSTD(1)),
    sector LowCardinality(String) DEFAULT '',
    -- provenance: where the sink read it and when it was stored
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(Delta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (topic, case_id, event_id);

-- The board reads events through this view: one row per (topic, case_id, event_id) even before
-- background merges ran. Count events with `count()` here, never on `events` directly.
CREATE VIEW IF NOT EXISTS events_distinct AS
SELECT * FROM events FINAL;
