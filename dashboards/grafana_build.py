"""The Grafana boards, built as code with grafana-foundation-sdk from the query catalog and the missions file.

``backbone dashboards build`` writes them to ``dashboards/grafana/<folder>/<board>.json`` together
with the provisioning file that maps each folder to a Grafana folder. Folders: one per mission (its
export/energy journey breakdown and agency scorecard) and a ``command_centre`` folder for the boards
that span missions (national command view, rebates and energy, case tracker).

Every panel's SQL is a query of :mod:`dashboards.queries` (the same text the built-in board runs);
thresholds are generated from the mission targets (GREEN at target, AMBER within
:data:`~dashboards.queries.AMBER_BAND` below, RED further below). Every board refreshes every 10 s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, cast

import yaml
from grafana_foundation_sdk.builders import barchart, bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

from dashboards.mission_facts import MissionFacts
from dashboards.queries import AMBER_BAND, CASE_VARIABLE, Query, build_queries

DATASOURCE_TYPE = "grafana-clickhouse-datasource"
DATASOURCE_UID = "backbone-clickhouse"
DATASOURCE = model.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)
REFRESH = "10s"
GRAFANA_DIR = Path(__file__).parent / "grafana"
PROVISIONING_DIR = Path(__file__).parent / "provisioning"
DASHBOARDS_PROVISIONING_FILE = PROVISIONING_DIR / "dashboards" / "backbone.yaml"
CONTAINER_DASHBOARDS_PATH = "/var/lib/grafana/dashboards"
COMMAND_CENTRE = "command_centre"
FORMAT_TIME_SERIES = 0  # sqlds FormatQueryOption
FORMAT_TABLE = 1
MONEY_UNIT = "prefix:PKR "


# -- the ClickHouse plugin's query model (the SDK ships no builder for it) -------------------------
class ClickHouseQuery(cogvariants.Dataquery):
    """A SQL-editor query of grafana-clickhouse-datasource (``CHSqlQuery`` in the plugin's types)."""

    def __init__(
        self, ref_id: str, raw_sql: str, fmt: int, datasource: model.DataSourceRef = DATASOURCE
    ) -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format = fmt
        self.datasource = datasource

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": self.datasource.to_json(),
            "editorType": "sql",
            "queryType": "timeseries" if self.format == FORMAT_TIME_SERIES else "table",
            "format": self.format,
            "rawSql": self.raw_sql,
            "pluginVersion": "",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        ds = data.get("datasource") or {}
        return cls(
            data["refId"],
            data["rawSql"],
            int(data.get("format", FORMAT_TABLE)),
            model.DataSourceRef(type_val=ds.get("type"), uid=ds.get("uid")),
        )


class ClickHouseQueryBuilder(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: Query, ref_id: str = "A", fmt: int = FORMAT_TABLE) -> None:
        self._query = ClickHouseQuery(ref_id, query.sql, fmt)

    def build(self) -> cogvariants.Dataquery:
        return self._query


def register_clickhouse_variant() -> None:
    """Let the SDK decode ClickHouse targets (``Dashboard.from_json``) into :class:`ClickHouseQuery`."""
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(DATASOURCE_TYPE, ClickHouseQuery.from_json)
    )


# -- thresholds, mappings, units ------------------------------------------------------------------
def target_thresholds(target: float | None) -> dash.ThresholdsConfig:
    """RED below the amber band, AMBER within it, GREEN at or above the target (grey without one)."""
    if target is None:
        steps = [model.Threshold(value=None, color="text")]
    else:
        steps = [
            model.Threshold(value=None, color="red"),
            model.Threshold(value=round(target - AMBER_BAND, 6), color="orange"),
            model.Threshold(value=target, color="green"),
        ]
    return dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)


def status_mapping() -> list[model.ValueMapping]:
    colours = {"GREEN": "green", "AMBER": "orange", "RED": "red", "NO DATA": "text"}
    return [
        model.ValueMap(
            options={
                k: model.ValueMappingResult(text=k, color=c, index=i)
                for i, (k, c) in enumerate(colours.items())
            }
        )
    ]


def flag_mapping(true_text: str, false_text: str = "") -> list[model.ValueMapping]:
    return [
        model.ValueMap(
            options={
                "1": model.ValueMappingResult(text=true_text, color="red", index=0),
                "true": model.ValueMappingResult(text=true_text, color="red", index=1),
                "0": model.ValueMappingResult(text=false_text, color="green", index=2),
                "false": model.ValueMappingResult(text=false_text, color="green", index=3),
            }
        )
    ]


def unit_for(column: str) -> str | None:
    """Grafana unit from the column naming contract of :mod:`dashboards.queries`."""
    if column.endswith("_ms"):
        return "dtdurationms"
    if column.endswith("_pkr"):
        return MONEY_UNIT
    if column.endswith(("compliance", "share")):
        return "percentunit"
    if column.endswith("_at") or column in ("waiting_since", "oldest_since", "window_end"):
        return "dateTimeAsIso"
    return None


def _prop(id_val: str, value: object) -> model.DynamicConfigValue:
    return model.DynamicConfigValue(id_val=id_val, value=value)


def case_link() -> list[dict[str, str]]:
    return [
        {
            "title": "Open in the case tracker",
            "url": f"/d/{BOARD_UIDS['case_tracker']}?var-{CASE_VARIABLE}=${{__value.raw}}",
        }
    ]


# -- panels ---------------------------------------------------------------------------------------
@dataclass
class PanelSpec:
    """One panel: the query it shows and how."""

    query: Query
    kind: str  # stat | table | barchart | bargauge | timeseries
    width: int
    height: int
    title: str | None = None
    description: str | None = None
    value_field: str | None = None  # stat/bargauge: the field shown
    x_field: str | None = None  # barchart
    thresholds: dash.ThresholdsConfig | None = None
    hidden_columns: Sequence[str] = ()
    overrides: dict[str, list[model.DynamicConfigValue]] = field(default_factory=dict)
    unit: str | None = None

    def builder(self, panel_id: int) -> cogbuilder.Builder[model.Panel]:
        fmt = FORMAT_TIME_SERIES if self.kind == "timeseries" else FORMAT_TABLE
        kinds: dict[str, Callable[[], Any]] = {
            "stat": stat.Panel,
            "table": table.Panel,
            "barchart": barchart.Panel,
            "bargauge": bargauge.Panel,
            "timeseries": timeseries.Panel,
        }
        p = kinds[self.kind]()
        p = (
            p.id(panel_id)
            .title(self.title or self.query.title)
            .description(self.description or self.query.description)
            .datasource(DATASOURCE)
            .with_target(ClickHouseQueryBuilder(self.query, fmt=fmt))
            .span(self.width)
            .height(self.height)
        )
        if self.thresholds is not None:
            p = p.thresholds(self.thresholds)
        if self.unit:
            p = p.unit(self.unit)
        if self.kind == "stat":
            p = (
                p.color_mode(common.BigValueColorMode.BACKGROUND)
                .graph_mode(common.BigValueGraphMode.NONE)
                .text_mode(common.BigValueTextMode.VALUE)
                .no_value("NO DATA")
                .reduce_options(
                    common_builders.ReduceDataOptions()
                    .values(False)
                    .calcs(["lastNotNull"])
                    .fields(f"/^{self.value_field}$/")
                )
            )
        if self.kind == "bargauge":
            p = (
                p.orientation(common.VizOrientation.HORIZONTAL)
                .display_mode(common.BarGaugeDisplayMode.BASIC)
                .reduce_options(
                    common_builders.ReduceDataOptions()
                    .values(True)
                    .calcs([])
                    .fields(f"/^{self.value_field}$/")
                )
            )
        if self.kind == "barchart" and self.x_field:
            p = p.x_field(self.x_field).show_value(common.VisibilityMode.AUTO)
        if self.kind == "timeseries":
            p = p.with_transformation(
                model.DataTransformerConfig(
                    id_val="filterFieldsByName", options={"include": {"pattern": "^(time|sla_compliance.*)$"}}
                )
            )
        if self.hidden_columns:
            p = p.with_transformation(
                model.DataTransformerConfig(
                    id_val="organize", options={"excludeByName": {c: True for c in self.hidden_columns}}
                )
            )
        for column in self.query.columns:
            props = list(self.overrides.get(column, []))
            unit = unit_for(column)
            if (
                unit
                and self.kind in ("table", "barchart", "bargauge")
                and not any(x.id_val == "unit" for x in props)
            ):
                props.append(_prop("unit", unit))
            if column == "status":
                props.append(_prop("mappings", [m.to_json() for m in status_mapping()]))
                props.append(_prop("custom.cellOptions", {"type": "color-background"}))
            if column == CASE_VARIABLE and self.kind == "table" and self.query.id not in CASE_QUERY_IDS:
                props.append(_prop("links", case_link()))
            if props:
                p = p.override_by_name(column, props)
        return cast(cogbuilder.Builder[model.Panel], p)


CASE_QUERY_IDS = ("case_current", "case_stages", "case_timeline", "case_alerts")
BOARD_UIDS = {
    "national": "bb-national",
    "money_energy": "bb-money-energy",
    "case_tracker": "bb-case-tracker",
}


def _uid(kind: str, mission: str) -> str:
    uid = f"bb-{kind}-{mission}".replace("_", "-")
    if len(uid) > 40:  # Grafana's limit
        import hashlib

        uid = f"bb-{kind}-{hashlib.sha1(mission.encode()).hexdigest()[:12]}"
    return uid


def _compliance_override(target: float | None) -> list[model.DynamicConfigValue]:
    return [
        _prop("thresholds", target_thresholds(target).build().to_json()),
        _prop("custom.cellOptions", {"type": "color-text"}),
    ]


def _flag_override(text: str) -> list[model.DynamicConfigValue]:
    return [
        _prop("mappings", [m.to_json() for m in flag_mapping(text)]),
        _prop("custom.cellOptions", {"type": "color-text"}),
    ]


# -- boards ---------------------------------------------------------------------------------------
@dataclass
class BoardSpec:
    uid: str
    title: str
    folder: str  # folder key: COMMAND_CENTRE or a mission id
    file_name: str
    description: str
    time_from: str
    variables: list[cogbuilder.Builder[model.VariableModel]]
    rows: list[tuple[str | None, list[PanelSpec]]]
    tags: list[str] = field(default_factory=list)

    def build(self) -> model.Dashboard:
        d = (
            dash.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags(["delivery-backbone", *self.tags])
            .refresh(REFRESH)
            .time(self.time_from, "now")
            .timezone("utc")
            .readonly()
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .timepicker(dash.TimePicker().refresh_intervals(["10s", "30s", "1m", "5m", "15m", "1h"]))
            .version(1)
        )
        for v in self.variables:
            d = d.with_variable(v)
        panel_id = 1
        for row_title, panels in self.rows:
            if row_title:
                d = d.with_row(dash.Row(row_title).id(panel_id))
                panel_id += 1
            for spec in panels:
                d = d.with_panel(spec.builder(panel_id))
                panel_id += 1
        return d.build()


def _option(value: str, text: str | None = None, selected: bool = False) -> model.VariableOption:
    return model.VariableOption(selected=selected, text=text or value, value=value)


def custom_variable(
    name: str,
    label: str,
    values: Sequence[str],
    default: str | None = None,
    include_all: bool = True,
    multi: bool = True,
) -> dash.CustomVariable:
    """A custom variable generated from the missions file / registry ("All" means no filter)."""
    current = "$__all" if default is None else default
    options = ([_option("$__all", "All", current == "$__all")] if include_all else []) + [
        _option(v, selected=v == current) for v in values
    ]
    var = (
        dash.CustomVariable(name)
        .label(label)
        .values(",".join(values))
        .include_all(include_all)
        .multi(multi)
        .options(options)
        .current(_option(current, "All" if current == "$__all" else current, True))
    )
    return var


class BoardsBuilder:
    """All boards for one missions file."""

    def __init__(self, facts: MissionFacts) -> None:
        self.facts = facts
        self.queries = build_queries(facts)

    def q(self, qid: str) -> Query:
        return self.queries[qid]

    # variables -------------------------------------------------------------------------------
    def geo_variables(self, agencies: Sequence[str]) -> list[cogbuilder.Builder[model.VariableModel]]:
        reg = self.facts.registry
        return [
            custom_variable("agency", "Agency", agencies),
            custom_variable("province", "Province", list(reg.provinces)),
            custom_variable("port", "Port", list(reg.ports)),
        ]

    def mission_variable(self, mission: str | None) -> dash.CustomVariable:
        ids = [m.id for m in self.facts.missions.spec.missions]
        if mission is None:
            return custom_variable("mission", "Mission", ids)
        return custom_variable(
            "mission", "Mission", [mission], default=mission, include_all=False, multi=False
        )

    # targets ---------------------------------------------------------------------------------
    def stage_target(self, stages: Sequence[tuple[str, str]]) -> float | None:
        return self.facts.strictest_target(stages)

    def mission_target(self, mission: str) -> float | None:
        return self.facts.mission_target(mission)

    # boards ----------------------------------------------------------------------------------
    def national(self) -> BoardSpec:
        rows: list[tuple[str | None, list[PanelSpec]]] = []
        for mission in self.facts.missions.spec.missions:
            targets = [t for t in self.facts.targets if t.mission == mission.id]
            if not targets:
                continue
            width = max(24 // len(targets), 4)
            rows.append(
                (
                    f"{mission.name}: KPIs against target",
                    [
                        PanelSpec(
                            self.q(f"kpi_target__{t.target}"),
                            "stat",
                            width,
                            5,
                            title=t.name,
                            description=f"Target {t.min_sla_compliance:.0%} over the last complete "
                            f"{t.window} window (at least {t.min_completions} completions). "
                            f"{self.q('kpi_targets').description}",
                            value_field="sla_compliance",
                            unit="percentunit",
                            thresholds=target_thresholds(t.min_sla_compliance),
                        )
                        for t in targets
                    ],
                )
            )
        rows.append(
            (
                "Now",
                [
                    PanelSpec(
                        self.q("kpi_targets"),
                        "table",
                        24,
                        6,
                        hidden_columns=("window_end", "min_completions"),
                        overrides={"sla_compliance": [_prop("custom.cellOptions", {"type": "color-text"})]},
                    ),
                    PanelSpec(
                        self.q("throughput_today"), "table", 8, 9, hidden_columns=("stage_order", "stage")
                    ),
                    PanelSpec(
                        self.q("backlog_by_agency"),
                        "table",
                        8,
                        9,
                        overrides={
                            "open_total": [_prop("custom.cellOptions", {"type": "gauge", "mode": "basic"})]
                        },
                    ),
                    PanelSpec(
                        self.q("feed_freshness"),
                        "table",
                        8,
                        9,
                        overrides={"silent": _flag_override("SILENT")},
                    ),
                    PanelSpec(
                        self.q("longest_waiting"),
                        "table",
                        12,
                        10,
                        hidden_columns=("stage",),
                        overrides={"overdue": _flag_override("OVERDUE")},
                    ),
                    PanelSpec(
                        self.q("live_alerts"),
                        "table",
                        12,
                        10,
                        hidden_columns=("alert_id",),
                        overrides={
                            "severity": [
                                _prop(
                                    "mappings",
                                    [
                                        model.ValueMap(
                                            options={
                                                "critical": model.ValueMappingResult(color="red", index=0),
                                                "warning": model.ValueMappingResult(color="orange", index=1),
                                            }
                                        ).to_json()
                                    ],
                                ),
                                _prop("custom.cellOptions", {"type": "color-text"}),
                            ]
                        },
                    ),
                    PanelSpec(self.q("rejected_input"), "table", 24, 7),
                ],
            )
        )
        return BoardSpec(
            BOARD_UIDS["national"],
            "National command view",
            COMMAND_CENTRE,
            "national.json",
            "Each mission's KPIs against target, today's throughput, open backlog by owner agency, the "
            "longest-waiting cases, live alerts, feed freshness and rejected input.",
            "now-24h",
            [self.mission_variable(None), *self.geo_variables(self.facts.agencies)],
            rows,
            tags=["national"],
        )

    def journey(self, mission: str) -> BoardSpec:
        name = next(m.name for m in self.facts.missions.spec.missions if m.id == mission)
        target = self.mission_target(mission)
        return BoardSpec(
            _uid("journey", mission),
            f"{name}: journey breakdown",
            mission,
            "journey.json",
            "Where journeys wait and on whom: stage funnel, a continuous Time-Release-Study breakdown by "
            "agency, "
            "per port and province, and the hand-over gaps between agencies.",
            "now-7d",
            [self.mission_variable(mission), *self.geo_variables(self.facts.mission_agencies(mission))],
            [
                (
                    None,
                    [
                        PanelSpec(
                            self.q("stage_funnel"),
                            "barchart",
                            12,
                            9,
                            x_field="stage_name",
                            hidden_columns=("mission", "stage", "stage_order", "completion_share"),
                        ),
                        PanelSpec(
                            self.q("stage_time_by_agency"),
                            "table",
                            12,
                            9,
                            hidden_columns=("mission", "stage", "stage_order"),
                            overrides={
                                "time_share": [
                                    _prop("custom.cellOptions", {"type": "gauge", "mode": "basic"}),
                                    _prop("max", 1),
                                ],
                                "sla_compliance": _compliance_override(target),
                            },
                        ),
                        PanelSpec(self.q("hand_over_gaps"), "table", 24, 7, hidden_columns=("mission",)),
                        PanelSpec(
                            self.q("stage_time_by_port_province"),
                            "table",
                            24,
                            12,
                            hidden_columns=("mission", "stage", "stage_order"),
                            overrides={"sla_compliance": _compliance_override(target)},
                        ),
                    ],
                ),
            ],
            tags=[mission],
        )

    def scorecard(self, mission: str) -> BoardSpec:
        name = next(m.name for m in self.facts.missions.spec.missions if m.id == mission)
        handoffs = [k for k in self.facts.handoff_stage_keys if k[0] == mission]
        handoff_target = self.stage_target(handoffs)
        target = self.mission_target(mission)
        trend_thresholds = target_thresholds(target)
        # a mission without hand-off stages has no collaboration KPI: no panel that is always empty
        collaboration = (
            [
                PanelSpec(
                    self.q("collaboration_trend"),
                    "timeseries",
                    12,
                    9,
                    unit="percentunit",
                    thresholds=target_thresholds(handoff_target),
                )
            ]
            if handoffs
            else []
        )
        return BoardSpec(
            _uid("scorecard", mission),
            f"{name}: agency scorecard",
            mission,
            "scorecard.json",
            "SLA compliance and its daily trend per accountable agency, and the collaboration KPI: how fast "
            "an "
            "agency acts once another hands over.",
            "now-30d",
            [self.mission_variable(mission), *self.geo_variables(self.facts.mission_agencies(mission))],
            [
                (
                    None,
                    [
                        PanelSpec(
                            self.q("agency_scorecard"),
                            "table",
                            24,
                            9,
                            overrides={
                                "sla_compliance": _compliance_override(target),
                                "handoff_compliance": _compliance_override(handoff_target),
                            },
                        ),
                        PanelSpec(
                            self.q("agency_trend"),
                            "timeseries",
                            12 if collaboration else 24,
                            9,
                            unit="percentunit",
                            thresholds=trend_thresholds,
                        ),
                        *collaboration,
                    ],
                ),
            ],
            tags=[mission],
        )

    def money_energy(self) -> BoardSpec:
        money_target = self.stage_target(self.facts.money_stage_keys)
        energy_target = self.stage_target(self.facts.energy_stage_keys)
        return BoardSpec(
            BOARD_UIDS["money_energy"],
            "Rebates and energy",
            COMMAND_CENTRE,
            "money_energy.json",
            "Follow the money: rebates filed and unpaid (PKR, exact), their age, paid within SLA; and how "
            "long "
            "tariff determinations wait to be notified.",
            "now-30d",
            self.geo_variables(self.facts.agencies),
            [
                (
                    "Rebates",
                    [
                        PanelSpec(
                            self.q("money_locked"),
                            "stat",
                            8,
                            6,
                            value_field="locked_pkr",
                            unit=MONEY_UNIT,
                            thresholds=dash.ThresholdsConfig()
                            .mode(model.ThresholdsMode.ABSOLUTE)
                            .steps([model.Threshold(value=None, color="blue")]),
                        ),
                        PanelSpec(
                            self.q("money_ageing"),
                            "barchart",
                            8,
                            6,
                            x_field="age_bucket",
                            hidden_columns=("open_total",),
                        ),
                        PanelSpec(
                            self.q("money_paid"),
                            "stat",
                            8,
                            6,
                            value_field="sla_compliance",
                            unit="percentunit",
                            thresholds=target_thresholds(money_target),
                        ),
                    ],
                ),
                (
                    "Energy",
                    [
                        PanelSpec(
                            self.q("energy_lag"),
                            "table",
                            24,
                            6,
                            hidden_columns=("mission", "stage", "stage_order"),
                            overrides={"sla_compliance": _compliance_override(energy_target)},
                        ),
                        PanelSpec(
                            self.q("energy_cases"),
                            "table",
                            24,
                            9,
                            overrides={"overdue": _flag_override("OVERDUE")},
                        ),
                    ],
                ),
            ],
            tags=["rebates", "energy"],
        )

    def case_tracker(self) -> BoardSpec:
        case = (
            dash.TextBoxVariable(CASE_VARIABLE)
            .label("Case id")
            .default_value("")
            .description("Shipment reference, claim id or determination id")
        )
        return BoardSpec(
            BOARD_UIDS["case_tracker"],
            "Case tracker",
            COMMAND_CENTRE,
            "case_tracker.json",
            "One place to go for a case: its timeline across agencies, who must act now and how long it has "
            "waited.",
            "now-90d",
            [case],
            [
                (
                    None,
                    [
                        PanelSpec(
                            self.q("case_current"),
                            "table",
                            24,
                            5,
                            overrides={"overdue": _flag_override("OVERDUE")},
                        ),
                        PanelSpec(
                            self.q("case_stages"),
                            "table",
                            24,
                            8,
                            hidden_columns=("stage_order", "journey"),
                            overrides={"over_sla": _flag_override("OVER SLA")},
                        ),
                        PanelSpec(self.q("case_timeline"), "table", 24, 10, hidden_columns=("event_id",)),
                        PanelSpec(self.q("case_alerts"), "table", 24, 6, hidden_columns=("alert_id",)),
                    ],
                ),
            ],
            tags=["case"],
        )

    def boards(self) -> list[BoardSpec]:
        out = [self.national(), self.money_energy(), self.case_tracker()]
        for m in self.facts.missions.spec.missions:
            out += [self.journey(m.id), self.scorecard(m.id)]
        return out

    def folders(self) -> dict[str, tuple[str, str]]:
        """folder key → (uid, title)."""
        folders = {COMMAND_CENTRE: ("bb-command-centre", "Delivery Backbone: command centre")}
        for m in self.facts.missions.spec.missions:
            folders[m.id] = (_uid("folder", m.id), m.name)
        return folders


# -- files ----------------------------------------------------------------------------------------
def dashboard_json(board: BoardSpec) -> str:
    return JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False).encode(board.build()) + "\n"


def provisioning_yaml(builder: BoardsBuilder) -> str:
    providers = [
        {
            "name": f"backbone-{key}",
            "orgId": 1,
            "folder": title,
            "folderUid": uid,
            "type": "file",
            "disableDeletion": True,
            "allowUiUpdates": False,
            "updateIntervalSeconds": 30,
            "options": {"path": f"{CONTAINER_DASHBOARDS_PATH}/{key}", "foldersFromFilesStructure": False},
        }
        for key, (uid, title) in builder.folders().items()
    ]
    header = (
        "# Generated by `backbone dashboards build` from config/missions.yaml: one Grafana folder per\n"
        "# mission plus the command centre. docker-compose mounts ./dashboards/grafana at\n"
        "# /var/lib/grafana/dashboards.\n"
    )
    body: str = yaml.safe_dump({"apiVersion": 1, "providers": providers}, sort_keys=False, allow_unicode=True)
    return header + body


def rendered_files(facts: MissionFacts) -> dict[Path, str]:
    """Every generated file (path → content): the board JSON and the dashboards provisioning file."""
    builder = BoardsBuilder(facts)
    files = {GRAFANA_DIR / b.folder / b.file_name: dashboard_json(b) for b in builder.boards()}
    files[DASHBOARDS_PROVISIONING_FILE] = provisioning_yaml(builder)
    return files


def write_files(files: dict[Path, str]) -> list[Path]:
    """Write the files, removing stale board JSON; returns the paths that changed."""
    changed = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path])
    for stale in stale_files(files):
        stale.unlink()
        changed.append(stale)
    return changed


def stale_files(files: dict[Path, str]) -> list[Path]:
    return [p for p in GRAFANA_DIR.rglob("*.json") if p not in files]


def check_files(files: dict[Path, str]) -> list[str]:
    """Problems that make the committed files differ from a fresh build (empty: up to date)."""
    problems = [f"{p}: missing" for p in files if not p.exists()]
    problems += [
        f"{p}: stale (run `backbone dashboards build`)"
        for p, t in files.items()
        if p.exists() and p.read_text() != t
    ]
    problems += [f"{p}: not generated any more" for p in stale_files(files)]
    return problems


def board_title_slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def load_board(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board
