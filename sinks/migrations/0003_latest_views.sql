-- What the board reads: one row per record id, the latest version, even before background
-- merges ran. Boards and alerts must query these views, never the raw tables (which may hold
-- several versions of a record until ClickHouse merges them).
--
-- FINAL (rather than argMax per column) because it is exact for every column at once and, on
-- current ClickHouse, runs in parallel and only merges the parts that overlap. Filters on
-- non-key columns (e.g. state = 'OPEN') are applied after FINAL, so they see the latest version.

CREATE VIEW IF NOT EXISTS stage_records_latest AS
SELECT * FROM stage_records FINAL;

CREATE VIEW IF NOT EXISTS kpi_windows_latest AS
SELECT * FROM kpi_windows FINAL;

CREATE VIEW IF NOT EXISTS backlog_latest AS
SELECT * FROM backlog FINAL;

CREATE VIEW IF NOT EXISTS feed_freshness_latest AS
SELECT * FROM feed_freshness FINAL;

CREATE VIEW IF NOT EXISTS dead_letters_latest AS
SELECT * FROM dead_letters FINAL;

-- Firing/resolved history: one row per (alert_id, state).
CREATE VIEW IF NOT EXISTS alerts_history AS
SELECT * FROM alerts FINAL;

-- One row per alert: its latest state. An alert id fires at most once and resolves at most
-- once (SEMANTICS.md), so RESOLVED, when present, is the latest state.
CREATE VIEW IF NOT EXISTS alerts_current AS
SELECT *
FROM alerts FINAL
ORDER BY alert_id, state = 'RESOLVED' DESC, emitted_at DESC
LIMIT 1 BY alert_id;
