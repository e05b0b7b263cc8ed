"""The built-in board's JSON API over HTTP: bad parameters are 400s that say which and why.

Two layers: with a stub query function (no database) the board must refuse a bad parameter
before any SQL runs, and must not hand a database failure's text to the browser; on real chdb
(real migrations, seeded data) every query of the catalog must run at the edges of the accepted
time range and with hostile case ids, which proves the accepted range fits the ClickHouse types.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from dashboard_fixtures import SeededDatabase, running_board, seeded_database, ts

from backbone.config import load_settings
from dashboards.board.server import EPOCH_MS_MAX, BoardHandle, start_board

TO_MS = 1_741_608_000_000  # 2025-03-10T12:00:00Z
DAY = 86_400_000


def get(board: BoardHandle, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(board.url + path.lstrip("/"), timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class StubQuery:
    """Records the SQL it is asked to run; optionally fails the way a database does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any] | None]] = []
        self.fail: Exception | None = None

    def __call__(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.calls.append((sql, parameters))
        if self.fail is not None:
            raise self.fail
        return []


@pytest.fixture
def stub() -> StubQuery:
    return StubQuery()


@pytest.fixture
def stub_board(stub: StubQuery) -> Iterator[BoardHandle]:
    handle = start_board(stub, 0, load_settings())
    try:
        yield handle
    finally:
        handle.stop()


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("to=99999999999999999999", ["to=99999999999999999999", "2106-02-07"]),  # the QA report's URL
        (f"to={EPOCH_MS_MAX + 1}", [f"to={EPOCH_MS_MAX + 1}", "DateTime"]),
        ("to=-1", ["to='-1'", "1970-01-01"]),
        ("to=1e12", ["to='1e12'", "epoch milliseconds"]),
        ("to=1_000", ["to='1_000'", "epoch milliseconds"]),  # int() would take it; we do not
        ("to=%20123", ["to=' 123'", "epoch milliseconds"]),
        ("to=" + "9" * 5000, ["to=9999", "epoch milliseconds"]),  # past int()'s digit limit
        ("from=abc", ["from='abc'", "epoch milliseconds"]),
        (f"from={EPOCH_MS_MAX + 1}&to={TO_MS}", [f"from={EPOCH_MS_MAX + 1}"]),
        (f"from={TO_MS + 1}&to={TO_MS}", [f"from={TO_MS + 1} is after to={TO_MS}"]),
        ("to=1000&range=24h", ["range=24h before to=1000", "1970-01-01"]),
        ("range=1y", ["range '1y'", "24h"]),
        ("mission=nope", ["mission 'nope'"]),
        ("agency=NOPE", ["agency 'NOPE'"]),
        ("province=XX", ["province 'XX'"]),
        ("port=XXX", ["port 'XXX'"]),
    ],
)
def test_bad_parameters_are_400s_naming_the_parameter(
    stub_board: BoardHandle, stub: StubQuery, query: str, names: list[str]
) -> None:
    status, body = get(stub_board, f"/api/query/live_alerts?{query}")
    assert status == 400, body
    for name in names:
        assert name in body["error"]
    assert stub.calls == [], "a bad parameter reached the database"


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("", "needs a case_id"),
        ("case_id=%20%20", "needs a case_id"),
        (f"case_id={'X' * 201}", "longer than 200 characters"),
    ],
)
def test_bad_case_ids_are_400s(stub_board: BoardHandle, stub: StubQuery, query: str, error: str) -> None:
    status, body = get(stub_board, f"/api/query/case_current?to={TO_MS}&{query}")
    assert (status, error in body["error"]) == (400, True), body
    assert stub.calls == []


def test_the_edges_of_the_accepted_range_reach_the_database(stub_board: BoardHandle, stub: StubQuery) -> None:
    for query in (f"to={EPOCH_MS_MAX}", "from=0&to=0", f"from=0&to={EPOCH_MS_MAX}", f"to={DAY}&range=24h"):
        status, body = get(stub_board, f"/api/query/live_alerts?{query}")
        assert status == 200, (query, body)
    assert len(stub.calls) == 4
    assert f"fromUnixTimestamp64Milli({EPOCH_MS_MAX})" in stub.calls[0][0]


def test_unknown_query_and_page_are_404s(stub_board: BoardHandle) -> None:
    assert get(stub_board, "/api/query/no_such_query")[0] == 404
    assert get(stub_board, "/api/nothing")[0] == 404
    assert get(stub_board, "/static/..%2Fserver.py")[0] == 404


def test_a_database_failure_is_a_500_without_its_text(stub_board: BoardHandle, stub: StubQuery) -> None:
    stub.fail = RuntimeError("Code: 70. DB::Exception: secret internals of SELECT ... FROM alerts_current")
    status, body = get(stub_board, f"/api/query/live_alerts?to={TO_MS}")
    assert status == 500
    assert "/api/query/live_alerts" in body["error"] and "log" in body["error"]
    for leaked in ("DB::Exception", "RuntimeError", "SELECT", "secret"):
        assert leaked not in body["error"]


# -- on real chdb ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeededDatabase]:
    yield from seeded_database(tmp_path_factory.mktemp("board-api-chdb"))


@pytest.fixture(scope="module")
def board(seeded: SeededDatabase) -> Iterator[BoardHandle]:
    yield from running_board(seeded)


HOSTILE_CASE_IDS = ["A\nB\x00C", "x' OR '1'='1", "50%off", "a/b#c?d&e=f", "\\'", "ق-٣٤٥", "\u202e"]


@pytest.mark.integration
def test_every_query_runs_at_the_edges_of_the_range_and_with_odd_case_ids(
    board: BoardHandle, tmp_path: Path
) -> None:
    status, meta = get(board, "/api/meta")
    assert status == 200
    windows = [f"to={EPOCH_MS_MAX}&range=90d", "from=0&to=0", f"from=0&to={EPOCH_MS_MAX}"]
    asks = [(w, "EXP-1") for w in windows] + [(f"to={TO_MS}", c) for c in HOSTILE_CASE_IDS]
    for qid in meta["queries"]:
        for window, case_id in asks:
            status, body = get(board, f"/api/query/{qid}?{window}&case_id={quote(case_id, safe='')}")
            assert status == 200, (qid, window, case_id, body)
    # what the QA pass sent, now a 400 that says why
    status, body = get(board, "/api/query/live_alerts?to=99999999999999999999")
    assert status == 400 and body["error"].startswith("to=99999999999999999999: expected epoch milliseconds")


@pytest.mark.integration
def test_a_case_id_finds_its_rows_whatever_its_characters(board: BoardHandle, seeded: SeededDatabase) -> None:
    case_id = "A\nB\x00C"
    seeded.client.insert(
        "alerts",
        [
            [
                "odd-case-alert",
                "CASE_SLA",
                "FIRING",
                "warning",
                case_id,
                "odd id",
                ts(TO_MS - DAY),
                ts(TO_MS - 2 * DAY),
                ts(TO_MS),
            ]
        ],
        column_names=[
            "alert_id",
            "kind",
            "state",
            "severity",
            "case_id",
            "summary",
            "starts_at",
            "waiting_since",
            "emitted_at",
        ],
    )
    status, body = get(
        board, f"/api/query/case_alerts?to={TO_MS}&range=90d&case_id={quote(case_id, safe='')}"
    )
    assert status == 200, body
    ids = [row[body["columns"].index("alert_id")] for row in body["rows"]]
    assert ids == ["odd-case-alert"]
