"""Simulated traffic for the tests that hold the oracle, the stream engines and the recompute to
one another (tests/test_oracle.py, tests/test_kpis.py, tests/test_recompute.py), and the check
of the stream's KPI windows against exact ones that two of them make.

Each picks its own seed, size and span; all three meet the same kinds of trouble, in the same
shares, so the fault mix is chosen once here.
"""

from __future__ import annotations

import math
from typing import Any

from engine_fixtures import latest

from producers.simulator import NO_CUTOFF, SimEvent, SimulationConfig, generate

FAULT_MIX: dict[str, float] = {
    "duplicate_share": 0.05,
    "out_of_order_share": 0.1,
    "invalid_share": 0.02,
    "energy_share": 0.05,
}
"""Re-sent events, late deliveries, invalid records and tariff determinations, in shares of the
simulator's output (above its defaults, so a few hundred cases hold many of each)."""


def faulty_traffic(start_ms: int, seed: int, cases: int, span_ms: int, **shares: float) -> list[SimEvent]:
    """Every simulated event in delivery order, none cut off, with :data:`FAULT_MIX` (``shares``
    adds to it or overrides it, e.g. ``stall_share``)."""
    config = SimulationConfig(
        start_ms=start_ms, seed=seed, cases=cases, span_ms=span_ms, until_ms=NO_CUTOFF, **(FAULT_MIX | shares)
    )
    return list(generate(config))


def assert_stream_windows_match(streamed: list[dict[str, Any]], exact: dict[str, dict[str, Any]]) -> None:
    """The stream's latest KPI windows with completions are the windows of ``exact`` (by kpi_id;
    the oracle's or the recompute's), with the same counts and mean, and quantiles within 1 % of
    the exact value: the engine's quantile sketch promises no more."""
    windows = {k: w for k, w in latest(streamed, "kpi_id").items() if w["completions"] > 0}
    assert set(windows) == set(exact)
    counted = ("completions", "sla_met", "window_start", "window_end")
    for kpi_id, want in exact.items():
        got = windows[kpi_id]
        assert {c: got[c] for c in counted} == {c: want[c] for c in counted}, kpi_id
        assert math.isclose(got["mean_ms"], want["mean_ms"]), kpi_id
        for q in ("p50_ms", "p90_ms"):
            assert abs(got[q] - want[q]) <= 0.01 * want[q], (kpi_id, q)
