-- 1-minute KPI windows: retention now counts from when a window was stored, not from its
-- window_start. With the event-time TTL of 0002, a replay or a backfill of older history had
-- its 1m windows deleted as they arrived (so the board no longer matched the topics, and a
-- backfill showed no minute-level detail even for the days right after it). Minute windows are
-- still dropped 35 days after they were stored; the 1h and 24h windows keep the history.
ALTER TABLE kpi_windows MODIFY TTL toDateTime(ingested_at) + INTERVAL 35 DAY DELETE WHERE window = '1m';
