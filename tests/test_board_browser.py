"""The built-in command view in headless Chromium (Debian package, Playwright with the system executable).

The board runs on a free loopback port over a real chdb database (real migrations, seeded data)
with the sink's own thread-safe query function. The page must load, show the numbers ClickHouse
gives for the same query and time, refresh live (a new alert appears without a reload), and the
case tracker must find a seeded case. Screenshots go to test-artifacts/ and docs/screenshots/;
the Grafana boards cannot be rendered here (no Grafana), so their PNGs are taken from the built-in
board's equivalent pages (see dashboards/README.md).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from dashboard_fixtures import DAY, HOUR, SeededDatabase, running_board, seeded_database, sha1, ts

from alerting.alertmanager_payload import tracker_url
from backbone.config import load_settings
from dashboards.board.server import BoardHandle
from dashboards.macros import TimeRange, expand_macros
from dashboards.mission_facts import MissionFacts
from dashboards.queries import build_queries
from dashboards.variables import ALL, Variables, interpolate
from stream_processors.missions import load_missions

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "docs" / "screenshots"
QUERIES = build_queries(MissionFacts.load(load_missions(load_settings().missions_file)))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededDatabase]:
    yield from seeded_database(tmp_path_factory.mktemp("board-chdb"))


@pytest.fixture(scope="module")
def board(seeded: SeededDatabase) -> Iterator[BoardHandle]:
    yield from running_board(seeded)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install the Debian 'chromium' package (scripts/setup.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the board's CSP forbids
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, bypass_csp=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def clickhouse(seeded: SeededDatabase, qid: str, range_ms: int, **values: Any) -> list[dict[str, Any]]:
    """The query straight from ClickHouse, as Grafana would run it for the same time range and variables."""
    now = seeded.seed.now_ms
    variables = Variables({"mission": ALL, "agency": ALL, "province": ALL, "port": ALL, **values})
    sql = expand_macros(interpolate(QUERIES[qid].sql, variables), TimeRange(now - range_ms, now))
    result = seeded.client.query(sql)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def open_page(page: Any, board: BoardHandle, seeded: SeededDatabase, fragment: str, **params: str) -> None:
    query = "&".join([f"to={seeded.seed.now_ms}", *(f"{k}={v}" for k, v in params.items())])
    page.goto(f"{board.url}?{query}#{fragment}")
    page.wait_for_function("Number(document.body.dataset.loads || 0) >= 1", timeout=30_000)


def track_case(page: Any, case_id: str) -> None:
    """Ask the tracker for a case and wait until every case panel shows it (they load in parallel)."""
    page.fill("#case-id", case_id)
    page.click("#case-go")
    wait_for_case(page, case_id)


def wait_for_case(page: Any, case_id: str) -> None:
    """Wait until the case tracker's panels all show ``case_id``."""
    page.wait_for_function(
        """(id) => { const s = [...document.querySelectorAll('section[data-query^="case_"]')];
                     return s.length > 0 && s.every(e => e.dataset.caseId === id); }""",
        arg=case_id,
        timeout=30_000,
    )


def cells(page: Any, qid: str, column: str) -> list[str]:
    return page.eval_on_selector_all(
        f'section[data-query="{qid}"] [data-col="{column}"]', "els => els.map(e => e.dataset.raw)"
    )


def texts(page: Any, qid: str, column: str) -> list[str]:
    return page.eval_on_selector_all(
        f'section[data-query="{qid}"] td[data-col="{column}"]', "els => els.map(e => e.textContent.trim())"
    )


def screenshot(page: Any, artifacts: Path, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = artifacts / f"board-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    shutil.copyfile(path, SCREENSHOTS / path.name)


def test_national_view_shows_clickhouse_numbers(
    page: Any, board: BoardHandle, seeded: SeededDatabase, artifacts: Path
) -> None:
    open_page(page, board, seeded, "national", range="24h")
    # traffic lights: one per target, with ClickHouse's status and compliance
    lights = page.eval_on_selector_all(".light", "els => els.map(e => [e.dataset.target, e.dataset.status])")
    expected = clickhouse(seeded, "kpi_targets", DAY)
    assert sorted(lights) == sorted([r["target"], r["status"]] for r in expected)
    assert {s for _, s in lights} == {"GREEN", "AMBER", "RED", "NO DATA"}
    # open backlog by owner agency: the agencies, the counts and the money as ClickHouse has them
    backlog = clickhouse(seeded, "backlog_by_agency", DAY)
    assert backlog, "seed has an open backlog"
    assert cells(page, "backlog_by_agency", "owner_agency") == [r["owner_agency"] for r in backlog]
    assert cells(page, "backlog_by_agency", "open_total") == [str(r["open_total"]) for r in backlog]
    assert [t.split()[-1] for t in texts(page, "backlog_by_agency", "open_total")] == [
        str(r["open_total"]) for r in backlog
    ]
    assert cells(page, "backlog_by_agency", "locked_pkr") == [
        "" if r["locked_pkr"] is None else str(r["locked_pkr"]) for r in backlog
    ]
    # the longest-waiting cases, oldest first, with the wait ClickHouse computes
    waiting = clickhouse(seeded, "longest_waiting", DAY)
    assert cells(page, "longest_waiting", "case_id") == [r["case_id"] for r in waiting]
    assert cells(page, "longest_waiting", "waiting_ms") == [str(r["waiting_ms"]) for r in waiting]
    # feed freshness: the silent feed is flagged
    fresh = clickhouse(seeded, "feed_freshness", DAY)
    assert cells(page, "feed_freshness", "agency") == [r["agency"] for r in fresh]
    assert cells(page, "feed_freshness", "events_today") == [str(r["events_today"]) for r in fresh]
    screenshot(page, artifacts, "national")


def test_journey_and_other_pages_match_clickhouse(
    page: Any, board: BoardHandle, seeded: SeededDatabase, artifacts: Path
) -> None:
    open_page(page, board, seeded, "journey", mission="export_competitiveness", range="7d")
    funnel = clickhouse(seeded, "stage_funnel", 7 * DAY, mission="export_competitiveness")
    assert cells(page, "stage_funnel", "entered") == [str(r["entered"]) for r in funnel]
    assert cells(page, "stage_funnel", "completed") == [str(r["completed"]) for r in funnel]
    gaps = clickhouse(seeded, "hand_over_gaps", 7 * DAY, mission="export_competitiveness")
    assert cells(page, "hand_over_gaps", "p50_ms") == [str(r["p50_ms"]) for r in gaps]
    screenshot(page, artifacts, "journey")

    open_page(page, board, seeded, "scorecard", mission="export_competitiveness", range="30d")
    card = clickhouse(seeded, "agency_scorecard", 30 * DAY, mission="export_competitiveness")
    assert cells(page, "agency_scorecard", "owner_agency") == [r["owner_agency"] for r in card]
    assert cells(page, "agency_scorecard", "completions") == [str(r["completions"]) for r in card]
    screenshot(page, artifacts, "scorecard")

    open_page(page, board, seeded, "money", range="30d")
    locked = clickhouse(seeded, "money_locked", 30 * DAY)
    assert cells(page, "money_locked", "locked_pkr") == [str(r["locked_pkr"]) for r in locked]
    big = page.inner_text('section[data-query="money_locked"] .big')
    assert big.startswith("PKR ") and big.replace("PKR ", "").replace(",", "") == str(locked[0]["locked_pkr"])
    energy = clickhouse(seeded, "energy_lag", 30 * DAY)
    assert cells(page, "energy_lag", "open_now") == [str(r["open_now"]) for r in energy]
    screenshot(page, artifacts, "money-energy")

    open_page(page, board, seeded, "alerts", range="7d")
    rejected = clickhouse(seeded, "rejected_input", 7 * DAY)
    assert len(rejected) == 3  # the seed's kinds received within the week
    assert cells(page, "rejected_input", "reason") == [r["reason"] for r in rejected]
    assert cells(page, "rejected_input", "records") == [str(r["records"]) for r in rejected]


def test_alerts_page_refreshes_live(
    page: Any, board: BoardHandle, seeded: SeededDatabase, artifacts: Path
) -> None:
    open_page(page, board, seeded, "alerts", range="24h")
    live = clickhouse(seeded, "live_alerts", DAY)
    assert all(r["case_id"] != "EXP-LIVE-1" for r in live)
    assert (
        cells(page, "live_alerts", "case_id")[:20]
        == ["" if r["case_id"] is None else r["case_id"] for r in live][:20]
    )
    assert len(cells(page, "live_alerts", "kind")) == len(live)
    screenshot(page, artifacts, "alerts")
    # a new alert lands in ClickHouse while the page is open: the next poll shows it, no reload
    now = seeded.seed.now_ms
    seeded.client.insert(
        "alerts",
        [
            [
                sha1("CASE_SLA|live-test"),
                "CASE_SLA",
                "FIRING",
                "critical",
                "export_competitiveness",
                "export_shipment",
                "port_loading",
                "KPT",
                "PK-SD",
                "KPT",
                "EXP-LIVE-1",
                "EXP-LIVE-1 waits at port_loading past its SLA",
                ts(now - HOUR),
                None,
                ts(now - 49 * HOUR),
                3.6e6,
                1.728e8,
                ts(now - HOUR),
            ]
        ],
        column_names=[
            "alert_id",
            "kind",
            "state",
            "severity",
            "mission",
            "journey",
            "stage",
            "agency",
            "province",
            "port",
            "case_id",
            "summary",
            "starts_at",
            "ends_at",
            "waiting_since",
            "value",
            "threshold",
            "emitted_at",
        ],
    )
    page.wait_for_function(
        """() => [...document.querySelectorAll('section[data-query="live_alerts"] [data-col="case_id"]')]
                 .some(e => e.dataset.raw === 'EXP-LIVE-1')""",
        timeout=30_000,
    )
    # it came with a poll, not the first load
    page.wait_for_function("Number(document.body.dataset.loads) >= 2", timeout=30_000)


def _open_case(seeded: SeededDatabase) -> tuple[str, str]:
    s = seeded.seed.stages()
    s = s[(s["state"] == "OPEN") & (s["stage"] == "permit_handoff")].sort_values("case_id")
    return str(s.iloc[0]["case_id"]), str(s.iloc[0]["owner_agency"])


def test_case_tracker_finds_a_seeded_case(
    page: Any, board: BoardHandle, seeded: SeededDatabase, artifacts: Path
) -> None:
    case_id, owner = _open_case(seeded)
    open_page(page, board, seeded, "case")
    track_case(page, case_id)
    page.wait_for_selector('[data-testid="case-current"]', timeout=30_000)
    assert cells(page, "case_current", "current_owner") == [owner]
    stages = seeded.seed.stages()
    started = int(
        stages[(stages["case_id"] == case_id) & (stages["stage"] == "permit_handoff")]["started_at"].iloc[0]
    )
    assert cells(page, "case_current", "waiting_ms") == [str(seeded.seed.now_ms - started)]
    events = seeded.seed.distinct_events()
    mine = events[events["case_id"] == case_id].sort_values(["occurred_at", "event_id"])
    timeline = page.eval_on_selector_all(
        'section[data-query="case_timeline"] li', "els => els.map(e => Number(e.dataset.raw))"
    )
    assert timeline == [int(t) for t in mine["occurred_at"]]
    agencies = page.eval_on_selector_all(
        'section[data-query="case_timeline"] [data-col="agency"]', "els => els.map(e => e.textContent)"
    )
    assert agencies == list(mine["agency"])
    screenshot(page, artifacts, "case-tracker")
    # an unknown case: the tracker says so instead of failing
    track_case(page, "NO-SUCH-CASE")
    page.wait_for_selector('[data-testid="case-no-open"]', timeout=30_000)


def test_a_hand_typed_bad_as_of_time_is_explained_not_a_script_error(
    page: Any, board: BoardHandle, seeded: SeededDatabase
) -> None:
    """QA: ``?to=abc`` threw "Invalid time value" and the status stayed "loading…" (the page
    fixture fails the test on any script error); no request for a favicon either."""
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    page.goto(f"{board.url}?to=abc#national")
    page.wait_for_function("Number(document.body.dataset.loads || 0) >= 1", timeout=30_000)
    assert page.text_content("#updated").startswith('as of "abc"')
    errors = page.eval_on_selector_all("p.error", "els => els.map(e => e.textContent)")
    assert errors and all(e.startswith("Could not load:") and "to" in e for e in errors), errors
    assert missing == []


def test_alert_links_open_the_case_tracker_in_both_forms(
    page: Any, board: BoardHandle, seeded: SeededDatabase
) -> None:
    """Alerts link ``<board>/#case/<percent-encoded id>`` (alerting.alertmanager_payload.tracker_url);
    links sent out before used ``#/case/<id>``: both open the tracker on the case, not the
    national view. An id with characters that need encoding arrives intact."""
    case_id, owner = _open_case(seeded)
    old_link = board.url.rstrip("/") + f"/?to={seeded.seed.now_ms}#/case/{case_id}"
    new_link = tracker_url(board.url, case_id).replace("/#", f"/?to={seeded.seed.now_ms}#")
    assert new_link.endswith(f"#case/{quote(case_id, safe='')}")
    for link in (new_link, old_link):
        page.goto("about:blank")
        page.goto(link)
        wait_for_case(page, case_id)
        assert page.get_attribute("#page", "data-page") == "case", link
        assert page.input_value("#case-id") == case_id
        page.wait_for_selector('[data-testid="case-current"]', timeout=30_000)
        assert cells(page, "case_current", "current_owner") == [owner]
    odd = "A\nB\x00C/%#?"
    for link in (tracker_url(board.url, odd), board.url.rstrip("/") + "/#/case/50%off"):
        page.goto("about:blank")
        page.goto(link)
        want = odd if "50%off" not in link else "50%off"  # not percent-encoding: taken as it is
        wait_for_case(page, want)
        assert page.get_attribute("#page", "data-page") == "case", link
        page.wait_for_selector('[data-testid="case-no-open"]', timeout=30_000)
