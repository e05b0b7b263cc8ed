"""The built-in command view: a read-only web board on loopback for the embedded default (no Grafana).

The process that owns the database (the sink with ``--serve-board``, or ``backbone dashboards serve``)
calls :func:`start_board` with a ``query(sql, parameters)`` function. The board serves static
HTML/JS/CSS (no CDN: it works offline) and one JSON endpoint per query of the catalog
(``/api/query/<id>``): the browser can only pick a fixed query and give variable values, which are
passed to ClickHouse as bound parameters (:func:`dashboards.variables.bind`), never as SQL.

Endpoints: ``/`` (the page), ``/static/<file>``, ``/api/meta`` (missions, agencies, provinces,
ports, queries and their columns), ``/api/query/<id>?range=24h&to=<ms>&mission=..&agency=..&province=..
&port=..&case_id=..`` → ``{"columns": [...], "rows": [[...]], "from": ms, "to": ms}``; timestamps as
epoch ms, money as exact decimal strings. ``to`` defaults to now: an explicit ``to`` shows the board
as of that time (the queries take "now" from the range end); ``from`` may replace ``range``.

A parameter the queries cannot take (a time outside what ClickHouse's ``DateTime`` holds, an
unknown range, mission, agency, province or port, a missing or over-long case id) is answered 400
naming the parameter and why; a failure of the database itself is 500, its text only in the log.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from backbone.config import Settings
from dashboards.macros import MacroError, TimeRange, expand_macros
from dashboards.mission_facts import MissionFacts
from dashboards.queries import AMBER_BAND, CASE_VARIABLE, Query, build_queries
from dashboards.variables import ALL, VariableError, Variables, bind
from stream_processors.missions import load_missions

log = logging.getLogger("backbone.board")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
RANGES_MS = {
    "1h": 3_600_000,
    "6h": 6 * 3_600_000,
    "24h": 24 * 3_600_000,
    "7d": 7 * 86_400_000,
    "30d": 30 * 86_400_000,
    "90d": 90 * 86_400_000,
}
DEFAULT_RANGE = "24h"
REFRESH_MS = 5_000
MAX_CASE_ID = 200
EPOCH_MS_MIN = 0
EPOCH_MS_MAX = 4_294_967_295_999
"""The times ``from``/``to`` may name: what ClickHouse's ``DateTime`` holds (UInt32 seconds,
1970-01-01T00:00:00Z to 2106-02-07T06:28:15Z), the narrowest of the types the queries' macros make
of them (``toDateTime``; ``Date`` ends 2149-06-06, ``DateTime64(3)`` 2299-12-31). Outside it
ClickHouse fails or wraps around, so the board answers 400 instead."""
_QUERY_PATH = re.compile(r"^/api/query/([a-z0-9_]+)$")
_DIGITS = re.compile(r"[0-9]+")


class QueryFunction(Protocol):
    """Runs one SELECT with bound parameters; rows as dicts (supplied by the database's owner)."""

    def __call__(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


class BadRequest(ValueError):
    """The request gives an unusable parameter; the message says which."""


class UnknownQuery(BadRequest):
    """The request names a query the catalog does not have."""


@dataclass
class BoardHandle:
    """A running board: where it listens, and how to stop it."""

    host: str
    port: int
    _server: ThreadingHTTPServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):  # clickhouse-connect gives naive UTC for DateTime64(3, 'UTC')
        return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp() * 1000)
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() * 1000)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


class Board:
    """The board's logic, independent of HTTP: turn a request into a bound query and its rows."""

    def __init__(self, query: QueryFunction, settings: Settings) -> None:
        self._query = query
        self._lock = threading.Lock()
        self.settings = settings
        self.facts = MissionFacts.load(load_missions(settings.missions_file))
        self.queries = build_queries(self.facts)

    def meta(self) -> dict[str, Any]:
        reg = self.facts.registry
        return {
            "title": "Delivery Backbone: command view",
            "missions": [{"id": m.id, "name": m.name} for m in self.facts.missions.spec.missions],
            "agencies": list(self.facts.agencies),
            "provinces": {code: name for code, name in reg.provinces.items()},
            "ports": {code: p.name for code, p in reg.ports.items()},
            "ranges": list(RANGES_MS),
            "default_range": DEFAULT_RANGE,
            "refresh_ms": REFRESH_MS,
            "amber_band": AMBER_BAND,
            "thresholds": self.facts.thresholds(),
            "queries": {
                q.id: {"title": q.title, "description": q.description, "columns": list(q.columns)}
                for q in self.queries.values()
            },
        }

    def time_range(self, params: dict[str, str]) -> TimeRange:
        """``from``/``to`` (epoch ms, within :data:`EPOCH_MS_MIN`..:data:`EPOCH_MS_MAX`) or ``range``
        before ``to``; ``to`` defaults to now. A bad value is a :class:`BadRequest` naming it."""
        to_ms = _epoch_ms("to", params["to"]) if params.get("to") else int(time.time() * 1000)
        if params.get("from"):
            from_ms = _epoch_ms("from", params["from"])
            if from_ms > to_ms:
                raise BadRequest(f"from={from_ms} is after to={to_ms}: the time range would be empty")
        else:
            name = params.get("range") or DEFAULT_RANGE
            if name not in RANGES_MS:
                raise BadRequest(f"range {name[:40]!r}: expected one of {', '.join(RANGES_MS)}")
            from_ms = to_ms - RANGES_MS[name]
            if from_ms < EPOCH_MS_MIN:
                raise BadRequest(
                    f"range={name} before to={to_ms} starts before 1970-01-01T00:00:00Z, the earliest "
                    "time ClickHouse's DateTime holds: give a later to or a shorter range"
                )
        return TimeRange(from_ms, to_ms, interval_ms=60_000)

    def variables(self, query: Query, params: dict[str, str]) -> Variables:
        values: dict[str, str] = {}
        missions = {m.id for m in self.facts.missions.spec.missions}
        for name, allowed in (
            ("mission", missions),
            ("agency", set(self.facts.registry.agencies)),
            ("province", set(self.facts.registry.provinces)),
            ("port", set(self.facts.registry.ports)),
        ):
            value = params.get(name, "")
            if value in ("", "all", ALL):
                values[name] = ALL
            elif value in allowed:
                values[name] = value
            else:
                raise BadRequest(f"{name} {value!r} is not known (see /api/meta)")
        if query.uses_case:
            case_id = params.get(CASE_VARIABLE, "").strip()
            if not case_id:
                raise BadRequest(f"query {query.id} needs a case_id")
            if len(case_id) > MAX_CASE_ID:
                raise BadRequest(f"case_id is longer than {MAX_CASE_ID} characters")
            values[CASE_VARIABLE] = case_id
        return Variables(values)

    def run(self, query_id: str, params: dict[str, str]) -> dict[str, Any]:
        query = self.queries.get(query_id)
        if query is None:
            raise UnknownQuery(f"unknown query {query_id!r}")
        tr = self.time_range(params)
        try:
            sql, bound = bind(query.sql, self.variables(query, params))
            sql = expand_macros(sql, tr)
        except (VariableError, MacroError) as exc:
            raise BadRequest(f"query {query_id}: {exc}") from exc
        started = time.monotonic()
        with self._lock:
            rows = self._query(sql, bound or None)
        return {
            "id": query.id,
            "title": query.title,
            "columns": list(query.columns),
            "rows": [[_json_value(r.get(c)) for c in query.columns] for r in rows],
            "from": tr.from_ms,
            "to": tr.to_ms,
            "took_ms": round((time.monotonic() - started) * 1000, 1),
        }


def _epoch_ms(name: str, text: str) -> int:
    """A time parameter as epoch milliseconds that ClickHouse can take, else a :class:`BadRequest`."""
    expected = (
        f"expected epoch milliseconds, a whole number from {EPOCH_MS_MIN} (1970-01-01T00:00:00Z) "
        f"to {EPOCH_MS_MAX} (2106-02-07T06:28:15.999Z), the times ClickHouse's DateTime holds"
    )
    if not _DIGITS.fullmatch(text):
        raise BadRequest(f"{name}={text[:40]!r}: {expected}")
    if len(text) > len(str(EPOCH_MS_MAX)) or int(text) > EPOCH_MS_MAX:
        raise BadRequest(f"{name}={text[:40]}: {expected}")
    return int(text)


def _handler(board: Board) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "backbone-board"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            log.debug("board request", extra={"request": format % args})

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header(
                "Content-Security-Policy",
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            )
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: Any) -> None:
            self._send(status, json.dumps(payload, separators=(",", ":")).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                if url.path in ("/", "/index.html"):
                    self._static("index.html")
                elif url.path.startswith("/static/"):
                    self._static(url.path.removeprefix("/static/"))
                elif url.path == "/api/meta":
                    self._json(HTTPStatus.OK, board.meta())
                elif m := _QUERY_PATH.match(url.path):
                    self._json(HTTPStatus.OK, board.run(m.group(1), params))
                else:
                    self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page {url.path}"})
            except ConnectionError:  # the browser went away (navigated, closed): nothing to answer
                return
            except UnknownQuery as exc:
                self._json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
            except BadRequest as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            except Exception:  # the query failed in ClickHouse: log it, keep serving
                # Bad input is answered 400 above; this is the server's own failure. Its text (SQL,
                # database internals) goes to the log, not to the browser.
                log.exception("board query failed", extra={"path": url.path})
                error = f"{url.path}: the database could not answer; the details are in the board's log"
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": error})

        def _static(self, name: str) -> None:
            path = STATIC_DIR / name
            if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such file {name}"})
                return
            self._send(HTTPStatus.OK, path.read_bytes(), STATIC_TYPES[path.suffix])

    return Handler


def start_board(query: QueryFunction, port: int, settings: Settings, host: str = "127.0.0.1") -> BoardHandle:
    """Serve the command view on ``host:port`` (0: a free port) from a background thread."""
    board = Board(query, settings)
    server = ThreadingHTTPServer((host, port), _handler(board))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="board", daemon=True)
    thread.start()
    handle = BoardHandle(host, server.server_address[1], server, thread)
    log.info("board serving", extra={"url": handle.url})
    return handle
