-- Data-quality constraints on the pipeline's outputs. A row that breaks one is refused by
-- ClickHouse (VIOLATED_CONSTRAINT); the sink bisects the batch, stores the rest and parks the
-- row in dead_letters with the constraint's name, so a processor bug shows up as a dead letter
-- instead of a wrong KPI on the board. Checked on insert only (cheap: one expression per row).

ALTER TABLE stage_records ADD CONSTRAINT IF NOT EXISTS sla_is_positive CHECK sla_ms > 0;

ALTER TABLE stage_records ADD CONSTRAINT IF NOT EXISTS duration_not_negative
    CHECK duration_ms IS NULL OR duration_ms >= 0;

ALTER TABLE kpi_windows ADD CONSTRAINT IF NOT EXISTS sla_met_within_completions
    CHECK sla_met >= 0 AND sla_met <= completions;

ALTER TABLE kpi_windows ADD CONSTRAINT IF NOT EXISTS window_ends_after_start CHECK window_end > window_start;

ALTER TABLE backlog ADD CONSTRAINT IF NOT EXISTS open_cases_not_negative CHECK open_cases >= 0;
