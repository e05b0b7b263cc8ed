"""The security configuration of the production stack, checked without Docker.

- Kafka: the access plan that ``deploy/kafka/acls.py`` derives from ``schemas/registry.yaml``
  equals the ACLs computed here independently from the same file (each agency: Write on exactly
  its topics, nothing else); the service principals match the code's topics and group ids; the
  setup script applies exactly the plan (against stand-in Kafka CLI tools that record their
  arguments), generates agency passwords safely and prints none; the dev CA script yields a
  certificate a TLS client accepts for ``kafka``/``localhost`` and rejects for other names;
  the broker properties allow only SASL_SSL clients and deny by default.
- ClickHouse: users.xml parses, holds exactly the three users, passwords from the environment,
  the read-only profile (readonly=1 and query limits), grants as narrow as documented.
- Grafana: anonymous access off, admin password from the environment, pinned plugin, Viewer
  login creation (against a recorded Grafana API).
- Secrets: none committed; ``BACKBONE_<FIELD>_FILE`` works; ``backbone config`` masks them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml
from compose_fixtures import REPO, loaded_compose, raw_compose, read_env_file

REGISTRY_FILE = REPO / "schemas" / "registry.yaml"
KAFKA_DIR = REPO / "deploy" / "kafka"
USERS_XML = REPO / "deploy" / "clickhouse" / "users.xml"


def _load_script(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def acls() -> ModuleType:
    return _load_script(KAFKA_DIR / "acls.py", "deploy_kafka_acls")


def registry_agencies() -> dict[str, list[str]]:
    """The oracle's own reading of the registry: ``{agency code: topics}``."""
    agencies = yaml.safe_load(REGISTRY_FILE.read_text())["agencies"]
    return {code: list(entry["topics"]) for code, entry in agencies.items()}


def plan_lines(registry: Path | None = None, fmt: str = "plan") -> str:
    args = [sys.executable, str(KAFKA_DIR / "acls.py"), "--format", fmt]
    if registry is not None:
        args += ["--registry", str(registry)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def parse_plan(text: str) -> tuple[list[str], dict[str, str], set[tuple[str, ...]]]:
    topics, users, bindings = [], {}, set()
    for line in text.splitlines():
        kind, *fields = line.split("\t")
        if kind == "topic":
            topics.append(fields[0])
        elif kind == "user":
            users[fields[0]] = fields[1]
        elif kind == "acl":
            bindings.add(tuple(fields))
        else:
            raise AssertionError(f"unexpected plan line {line!r}")
    return topics, users, bindings


# -- Kafka: the access plan ----------------------------------------------------------------------------
def test_each_agency_may_write_exactly_its_registry_topics_and_read_nothing() -> None:
    topics, users, bindings = parse_plan(plan_lines())
    agencies = registry_agencies()
    assert agencies, "registry has no agencies"
    for code, agency_topics in agencies.items():
        principal = "agency-" + code.lower()
        assert users.get(principal) == "file", f"{code}: no SCRAM principal {principal}"
        granted = {b for b in bindings if b[0] == f"User:{principal}"}
        expected = {(f"User:{principal}", "Write", "topic", t, "literal") for t in agency_topics}
        assert granted == expected, f"{code}: ACLs {sorted(granted)} != {sorted(expected)}"
    agency_principals = {u for u, source in users.items() if source == "file"}
    assert agency_principals == {"agency-" + c.lower() for c in agencies}


def test_no_agency_can_read_and_no_one_gets_wildcards_or_all() -> None:
    _topics, _users, bindings = parse_plan(plan_lines())
    for principal, operation, resource_type, name, pattern in bindings:
        assert name != "*" and operation not in ("All", "Alter", "AlterConfigs", "ClusterAction"), (
            principal,
            operation,
            name,
        )
        assert resource_type != "cluster", f"{principal}: cluster-level ACL"
        if principal.startswith("User:agency-"):
            assert operation == "Write" and resource_type == "topic" and pattern == "literal"


def test_agency_topics_are_exactly_the_contract_input_topics_and_all_topics_are_created() -> None:
    from schemas import contracts

    topics, _users, _bindings = parse_plan(plan_lines())
    union = {t for ts in registry_agencies().values() for t in ts}
    assert union == set(contracts.INPUT_TOPICS)
    assert set(topics) >= set(contracts.INPUT_TOPICS) | set(contracts.OUTPUT_TOPICS)


def test_service_principals_match_the_code_topics_and_groups(acls: ModuleType) -> None:
    from alerting.forwarder import GROUP_ID as FORWARDER_GROUP
    from schemas import contracts
    from sinks.sink import DEFAULT_GROUP as SINK_GROUP
    from stream_processors.api import FACTS_TOPIC
    from stream_processors.app import DEFAULT_APP_ID

    assert tuple(acls.OUTPUT_TOPICS) == contracts.OUTPUT_TOPICS
    assert acls.ALERTS_TOPIC == contracts.ALERTS and acls.DEAD_LETTERS_TOPIC == contracts.DEAD_LETTERS
    assert FACTS_TOPIC in acls.INTERNAL_TOPICS and FACTS_TOPIC.startswith(acls.INTERNAL_TOPIC_PREFIX)
    assert DEFAULT_APP_ID.startswith(acls.PROCESSOR_APP_PREFIX)
    assert SINK_GROUP.startswith(acls.SINK_GROUP_PREFIX)
    assert FORWARDER_GROUP.startswith(acls.ALERT_FORWARDER_GROUP_PREFIX)

    _topics, users, bindings = parse_plan(plan_lines())

    def allowed(principal: str, operation: str, resource_type: str, name: str) -> bool:
        for p, op, rt, resource, pattern in bindings:
            if p == f"User:{principal}" and op == operation and rt == resource_type:
                if resource == name if pattern == "literal" else name.startswith(resource):
                    return True
        return False

    for topic in contracts.INPUT_TOPICS:
        assert allowed("backbone-processor", "Read", "topic", topic)
        assert allowed("backbone-sink", "Read", "topic", topic)
        assert not allowed("backbone-alert-forwarder", "Read", "topic", topic)
    for topic in contracts.OUTPUT_TOPICS:
        assert allowed("backbone-processor", "Write", "topic", topic)
        assert allowed("backbone-sink", "Read", "topic", topic)
    for suffix in ("kpi_state-changelog", "__assignor-__leader"):
        for op in ("Read", "Write", "Create"):
            assert allowed("backbone-processor", op, "topic", f"{DEFAULT_APP_ID}-{suffix}")
    assert allowed("backbone-processor", "Read", "group", DEFAULT_APP_ID)
    assert allowed("backbone-sink", "Read", "group", SINK_GROUP)
    assert allowed("backbone-alert-forwarder", "Read", "topic", contracts.ALERTS)
    assert allowed("backbone-alert-forwarder", "Read", "group", FORWARDER_GROUP)
    assert not allowed("backbone-alert-forwarder", "Read", "topic", contracts.STAGE_RECORDS)
    assert not allowed("backbone-sink", "Write", "topic", contracts.STAGE_RECORDS)
    assert users["backbone-processor"] == "env:KAFKA_PROCESSOR_PASSWORD"
    assert users["backbone-simulator"] == "optional-env:KAFKA_SIMULATOR_PASSWORD"


def test_compose_gives_each_service_its_own_principal_and_the_setup_job_every_password() -> None:
    services = loaded_compose()["services"]
    _topics, users, _bindings = parse_plan(plan_lines())
    expected = {
        "processor": "backbone-processor",
        "sink": "backbone-sink",
        "alert-forwarder": "backbone-alert-forwarder",
        "simulator": "backbone-simulator",
    }
    setup_env = services["kafka-setup"]["environment"]
    raw_setup_env = raw_compose()["services"]["kafka-setup"]["environment"]
    for service, principal in expected.items():
        env = services[service]["environment"]
        assert env["BACKBONE_KAFKA_SASL_USERNAME"] == principal
        assert env["BACKBONE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["BACKBONE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert env["BACKBONE_KAFKA_SSL_CA_LOCATION"].endswith("/ca.crt")
        variable = users[principal].split(":", 1)[1]
        assert env["BACKBONE_KAFKA_SASL_PASSWORD"] == setup_env[variable], service
        raw = raw_compose()["services"][service]["environment"]["BACKBONE_KAFKA_SASL_PASSWORD"]
        assert raw == raw_setup_env[variable] or raw.split(":")[0] == raw_setup_env[variable].split(":")[0]
    registry_env = services["schema-registry"]["environment"]
    assert (
        'username="backbone-schema-registry"' in registry_env["SCHEMA_REGISTRY_KAFKASTORE_SASL_JAAS_CONFIG"]
    )


def test_adding_an_agency_is_a_registry_edit(tmp_path: Path) -> None:
    data = yaml.safe_load(REGISTRY_FILE.read_text())
    data["agencies"]["GB-TRANSPORT"] = {
        "name": "Gilgit-Baltistan Transport Department",
        "lane": "permits",
        "province": "PK-GB",
        "topics": ["transport.permits.v1"],
    }
    edited = tmp_path / "registry.yaml"
    edited.write_text(yaml.safe_dump(data))
    _topics, users, bindings = parse_plan(plan_lines(edited))
    assert users["agency-gb-transport"] == "file"
    assert {b for b in bindings if b[0] == "User:agency-gb-transport"} == {
        ("User:agency-gb-transport", "Write", "topic", "transport.permits.v1", "literal")
    }
    json_plan = json.loads(plan_lines(edited, "json"))
    assert any(p["name"] == "agency-gb-transport" for p in json_plan["principals"])


def test_a_registry_agency_without_topics_is_refused_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "registry.yaml"
    bad.write_text("agencies:\n  KPT: {name: Karachi Port Trust, lane: port, topics: []}\n")
    result = subprocess.run(
        [sys.executable, str(KAFKA_DIR / "acls.py"), "--registry", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "agencies.KPT.topics" in result.stderr


def test_shell_format_uses_variables_for_every_password() -> None:
    text = plan_lines(fmt="shell")
    configs = [line for line in text.splitlines() if "kafka-configs.sh" in line]
    assert configs and all(re.search(r"password=\$\{[A-Z0-9_]+:\?\}\]", line) for line in configs)
    _topics, users, _bindings = parse_plan(plan_lines())
    assert len(configs) == len(users)


# -- Kafka: the setup script against recording stand-ins of the Kafka CLI -------------------------------
STUB = """#!/usr/bin/env bash
cfg=""; prev=""
for a in "$@"; do [ "$prev" = --command-config ] && cfg="$a"; prev="$a"; done
printf '%s' "$(basename "$0")" >>"$STUB_LOG"
printf '\\t%s' "$@" >>"$STUB_LOG"
printf '\\n' >>"$STUB_LOG"
stat -c '%a' "$cfg" >>"$STUB_LOG.modes"
admin_login='username="admin" password="'"$KAFKA_ADMIN_PASSWORD"'"'
grep -q "$admin_login" "$cfg" || { echo "no admin login" >&2; exit 9; }
"""

SERVICE_PASSWORDS = {
    "KAFKA_ADMIN_PASSWORD": "AdminPw0000000000000000000000001",
    "KAFKA_PROCESSOR_PASSWORD": "ProcPw00000000000000000000000002",
    "KAFKA_SINK_PASSWORD": "SinkPw00000000000000000000000003",
    "KAFKA_ALERT_FORWARDER_PASSWORD": "FwdPw000000000000000000000000004",
    "KAFKA_SCHEMA_REGISTRY_PASSWORD": "RegPw000000000000000000000000005",
}


def run_setup(
    tmp_path: Path, extra_env: dict[str, str] | None = None, drop: str | None = None
) -> tuple[subprocess.CompletedProcess[str], list[list[str]], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("kafka-topics.sh", "kafka-configs.sh", "kafka-acls.sh"):
        (bin_dir / tool).write_text(STUB)
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "calls.tsv"
    log.unlink(missing_ok=True)
    plan = tmp_path / "plan.tsv"
    plan.write_text(plan_lines())
    secrets_dir = tmp_path / "agency-secrets"
    env = {
        "PATH": os.environ["PATH"],
        "KAFKA_BIN": str(bin_dir),
        "BOOTSTRAP": "kafka:9092",
        "KAFKA_CA_FILE": "/dev/null",
        "AGENCY_SECRETS_DIR": str(secrets_dir),
        "STUB_LOG": str(log),
        **SERVICE_PASSWORDS,
        **(extra_env or {}),
    }
    if drop:
        env.pop(drop)
    result = subprocess.run(
        ["bash", str(KAFKA_DIR / "create-principals-and-acls.sh"), str(plan)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    calls = [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls, secrets_dir


def _arg(call: list[str], flag: str) -> str:
    return call[call.index(flag) + 1]


def test_setup_script_applies_exactly_the_plan_and_prints_no_password(tmp_path: Path) -> None:
    result, calls, secrets_dir = run_setup(tmp_path)
    assert result.returncode == 0, result.stderr
    topics, users, bindings = parse_plan(plan_lines())

    created_topics = [_arg(c, "--topic") for c in calls if c[0] == "kafka-topics.sh"]
    assert created_topics == topics
    assert all("--if-not-exists" in c for c in calls if c[0] == "kafka-topics.sh")

    scram = {_arg(c, "--entity-name"): _arg(c, "--add-config") for c in calls if c[0] == "kafka-configs.sh"}
    assert set(scram) == set(users) - {"backbone-simulator"}, (
        "the optional simulator has no password: skipped"
    )
    for name, source in users.items():
        if source.startswith("env:"):
            assert scram[name] == f"SCRAM-SHA-512=[iterations=8192,password={SERVICE_PASSWORDS[source[4:]]}]"
    applied = {
        (
            _arg(c, "--allow-principal"),
            _arg(c, "--operation"),
            "topic" if "--topic" in c else "group",
            _arg(c, "--topic") if "--topic" in c else _arg(c, "--group"),
            _arg(c, "--resource-pattern-type"),
        )
        for c in calls
        if c[0] == "kafka-acls.sh"
    }
    assert applied == {b for b in bindings if b[0] != "User:backbone-simulator"}

    agency_files = sorted(secrets_dir.glob("*.password"))
    assert [f.stem for f in agency_files] == sorted(u for u, s in users.items() if s == "file")
    outputs = result.stdout + result.stderr
    for f in agency_files:
        password = f.read_text()
        assert re.fullmatch(r"[A-Za-z0-9]{32}", password), f.name
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
        assert scram[f.stem] == f"SCRAM-SHA-512=[iterations=8192,password={password}]"
        assert password not in outputs
    for password in SERVICE_PASSWORDS.values():
        assert password not in outputs
    assert set((tmp_path / "calls.tsv.modes").read_text().split()) == {"600"}, "admin config must be 0600"


def test_setup_script_keeps_agency_passwords_and_creates_the_optional_simulator_when_asked(
    tmp_path: Path,
) -> None:
    _result, _calls, secrets_dir = run_setup(tmp_path)
    before = {f.name: f.read_text() for f in secrets_dir.glob("*.password")}
    result, calls, _ = run_setup(tmp_path, {"KAFKA_SIMULATOR_PASSWORD": "SimPw000000000000000000000000006"})
    assert result.returncode == 0, result.stderr
    assert {f.name: f.read_text() for f in secrets_dir.glob("*.password")} == before
    users = {_arg(c, "--entity-name") for c in calls if c[0] == "kafka-configs.sh"}
    assert "backbone-simulator" in users
    assert any(
        _arg(c, "--allow-principal") == "User:backbone-simulator" for c in calls if c[0] == "kafka-acls.sh"
    )


def test_setup_script_names_a_missing_service_password(tmp_path: Path) -> None:
    result, _calls, _ = run_setup(tmp_path, drop="KAFKA_SINK_PASSWORD")
    assert result.returncode != 0
    assert "KAFKA_SINK_PASSWORD must be set (password of Kafka principal backbone-sink)" in result.stderr


def test_setup_script_refuses_a_password_that_breaks_the_scram_syntax(tmp_path: Path) -> None:
    result, _calls, _ = run_setup(tmp_path, {"KAFKA_SINK_PASSWORD": "abc,def=ghi"})
    assert result.returncode != 0 and "backbone-sink" in result.stderr
    assert "abc,def=ghi" not in result.stdout + result.stderr


# -- Kafka: TLS material and broker properties ----------------------------------------------------------
@pytest.fixture(scope="module")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("certs")
    dirs = {"broker": base / "broker", "clients": base / "clients", "ca": base / "ca"}
    env = {**os.environ, "KAFKA_SSL_PASSWORD": "KeystorePw00000000000000000000007", "CERT_RSA_BITS": "2048"}
    result = subprocess.run(
        [
            "bash",
            str(KAFKA_DIR / "make-dev-certs.sh"),
            str(dirs["broker"]),
            str(dirs["clients"]),
            str(dirs["ca"]),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # The broker's key and chain as PEM, for a TLS server stand-in (the broker reads the PKCS12 itself).
    pem = base / "server.pem"
    subprocess.run(
        ["openssl", "pkcs12", "-in", str(dirs["broker"] / "kafka.keystore.p12"), "-nodes", "-out", str(pem),
         "-passin", "env:KAFKA_SSL_PASSWORD"],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return {**dirs, "pem": pem}


def _tls_handshake(server_pem: Path, ca_file: Path, server_hostname: str) -> None:
    """Serve one TLS handshake on loopback with the broker certificate; connect as a client would."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_pem)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(ca_file))  # what the Faust app builds
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                tls.sendall(b"x")
    finally:
        thread.join(timeout=10)
        listener.close()


@pytest.mark.integration  # openssl and keytool
def test_dev_ca_certificate_is_accepted_for_the_broker_names_only(dev_certs: dict[str, Path]) -> None:
    for name in ("kafka", "localhost"):
        _tls_handshake(dev_certs["pem"], dev_certs["clients"] / "ca.crt", name)
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_handshake(dev_certs["pem"], dev_certs["clients"] / "ca.crt", "evil.example")


@pytest.mark.integration  # openssl and keytool
def test_dev_ca_keeps_the_ca_key_out_of_the_mounted_folders(dev_certs: dict[str, Path]) -> None:
    assert (dev_certs["ca"] / "ca.key").is_file()
    assert stat.S_IMODE(dev_certs["ca"].stat().st_mode) == 0o700
    for mounted in (dev_certs["broker"], dev_certs["clients"]):
        assert not list(mounted.glob("*.key"))
    assert sorted(p.name for p in dev_certs["clients"].iterdir()) == ["ca.crt"]
    listing = subprocess.run(
        ["keytool", "-list", "-keystore", str(dev_certs["broker"] / "kafka.truststore.p12"), "-storepass",
         "KeystorePw00000000000000000000007"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listing.returncode == 0 and "trustedCertEntry" in listing.stdout


def test_compose_mounts_match_the_cert_script_layout() -> None:
    services = raw_compose()["services"]
    assert "./deploy/kafka/broker:/etc/kafka/certs:ro" in services["kafka"]["volumes"]
    for name in ("processor", "sink", "alert-forwarder", "simulator", "schema-registry"):
        assert "./deploy/kafka/clients:/etc/backbone/kafka-tls:ro" in services[name]["volumes"], name
    assert not any("deploy/kafka/ca" in str(v) for s in services.values() for v in s.get("volumes", []))


def _properties(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_broker_allows_only_authenticated_tls_clients_and_denies_by_default() -> None:
    props = _properties(KAFKA_DIR / "server.properties")
    protocols = dict(item.split(":", 1) for item in props["listener.security.protocol.map"].split(","))
    listeners = dict(item.split("://", 1) for item in props["listeners"].split(","))
    controllers = set(props["controller.listener.names"].split(","))
    for name, address in listeners.items():
        if name in controllers:
            assert address.startswith("localhost:"), "the controller listener must not be reachable"
        else:
            assert protocols[name] == "SASL_SSL", f"listener {name} is {protocols[name]}"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["auto.create.topics.enable"] == "false"
    assert "password" not in " ".join(k for k in props if "jaas" not in k)
    assert not any("password=" in v for v in props.values())


# -- ClickHouse -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def users_xml() -> ET.Element:
    return ET.parse(USERS_XML).getroot()


def test_clickhouse_has_exactly_the_three_users_with_passwords_from_the_environment(
    users_xml: ET.Element,
) -> None:
    users = {u.tag: u for u in users_xml.find("users") or []}
    assert set(users) == {"backbone_migrator", "backbone_writer", "backbone_reader"}, "no default user"
    clickhouse_env = loaded_compose()["services"]["clickhouse"]["environment"]
    for name, user in users.items():
        passwords = [c for c in user if c.tag.startswith("password")]
        assert len(passwords) == 1 and passwords[0].tag == "password", name
        assert (passwords[0].text or "").strip() == "", f"{name}: literal password in users.xml"
        variable = passwords[0].get("from_env")
        assert variable and variable in clickhouse_env, f"{name}: password variable {variable} not passed"
        assert user.findtext("profile") in {p.tag for p in users_xml.find("profiles") or []}
        assert user.findtext("quota") in {q.tag for q in users_xml.find("quotas") or []}


def test_clickhouse_readonly_profile_has_readonly_and_query_limits(users_xml: ET.Element) -> None:
    reader = users_xml.find("users/backbone_reader")
    assert reader is not None
    profile = users_xml.find(f"profiles/{reader.findtext('profile')}")
    assert profile is not None
    assert profile.findtext("readonly") == "1"
    limits = {
        "max_execution_time": 120,
        "max_result_rows": 1_000_000,
        "max_memory_usage": 8_000_000_000,
    }
    for setting, ceiling in limits.items():
        value = int(profile.findtext(setting) or 0)
        assert 0 < value <= ceiling, f"readonly profile {setting}={value}"
    assert profile.findtext("result_overflow_mode") == "throw"
    timeout = profile.find("constraints/max_execution_time")
    assert timeout is not None and timeout.find("changeable_in_readonly") is not None
    assert int(timeout.findtext("max") or 0) <= 120


def test_clickhouse_grants_are_as_narrow_as_documented(users_xml: ET.Element) -> None:
    def grants(user: str) -> str:
        return " ".join(q.text or "" for q in users_xml.findall(f"users/{user}/grants/query"))

    assert grants("backbone_reader") == "GRANT SELECT ON backbone.*"
    writer = grants("backbone_writer")
    assert "INSERT" in writer and "SELECT" in writer
    for forbidden in ("DROP", "ALTER", "TRUNCATE", "CREATE", "ALL", "ON *.*"):
        assert forbidden not in writer, f"writer holds {forbidden}"
    for user in ("backbone_migrator", "backbone_writer", "backbone_reader"):
        for query in users_xml.findall(f"users/{user}/grants/query"):
            assert (query.text or "").rstrip().endswith("ON backbone.*"), f"{user}: {query.text}"
    config = ET.parse(REPO / "deploy" / "clickhouse" / "config.d" / "backbone.xml").getroot()
    directories = config.find("user_directories")
    assert directories is not None and directories.get("replace") == "replace"
    assert [d.tag for d in directories] == ["users_xml"], "no SQL-created users"


def test_services_use_the_clickhouse_user_their_role_needs() -> None:
    services = raw_compose()["services"]
    for service, user, password in (
        ("migrate", "backbone_migrator", "CLICKHOUSE_MIGRATOR_PASSWORD"),
        ("sink", "backbone_writer", "CLICKHOUSE_WRITER_PASSWORD"),
        ("board", "backbone_reader", "CLICKHOUSE_READER_PASSWORD"),
    ):
        env = services[service]["environment"]
        assert env["BACKBONE_CLICKHOUSE_USERNAME"] == user
        assert password in env["BACKBONE_CLICKHOUSE_PASSWORD"]
        assert "@" not in env["BACKBONE_CLICKHOUSE_URL"], (
            "credentials belong in the secret settings, not the URL"
        )
    grafana = loaded_compose()["services"]["grafana"]["environment"]
    assert grafana["CLICKHOUSE_READONLY_USER"] == "backbone_reader"
    # Every $VARIABLE the provisioning files expand is given to Grafana, and the data source uses them.
    provisioning = REPO / "dashboards" / "provisioning"
    referenced = set()
    for path in provisioning.rglob("*.y*ml"):
        text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        referenced |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text))
    assert referenced, "the ClickHouse data source should take its credentials from the environment"
    assert referenced <= set(grafana), f"not in grafana's environment: {sorted(referenced - set(grafana))}"
    assert (
        grafana["CLICKHOUSE_READONLY_PASSWORD"]
        == loaded_compose()["services"]["clickhouse"]["environment"]["CLICKHOUSE_READER_PASSWORD"]
    )


# -- Grafana ----------------------------------------------------------------------------------------------
def test_grafana_disables_anonymous_access_and_takes_the_admin_password_from_the_environment() -> None:
    env = raw_compose()["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_USERS_AUTO_ASSIGN_ORG_ROLE"] == "Viewer"
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]*\}", env["GF_SECURITY_ADMIN_PASSWORD"])
    assert re.fullmatch(r"grafana-clickhouse-datasource \d+\.\d+\.\d+", env["GF_INSTALL_PLUGINS"])


@pytest.fixture(scope="module")
def create_viewer() -> ModuleType:
    return _load_script(REPO / "deploy" / "grafana" / "create_viewer.py", "deploy_grafana_create_viewer")


class RecordedGrafana:
    """Answers the four Grafana HTTP API calls the setup makes, as Grafana documents them."""

    def __init__(self, existing_id: int | None) -> None:
        self.existing_id = existing_id
        self.calls: list[tuple[str, str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, request.url.path, body))
        assert request.headers["authorization"].startswith("Basic ")
        if request.url.path == "/api/users/lookup":
            if self.existing_id is None:
                return httpx.Response(404, json={"message": "user not found"})
            return httpx.Response(200, json={"id": self.existing_id, "login": "command-centre"})
        if request.url.path == "/api/admin/users":
            return httpx.Response(200, json={"id": 7, "message": "User created"})
        return httpx.Response(200, json={"message": "ok"})


@pytest.mark.parametrize("existing_id", [None, 12])
def test_grafana_viewer_login_is_created_or_reset_to_viewer(
    create_viewer: ModuleType, existing_id: int | None
) -> None:
    grafana = RecordedGrafana(existing_id)
    client = httpx.Client(
        base_url="http://grafana:3000", transport=httpx.MockTransport(grafana), auth=("a", "b")
    )
    outcome = create_viewer.ensure_viewer(client, "command-centre", "ViewerPw0000000000000000000008")
    user_id = 7 if existing_id is None else existing_id
    assert outcome == ("created" if existing_id is None else "updated")
    assert grafana.calls[-1] == ("PATCH", f"/api/orgs/1/users/{user_id}", {"role": "Viewer"})
    if existing_id is None:
        assert grafana.calls[1][0:2] == ("POST", "/api/admin/users")
        assert grafana.calls[1][2]["password"] == "ViewerPw0000000000000000000008"
    else:
        assert grafana.calls[1] == (
            "PUT",
            f"/api/admin/users/{user_id}/password",
            {"password": "ViewerPw0000000000000000000008"},
        )


def test_grafana_setup_reports_a_missing_password_by_name(
    create_viewer: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert create_viewer.main({"GRAFANA_ADMIN_PASSWORD": "x"}) == 1
    assert "GRAFANA_VIEWER_PASSWORD (or GRAFANA_VIEWER_PASSWORD_FILE) must be set" in capsys.readouterr().err


# -- secrets ------------------------------------------------------------------------------------------------
# A password-like key given a value on the same line (KEY=value, key: value, "key": "value").
SECRET_ASSIGNMENT = re.compile(
    r"""(?i)(?P<key>(password|passwd|secret)[\w-]*)["']?\s*[=:]\s*["']?(?P<value>[^\s"',;)\]}]*)"""
)
# Keys that name where secrets live, or several of them, rather than hold one.
NOT_A_SECRET_KEY = re.compile(r"(?i)(_dir|_file|_keys|s)$")
# Values that are not secrets: empty, a variable or parameter expansion, a path, a placeholder.
NOT_A_SECRET = re.compile(r"^($|\$|<|/|\./|\*+$|\.+$|\?|-|env:|optional-env:|file$)")
PYTHON_SECRET_LITERAL = re.compile(r"""(?i)(password|passwd|secret)\w*["']?\s*[=:]\s*["'][^"'$]+["']""")


def _tracked_files() -> list[str]:
    result = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_no_key_material_or_env_file_is_committed() -> None:
    forbidden = re.compile(r"(\.key|\.p12|\.jks|\.pem|\.password|(^|/)\.env)$")
    offenders = [f for f in _tracked_files() if forbidden.search(f)]
    assert not offenders, offenders


def test_no_secret_literal_in_the_deployment_files() -> None:
    files = [
        REPO / name for name in ("docker-compose.yml", ".env.example", "Dockerfile", "docs/DEPLOYMENT.md")
    ]
    files += [p for p in (REPO / "deploy").rglob("*") if p.is_file()]
    offenders = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if path.suffix == ".py":
                found = bool(PYTHON_SECRET_LITERAL.search(line))
            else:
                # ${VAR...} references and escaped quotes are not values: reduce them first.
                reduced = re.sub(r"\$\{[^}]*\}", "$VAR", line).replace('\\"', '"')
                values = [
                    m.group("value")
                    for m in SECRET_ASSIGNMENT.finditer(reduced)
                    if not NOT_A_SECRET_KEY.search(m.group("key"))
                ]
                found = any(not NOT_A_SECRET.match(v) for v in values)
            if found:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "possible secret literals:\n" + "\n".join(offenders)


def test_the_secret_scan_would_catch_a_committed_password() -> None:
    assert SECRET_ASSIGNMENT.search("KAFKA_ADMIN_PASSWORD=hunter2hunter2")
    assert not NOT_A_SECRET.match(
        SECRET_ASSIGNMENT.search("GF_SECURITY_ADMIN_PASSWORD: s3cret").group("value")
    )
    assert PYTHON_SECRET_LITERAL.search('password = "s3cret"')
    assert not PYTHON_SECRET_LITERAL.search('{"password": password}')


def test_every_password_in_compose_is_a_variable_reference() -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                secret_key = re.search(r"PASSWORD|SECRET", str(k)) and not re.search(r"_(DIR|FILE)$", str(k))
                if secret_key and isinstance(v, str):
                    assert re.fullmatch(r"\$\{[A-Z0-9_]+:(\?[^}]*|-)\}", v), f"{path}.{k} = {v!r}"
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
        elif isinstance(node, str) and re.search(r"(?i)password=|:[^/@]*@", node) and "://" in node:
            assert "${" in node, f"{path}: credentials in {node!r}"

    walk(raw_compose(), "compose")
    for key, value in read_env_file().items():
        if re.search(r"PASSWORD|SECRET", key):
            assert value == "", f".env.example {key} has a value"


def test_settings_read_secrets_from_files_and_never_print_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from backbone.cli import app
    from backbone.config import ConfigError, load_settings

    for key in list(os.environ):
        if key.startswith("BACKBONE_"):
            monkeypatch.delenv(key)
    secret_file = tmp_path / "sasl.password"
    secret_file.write_text("FilePw000000000000000000000009\n")
    monkeypatch.setenv("BACKBONE_KAFKA_SASL_PASSWORD_FILE", str(secret_file))
    assert load_settings().kafka_sasl_password.get_secret_value() == "FilePw000000000000000000000009"
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0 and "FilePw000000000000000000000009" not in result.output
    assert "BACKBONE_KAFKA_SASL_PASSWORD=**********" in result.output

    monkeypatch.setenv("BACKBONE_KAFKA_SASL_PASSWORD", "EnvWins")
    assert load_settings().kafka_sasl_password.get_secret_value() == "EnvWins"
    monkeypatch.delenv("BACKBONE_KAFKA_SASL_PASSWORD")
    monkeypatch.setenv("BACKBONE_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="BACKBONE_KAFKA_SASL_PASSWORD_FILE=.*cannot read"):
        load_settings()


@pytest.mark.integration  # openssl and keytool
def test_client_settings_become_sasl_ssl_librdkafka_and_faust_settings(
    dev_certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from confluent_kafka import Producer

    from backbone.config import load_settings
    from backbone.kafka import client_config
    from stream_processors.app import broker_credentials

    for key in list(os.environ):
        if key.startswith("BACKBONE_"):
            monkeypatch.delenv(key)
    ca = str(dev_certs["clients"] / "ca.crt")
    for key, value in {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "agency-fbr-customs",
        "KAFKA_SASL_PASSWORD": "AgencyPw0000000000000000000010",
        "KAFKA_SSL_CA_LOCATION": ca,
    }.items():
        monkeypatch.setenv(f"BACKBONE_{key}", value)
    settings = load_settings()
    conf = client_config(settings)
    assert conf == {
        "bootstrap.servers": "127.0.0.1:1",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "agency-fbr-customs",
        "sasl.password": "AgencyPw0000000000000000000010",
        "ssl.ca.location": ca,
    }
    Producer(conf).flush(0)  # librdkafka accepts the settings and loads the CA file (no broker needed)
    credentials = broker_credentials(settings)
    assert type(credentials).__name__ == "SASLCredentials"
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.username == "agency-fbr-customs"
    assert credentials.ssl_context is not None and credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED
