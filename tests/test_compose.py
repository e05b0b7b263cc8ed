"""docker-compose.yml, checked statically (no Docker engine on the test machines).

Against the Compose Specification's JSON schema (vendored under tests/data/compose-spec/), and
against the repository: mounted files exist, documented services exist, host ports are unique,
images are pinned, every variable is documented in .env.example, health checks and restart
policies are present, the dependency graph is acyclic, and the project services run CLI
commands that the ``backbone`` CLI really has.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from compose_fixtures import (
    COMPOSE_SCHEMA,
    ENV_EXAMPLE,
    REPO,
    MissingVariable,
    example_env_with_secrets,
    interpolate,
    interpolate_string,
    loaded_compose,
    raw_compose,
    read_env_file,
    required_variable_names,
    variable_names,
    volume_source,
)
from typer.testing import CliRunner

DEPLOYMENT_DOC = REPO / "docs" / "DEPLOYMENT.md"
PROJECT_IMAGE_COMMANDS = {
    "processor": ["process"],
    "sink": ["sink", "run", "--no-migrate"],
    "alert-forwarder": ["alerting", "forward"],
    "migrate": ["db", "migrate"],
    "simulator": ["simulate", "--live"],
    "board": ["dashboards", "serve"],
}
THIRD_PARTY = {"kafka", "schema-registry", "clickhouse", "prometheus", "alertmanager", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return loaded_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


# -- the interpolation helper itself (the other tests rely on it) -----------------------------------
def test_interpolation_follows_the_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate_string("${SET}-${UNSET}-$SET", env) == "x--x"
    assert interpolate_string("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}", env) == "d d  d"
    assert interpolate_string("$${SET} $$", env) == "${SET} $"
    with pytest.raises(MissingVariable, match="EMPTY: need it"):
        interpolate_string("${EMPTY:?need it}", env)
    assert interpolate_string("${EMPTY?need it}", env) == ""


# -- the specification --------------------------------------------------------------------------------
def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_validation_would_catch_a_mistake(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["sink"]["restart_policy"] = "always"  # not a Compose key
    broken["services"]["kafka"]["healthcheck"]["interval"] = 15  # must be a duration string
    errors = list(jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text())).iter_errors(broken))
    assert len(errors) >= 2


def test_the_project_is_named_and_has_the_required_services(compose: dict[str, Any]) -> None:
    assert compose.get("name") == "delivery-backbone"
    required = THIRD_PARTY | set(PROJECT_IMAGE_COMMANDS)
    assert required <= set(compose["services"]), f"missing: {sorted(required - set(compose['services']))}"


# -- secrets and variables -----------------------------------------------------------------------------
def test_every_variable_is_documented_in_env_example_and_every_example_is_used() -> None:
    used = variable_names(raw_compose())
    documented = set(read_env_file())
    assert used - documented == set(), f"variables not in .env.example: {sorted(used - documented)}"
    assert documented - used == set(), f".env.example entries no service uses: {sorted(documented - used)}"


def test_the_stack_refuses_to_start_without_its_secrets() -> None:
    env = read_env_file()  # as committed: every secret empty
    with pytest.raises(MissingVariable):
        interpolate(raw_compose(), env)
    required = required_variable_names(raw_compose())
    secrets = {k for k in env if re.search(r"PASSWORD|SECRET", k)}
    optional = {"KAFKA_SIMULATOR_PASSWORD"}  # demo profile only; without it no simulator principal exists
    assert secrets - optional <= required, (
        f"secrets a service could start without: {sorted(secrets - optional - required)}"
    )
    for name in secrets:
        assert env[name] == "", f".env.example must not hold a value for the secret {name}"


# -- images, restart, health -------------------------------------------------------------------------
def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image"
        if "build" in service:
            assert service["build"]["dockerfile"] == "Dockerfile" and (REPO / "Dockerfile").is_file()
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), (
            f"{name}: image {image!r} is not pinned to a version"
        )
    dockerfile = (REPO / "Dockerfile").read_text()
    for base in re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M):
        assert re.search(r":\d+\.\d+\.\d+", base), f"Dockerfile base image {base!r} is not pinned"


def test_every_service_has_a_restart_policy_and_long_running_ones_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        assert service.get("restart") in ("no", "always", "on-failure", "unless-stopped"), (
            f"{name}: restart policy"
        )
        # One-shot jobs finish instead of becoming healthy; the demo simulator has no endpoint to
        # ask and nothing waits for it (a check that only sees its own process would prove nothing).
        if one_shot(service) or "demo" in service.get("profiles", []):
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test form"


def test_project_services_check_their_own_metrics_port(services: dict[str, dict[str, Any]]) -> None:
    from backbone.config import Settings

    ports = {
        "processor": Settings.model_fields["processor_metrics_port"].default,
        "sink": Settings.model_fields["sink_metrics_port"].default,
    }
    try:
        from alerting.stack import DEFAULT_FORWARDER_METRICS_PORT
    except ImportError as exc:  # the alerting area is not there: the forwarder cannot run either
        pytest.fail(f"alerting.stack is missing: {exc}")
    ports["alert-forwarder"] = DEFAULT_FORWARDER_METRICS_PORT
    for name, port in ports.items():
        assert f"127.0.0.1:{port}/metrics" in " ".join(services[name]["healthcheck"]["test"]), name
        assert services[name]["environment"]["BACKBONE_METRICS_ADDRESS"] == "0.0.0.0", name


# -- dependencies -------------------------------------------------------------------------------------
def test_depends_on_graph_is_acyclic_and_conditions_fit(services: dict[str, dict[str, Any]]) -> None:
    graph: dict[str, dict[str, str]] = {}
    for name, service in services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must state conditions"
        graph[name] = {dep: spec["condition"] for dep, spec in deps.items()}
        for dep, condition in graph[name].items():
            assert dep in services, f"{name} depends on undefined service {dep}"
            if one_shot(services[dep]):
                assert condition == "service_completed_successfully", f"{name} -> {dep}: {condition}"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}: wait for health, not start"
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"

    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "visiting", f"dependency cycle: {' -> '.join(path + [node])}"
        state[node] = "visiting"
        for dep in graph[node]:
            visit(dep, path + [node])
        state[node] = "done"

    for node in graph:
        visit(node, [])


def test_migrations_run_before_the_sink_and_kafka_setup_before_every_client(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["migrate"]["command"] == ["db", "migrate"] and one_shot(services["migrate"])
    assert services["sink"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("processor", "sink", "alert-forwarder", "simulator", "schema-registry"):
        assert services[name]["depends_on"]["kafka-setup"]["condition"] == "service_completed_successfully", (
            name
        )


# -- mounts, volumes, ports ----------------------------------------------------------------------------
def test_every_mounted_host_path_exists_in_the_repo(compose: dict[str, Any]) -> None:
    missing = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            kind, source = volume_source(volume)
            if kind == "bind":
                assert source.startswith("./"), f"{name}: bind mount {source!r} must be relative to the repo"
                if not (REPO / source).exists():
                    missing.append(f"{name}: {source}")
            else:
                assert source in compose.get("volumes", {}), f"{name}: named volume {source!r} not declared"
    assert not missing, "mounted paths missing from the repo:\n" + "\n".join(missing)


def test_stateful_services_keep_their_data_in_named_volumes(services: dict[str, dict[str, Any]]) -> None:
    data_dirs = {
        "kafka": "/var/lib/kafka/data",
        "clickhouse": "/var/lib/clickhouse",
        "prometheus": "/prometheus",
        "alertmanager": "/alertmanager",
        "grafana": "/var/lib/grafana",
    }
    for name, target in data_dirs.items():
        mounts = [v for v in services[name]["volumes"] if volume_source(v)[0] == "volume"]
        assert any(str(v).split(":")[1] == target for v in mounts), f"{name}: {target} is not a named volume"


def test_host_ports_do_not_clash(services: dict[str, dict[str, Any]]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            assert len(parts) in (2, 3), f"{name}: publish {port!r} with an explicit host port"
            host_ip, host_port = (parts[0], parts[1]) if len(parts) == 3 else ("0.0.0.0", parts[0])
            for other_ip in {host_ip, "0.0.0.0"} if host_ip != "0.0.0.0" else {"0.0.0.0", "127.0.0.1"}:
                key = (other_ip, host_port)
                assert key not in seen or seen[key] == name, (
                    f"host port {host_port} used by {seen.get(key)} and {name}"
                )
            seen[(host_ip, host_port)] = name


def test_scaled_services_publish_no_host_port_and_have_no_fixed_name(
    services: dict[str, dict[str, Any]],
) -> None:
    processor = services["processor"]
    assert int(processor["deploy"]["replicas"]) >= 2
    assert "ports" not in processor and "container_name" not in processor
    assert all("container_name" not in s for s in services.values())


def test_internal_services_publish_only_on_loopback(services: dict[str, dict[str, Any]]) -> None:
    """Only Kafka's SASL_SSL listener and Grafana's login face the network; the rest stay on loopback."""
    public = {"kafka", "grafana"}
    for name, service in services.items():
        for port in service.get("ports", []):
            if name not in public:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} must bind to 127.0.0.1"


# -- the project's image and CLI ---------------------------------------------------------------------
def test_project_services_run_commands_the_cli_really_has(services: dict[str, dict[str, Any]]) -> None:
    from backbone.cli import app

    runner = CliRunner()
    for name, expected in PROJECT_IMAGE_COMMANDS.items():
        command = services[name]["command"]
        assert command[: len(expected)] == expected, f"{name}: {command}"
        words = [w for w in expected if not w.startswith("-")]
        result = runner.invoke(app, [*words, "--help"])
        assert result.exit_code == 0, f"`backbone {' '.join(words)}` is not a command: {result.output[-300:]}"
        for flag in [w for w in command if w.startswith("--")]:
            assert flag in result.output, f"`backbone {' '.join(words)}` has no {flag} option"


def test_project_services_share_one_image_built_from_the_repo(services: dict[str, dict[str, Any]]) -> None:
    images = {s["image"] for s in services.values() if "build" in s}
    assert len(images) == 1
    assert {n for n, s in services.items() if "build" in s} >= set(PROJECT_IMAGE_COMMANDS) | {
        "kafka-plan",
        "grafana-setup",
    }
    ignore = (REPO / ".dockerignore").read_text().split()
    for secret_path in (
        ".env",
        "deploy/kafka/ca",
        "deploy/kafka/broker",
        "deploy/kafka/agency-secrets",
        ".git",
    ):
        assert secret_path in ignore, f".dockerignore must exclude {secret_path}"


# -- documentation and the other areas' files ----------------------------------------------------------
def _documented_services() -> set[str]:
    text = DEPLOYMENT_DOC.read_text()
    section = text.split("## Services", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`([a-z0-9-]+)`", section, flags=re.M))


def test_every_service_the_docs_name_is_defined_and_every_service_is_documented(
    services: dict[str, dict[str, Any]],
) -> None:
    documented = _documented_services()
    assert documented, "docs/DEPLOYMENT.md has no '## Services' table"
    assert documented == set(services), (
        f"documented but not defined: {sorted(documented - set(services))}; "
        f"defined but not documented: {sorted(set(services) - documented)}"
    )
    for doc in (REPO / "README.md", DEPLOYMENT_DOC):
        if not doc.exists():
            continue
        for line in doc.read_text().splitlines():
            for cmd in re.findall(r"docker compose ([^`#|&;]*)", line):
                for word in _services_named_in(cmd.split()):
                    assert word in services, f"{doc.name} names service {word!r}: {line.strip()}"


_COMPOSE_SUBCOMMANDS = {
    "up",
    "down",
    "logs",
    "restart",
    "stop",
    "start",
    "ps",
    "run",
    "exec",
    "build",
    "pull",
}
_COMPOSE_SUBCOMMANDS |= {"config", "top", "kill", "rm", "create", "images", "port"}
_GLOBAL_FLAGS_WITH_VALUE = {"--profile", "-f", "--file", "--env-file", "-p", "--project-name"}


def _services_named_in(words: list[str]) -> list[str]:
    """Service names in ``docker compose [global flags] SUBCOMMAND [flags] [services]``."""
    i = 0
    while i < len(words) and words[i] not in _COMPOSE_SUBCOMMANDS:
        i += 2 if words[i] in _GLOBAL_FLAGS_WITH_VALUE else 1
    if i >= len(words):
        return []
    names: list[str] = []
    rest = words[i + 1 :]
    for j, word in enumerate(rest):
        if word == "--scale" and j + 1 < len(rest):
            names.append(rest[j + 1].split("=")[0])
        elif word.startswith("-") or "=" in word or (j and rest[j - 1] == "--scale"):
            continue
        elif words[i] in ("run", "exec") and names:
            break  # after `run SERVICE` comes the command
        else:
            names.append(word)
    return names


def test_service_names_are_found_in_compose_command_lines() -> None:
    assert _services_named_in("--profile demo up -d simulator".split()) == ["simulator"]
    assert _services_named_in("up -d --scale processor=4".split()) == ["processor"]
    assert _services_named_in("logs -f processor sink".split()) == ["processor", "sink"]
    assert _services_named_in("run --rm kafka-setup cat /x".split()) == ["kafka-setup"]
    assert _services_named_in("up -d --build".split()) == []


@pytest.mark.integration  # promtool
def test_prometheus_gets_the_alerting_config_with_compose_addresses(tmp_path: Path) -> None:
    """The entrypoint rewrites alerting/prometheus.yml's loopback targets; promtool accepts the result."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: scripts/setup.sh installs Debian's prometheus package"
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PROMETHEUS_SOURCE_DIR": str(REPO / "alerting"),
        "PROMETHEUS_OUT_DIR": str(out),
        "PROMETHEUS_RENDER_ONLY": "1",
    }
    subprocess.run(
        ["sh", str(REPO / "deploy/compose/prometheus-entrypoint.sh")], env=env, check=True, timeout=30
    )
    rendered = (out / "prometheus.yml").read_text()
    assert "127.0.0.1" not in rendered
    assert 'names: ["processor"]' in rendered and "alertmanager:9093" in rendered
    check = subprocess.run(
        [promtool, "check", "config", str(out / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_prometheus_entrypoint_refuses_an_unmapped_loopback_target(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "prometheus.yml").write_text(
        'scrape_configs:\n  - job_name: new\n    static_configs:\n      - targets: ["127.0.0.1:9999"]\n'
    )
    env = {
        **os.environ,
        "PROMETHEUS_SOURCE_DIR": str(src),
        "PROMETHEUS_OUT_DIR": str(tmp_path / "out"),
        "PROMETHEUS_RENDER_ONLY": "1",
    }
    result = subprocess.run(
        ["sh", str(REPO / "deploy/compose/prometheus-entrypoint.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and "loopback address left" in result.stderr


def test_env_example_parses_and_compose_interpolates_with_it() -> None:
    assert ENV_EXAMPLE.is_file()
    compose = interpolate(raw_compose(), example_env_with_secrets())
    assert compose["services"]["processor"]["deploy"]["replicas"] == read_env_file()["PROCESSOR_REPLICAS"]
