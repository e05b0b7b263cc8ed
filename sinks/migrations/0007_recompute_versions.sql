-- `backbone recompute` (sinks/recompute.py) writes recomputed history as numbered versions:
-- tables stage_records_v<N> and kpi_windows_v<N>, created by the recompute itself (their
-- columns follow the stream tables of 0002). The board views `stage_records_latest` and
-- `kpi_windows_latest` are then re-created (CREATE OR REPLACE VIEW, atomic per view) over the
-- new version and the stream results that came after it.
--
-- This table is the log of versions: one row per state change (building, ready, active,
-- retired, failed, dropped), the newest row per version wins. Which version the board shows is
-- read from the views themselves, so this log can never disagree with the board.
CREATE TABLE IF NOT EXISTS recompute_versions
(
    version UInt32,
    status LowCardinality(String),
    missions_file String,
    missions_sha256 String,
    from_time Nullable(DateTime64(3, 'UTC')),
    snapshot_at DateTime64(3, 'UTC'),
    stream_after DateTime64(3, 'UTC'),
    window_cutoff DateTime64(3, 'UTC'),
    events_read UInt64,
    stage_records UInt64,
    kpi_windows UInt64,
    seconds Float64,
    detail String,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY version;
