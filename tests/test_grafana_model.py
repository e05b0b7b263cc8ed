"""The generated Grafana boards: valid dashboard models, fresh, consistent with the catalog and targets.

Checked against the SDK's own model (every board decodes with ``Dashboard.from_json`` and encodes
back to the same JSON, so no field is unknown to Grafana 11.6's schema), against a JSON Schema of
the parts Grafana needs to render a board (Grafana's "JSON model" documentation: uid, title,
schemaVersion, panels with id/type/gridPos on the 24-column grid, targets with refId and a
datasource reference, templating variables with name/type) and the ClickHouse plugin's query model
(``CHSqlQuery``: editorType sql, rawSql, format), and for consistency: unique ids, no overlapping
panels, datasource uid = the provisioned one, every variable used is defined, thresholds = the
mission targets read from the missions file. The deploy client is exercised against a stub of
Grafana's HTTP API (health, search, folders, dashboards) for idempotence and error messages.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from typer.testing import CliRunner

from backbone.cli import app
from backbone.config import DEFAULT_MISSIONS_FILE
from dashboards.deploy import DeployError, committed_boards, deploy
from dashboards.grafana_build import (
    DATASOURCE_TYPE,
    DATASOURCE_UID,
    GRAFANA_DIR,
    BoardsBuilder,
    check_files,
    register_clickhouse_variant,
    rendered_files,
)
from dashboards.mission_facts import MissionFacts
from dashboards.queries import build_queries
from stream_processors.missions import load_missions

REPO = Path(__file__).resolve().parent.parent
MISSIONS = load_missions(DEFAULT_MISSIONS_FILE)
FACTS = MissionFacts.load(MISSIONS)
BOARD_FILES = sorted(GRAFANA_DIR.glob("*/*.json"))

DASHBOARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time", "refresh"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer"},
        "refresh": {"const": "10s"},
        "time": {"type": "object", "required": ["from", "to"]},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^[a-z_]+$"},
                            "type": {"enum": ["custom", "textbox", "query", "constant"]},
                        },
                    },
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "gridPos", "title"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "type": {"enum": ["row", "stat", "table", "barchart", "bargauge", "timeseries"]},
                    "gridPos": {
                        "type": "object",
                        "required": ["h", "w", "x", "y"],
                        "properties": {
                            "h": {"type": "integer", "minimum": 1},
                            "w": {"type": "integer", "minimum": 1, "maximum": 24},
                            "x": {"type": "integer", "minimum": 0, "maximum": 23},
                            "y": {"type": "integer", "minimum": 0},
                        },
                    },
                    "targets": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["refId", "datasource", "editorType", "rawSql", "format"],
                            "properties": {
                                "refId": {"type": "string", "minLength": 1},
                                "datasource": {"type": "object", "required": ["type", "uid"]},
                                "editorType": {"const": "sql"},
                                "rawSql": {"type": "string", "minLength": 10},
                                "format": {"enum": [0, 1]},
                            },
                        },
                    },
                },
            },
        },
    },
}


def _boards() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, json.loads(p.read_text())) for p in BOARD_FILES]


def test_committed_boards_are_fresh_and_check_detects_staleness() -> None:
    result = CliRunner().invoke(app, ["dashboards", "build", "--check"])
    assert result.exit_code == 0, result.output
    files = rendered_files(FACTS)
    assert set(BOARD_FILES) == {p for p in files if p.suffix == ".json"}
    tampered = {p: t for p, t in files.items()}
    first = BOARD_FILES[0]
    tampered[first] = files[first].replace('"refresh": "10s"', '"refresh": "1m"')
    assert check_files(tampered) == [f"{first}: stale (run `backbone dashboards build`)"]
    tampered[GRAFANA_DIR / "nowhere" / "new.json"] = "{}"
    assert any("missing" in p for p in check_files(tampered))


def test_one_folder_per_mission_plus_the_command_centre() -> None:
    folders = {p.parent.name for p in BOARD_FILES}
    assert folders == {m.id for m in MISSIONS.spec.missions} | {"command_centre"}
    provisioning = yaml.safe_load((REPO / "dashboards/provisioning/dashboards/backbone.yaml").read_text())
    providers = provisioning["providers"]
    assert {p["options"]["path"] for p in providers} == {f"/var/lib/grafana/dashboards/{f}" for f in folders}
    assert all(p["type"] == "file" and p["folderUid"] and p["folder"] for p in providers)
    assert len({p["folderUid"] for p in providers}) == len(providers)
    titles = {p["folder"] for p in providers}
    assert {m.name for m in MISSIONS.spec.missions} <= titles


def test_datasource_provisioning_matches_the_boards() -> None:
    ds = yaml.safe_load((REPO / "dashboards/provisioning/datasources/clickhouse.yaml").read_text())[
        "datasources"
    ]
    assert len(ds) == 1
    (source,) = ds
    assert (source["uid"], source["type"]) == (DATASOURCE_UID, DATASOURCE_TYPE)
    assert source["jsonData"]["host"] == "clickhouse" and source["jsonData"]["port"] == 8123
    assert source["jsonData"]["protocol"] == "http"
    assert source["jsonData"]["username"] == "$CLICKHOUSE_READONLY_USER"
    assert source["secureJsonData"]["password"] == "$CLICKHOUSE_READONLY_PASSWORD"


@pytest.mark.parametrize("path", BOARD_FILES, ids=[f"{p.parent.name}/{p.name}" for p in BOARD_FILES])
def test_board_is_a_valid_grafana_dashboard(path: Path) -> None:
    board = json.loads(path.read_text())
    jsonschema.validate(board, DASHBOARD_SCHEMA)
    # the SDK's own model: decodes and re-encodes to the same JSON (no unknown or mistyped field)
    register_clickhouse_variant()
    decoded = model.Dashboard.from_json(board)
    assert json.loads(JSONEncoder(sort_keys=True).encode(decoded)) == board
    assert board["schemaVersion"] == model.Dashboard().schema_version

    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, f"panel {p['id']} leaves the 24-column grid"
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['id']} overlaps another"
        cells |= mine

    catalog = {q.sql for q in build_queries(FACTS).values()}
    variables = {v["name"] for v in board["templating"]["list"]}
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
        assert p["targets"], f"panel {p['id']} has no query"
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            assert t["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
            assert t["rawSql"] in catalog, f"panel {p['title']}: SQL is not a catalog query"
            used = set(re.findall(r"\$\{(\w+)(?::\w+)?\}|\$(?!__)(\w+)", t["rawSql"]))
            names = {a or b for a, b in used}
            assert names <= variables, f"panel {p['title']} uses undefined variables {names - variables}"
            assert t["format"] == (0 if p["type"] == "timeseries" else 1)


def test_traffic_lights_are_coloured_against_the_missions_file_targets() -> None:
    national = json.loads((GRAFANA_DIR / "command_centre" / "national.json").read_text())
    stats = {p["title"]: p for p in national["panels"] if p["type"] == "stat"}
    targets = [t for _, t, _ in MISSIONS.targets]
    assert set(stats) == {t.name for t in targets}
    for t in targets:
        steps = stats[t.name]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps == [
            {"color": "red", "value": None},
            {"color": "orange", "value": pytest.approx(t.min_sla_compliance - 0.05)},
            {"color": "green", "value": t.min_sla_compliance},
        ]
        assert stats[t.name]["fieldConfig"]["defaults"]["unit"] == "percentunit"
        assert f"'{t.id}'" in stats[t.name]["targets"][0]["rawSql"]


def test_boards_have_the_required_variables() -> None:
    boards = {
        p.stem if p.parent.name == "command_centre" else f"{p.parent.name}/{p.stem}": b for p, b in _boards()
    }
    for key, board in boards.items():
        names = [v["name"] for v in board["templating"]["list"]]
        if key.endswith("case_tracker"):
            assert names == ["case_id"] and board["templating"]["list"][0]["type"] == "textbox"
        elif key.endswith("money_energy"):
            assert names == ["agency", "province", "port"]
        else:
            assert names == ["mission", "agency", "province", "port"]
    agency = next(v for v in boards["national"]["templating"]["list"] if v["name"] == "agency")
    assert set(agency["query"].split(",")) == set(FACTS.agencies) and agency["includeAll"] is True


# -- deploy, against a stub of Grafana's HTTP API ----------------------------------------------------
class StubGrafana:
    """Enough of Grafana's HTTP API (frontend settings, search, folders, dashboards/db), token auth."""

    def __init__(self, version: str = "11.6.0", tokens: dict[str, str] | None = None) -> None:
        self.version = version
        self.tokens = tokens or {"editor-token": "Editor", "viewer-token": "Viewer"}
        self.folders: dict[str, str] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _role(self) -> str | None:
                auth = self.headers.get("Authorization", "")
                return stub.tokens.get(auth.removeprefix("Bearer "))

            def _handle(self, method: str) -> None:
                stub.requests.append((method, self.path))
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path == "/api/frontend/settings":  # what grafana-client's health.check() reads
                    return self._reply(
                        200, {"buildInfo": {"version": stub.version, "edition": "Open Source"}}
                    )
                role = self._role()
                if role is None:
                    return self._reply(401, {"message": "Unauthorized"})
                if method != "GET" and role != "Editor":
                    return self._reply(403, {"message": "Permissions needed: dashboards:write"})
                if self.path.startswith("/api/search"):
                    return self._reply(200, [])
                if m := re.match(r"^/api/folders/([^/?]+)$", self.path):
                    uid = m.group(1)
                    if uid not in stub.folders:
                        return self._reply(404, {"message": "folder not found"})
                    if method == "PUT":
                        stub.folders[uid] = body["title"]
                    return self._reply(200, {"uid": uid, "title": stub.folders[uid]})
                if self.path == "/api/folders" and method == "POST":
                    if body["uid"] in stub.folders:
                        return self._reply(409, {"message": "folder exists"})
                    stub.folders[body["uid"]] = body["title"]
                    return self._reply(200, {"uid": body["uid"], "title": body["title"]})
                if self.path == "/api/dashboards/db" and method == "POST":
                    uid = body["dashboard"]["uid"]
                    if uid in stub.dashboards and not body.get("overwrite"):
                        return self._reply(412, {"message": "version-mismatch"})
                    stub.dashboards[uid] = {"folderUid": body["folderUid"], "dashboard": body["dashboard"]}
                    return self._reply(200, {"uid": uid, "status": "success"})
                return self._reply(404, {"message": f"no route {method} {self.path}"})

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._handle("PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def grafana() -> Iterator[StubGrafana]:
    stub = StubGrafana()
    try:
        yield stub
    finally:
        stub.close()


def test_deploy_is_idempotent_one_folder_per_mission(grafana: StubGrafana) -> None:
    folders = BoardsBuilder(FACTS).folders()
    boards = committed_boards(GRAFANA_DIR)
    first = deploy(grafana.url, "editor-token", folders, boards)
    assert first.grafana_version == "11.6.0"
    assert sorted(first.folders_created) == sorted(uid for uid, _ in folders.values())
    assert set(grafana.folders.values()) >= {m.name for m in MISSIONS.spec.missions}
    assert len(grafana.dashboards) == len(BOARD_FILES)
    snapshot = json.dumps(grafana.dashboards, sort_keys=True)
    second = deploy(grafana.url, "editor-token", folders, boards)
    assert second.folders_created == [] and len(second.folders_updated) == len(folders)
    assert json.dumps(grafana.dashboards, sort_keys=True) == snapshot  # overwritten in place, nothing added
    for _, board in boards:
        stored = grafana.dashboards[board["uid"]]
        assert stored["folderUid"] == folders[next(k for k, b in boards if b["uid"] == board["uid"])][0]


def test_deploy_explains_auth_and_version_problems(grafana: StubGrafana) -> None:
    folders = BoardsBuilder(FACTS).folders()
    boards = committed_boards(GRAFANA_DIR)
    with pytest.raises(DeployError, match="401"):
        deploy(grafana.url, "wrong-token", folders, boards)
    with pytest.raises(DeployError, match="403 Forbidden.*Editor"):
        deploy(grafana.url, "viewer-token", folders, boards)
    grafana.version = "10.4.3"
    with pytest.raises(DeployError, match="too old.*11.0 or newer"):
        deploy(grafana.url, "editor-token", folders, boards)
    with pytest.raises(DeployError, match="cannot reach Grafana"):
        deploy("http://127.0.0.1:9", "editor-token", folders, boards, timeout_s=2)


def test_deploy_cli_reports_a_clear_error(grafana: StubGrafana) -> None:
    result = CliRunner().invoke(app, ["dashboards", "deploy", "--url", grafana.url, "--token", "wrong-token"])
    assert result.exit_code == 1
    assert "rejected the token (401 Unauthorized)" in result.output
    ok = CliRunner().invoke(app, ["dashboards", "deploy", "--url", grafana.url, "--token", "editor-token"])
    assert ok.exit_code == 0, ok.output
    assert f"{len(BOARD_FILES)} boards" in ok.output
