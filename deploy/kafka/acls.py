"""The Kafka access plan: SCRAM principals, ACLs and topics, computed from the repo's registry.

Why a generator: agencies live in ``schemas/registry.yaml`` (each with the ``topics`` it may
publish to). Deriving the ACLs from that file means adding an agency is a registry edit, not a
hand-written ``kafka-acls.sh`` line, and the plan can be reviewed (``--format json``) and tested.

The security model it encodes:

* every agency is one SCRAM-SHA-512 principal, ``agency-<code in lower case>``, that may **Write**
  exactly the topics its registry entry lists and nothing else: no Read on any topic and no
  consumer group (an agency cannot read its own or anyone else's events back);
* the project's services have one principal each, with the least they need (see ``SERVICES``);
* ``admin`` is the broker's super user (set at storage format time, never in this plan).

Output formats (``--format``):

* ``plan`` (default): tab-separated lines that ``create-principals-and-acls.sh`` reads with
  ``while read`` (no ``eval``): ``topic <name>``, ``user <name> <password source>``,
  ``acl <principal> <operation> <resource type> <resource name> <pattern type>``.
  The password source is ``env:<VAR>`` for service principals (compose passes the variable),
  ``optional-env:<VAR>`` for a principal that exists only when the variable is set (the demo
  simulator; its ACLs are skipped too), or ``file`` for agencies
  (``$AGENCY_SECRETS_DIR/<name>.password``, generated if absent).
* ``shell``: the equivalent ``kafka-configs.sh`` / ``kafka-acls.sh`` commands, for review or for
  an operator without this repo's script (passwords stay ``$VARIABLES``, never literals).
* ``json``: the same plan as data.

Run it with the project installed: ``python deploy/kafka/acls.py [--registry FILE] [--format F]``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REGISTRY = REPO_ROOT / "schemas" / "registry.yaml"

ResourceType = Literal["topic", "group", "cluster"]
PatternType = Literal["literal", "prefixed"]

# Topic families. Input topics are the agency-facing ones (registry ``topics``); output topics are
# the pipeline's ``backbone.*`` results; internal topics (``backbone.internal.*``, e.g. the KPI
# facts between the two processor hops) and the Faust app's own changelog/assignor topics
# (``backbone-processors-*``) belong to the processors alone.
OUTPUT_TOPICS: tuple[str, ...] = (
    "backbone.stage_records.v1",
    "backbone.kpi_windows.v1",
    "backbone.alerts.v1",
    "backbone.dead_letters.v1",
    "backbone.backlog.v1",
    "backbone.feed_freshness.v1",
)
ALERTS_TOPIC = "backbone.alerts.v1"
DEAD_LETTERS_TOPIC = "backbone.dead_letters.v1"
INTERNAL_TOPIC_PREFIX = "backbone.internal."
INTERNAL_TOPICS: tuple[str, ...] = ("backbone.internal.kpi_facts.v1",)
PROCESSOR_APP_PREFIX = "backbone-processors"
"""Faust app id = consumer group id; Faust names its changelog topics ``<app id>-<table>-changelog``."""
SINK_GROUP_PREFIX = "backbone-sink"
ALERT_FORWARDER_GROUP_PREFIX = "backbone-alert-forwarder"
SCHEMA_REGISTRY_TOPIC = "_schemas"
SCHEMA_REGISTRY_GROUP = "schema-registry"
AGENCY_PRINCIPAL_PREFIX = "agency-"


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding. Kafka denies everything not allowed (``allow.everyone.if.no.acl.found=false``)."""

    principal: str  # "User:<name>"
    operation: str  # Kafka operation name as kafka-acls.sh spells it: Read, Write, Create, Describe, ...
    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType = "literal"


@dataclass(frozen=True, order=True)
class Principal:
    """A SCRAM user; ``password_source`` is ``env:<VAR>``, ``optional-env:<VAR>`` or ``file``."""

    name: str
    kind: Literal["agency", "service"]
    password_source: str


@dataclass(frozen=True)
class AccessPlan:
    topics: tuple[str, ...]
    principals: tuple[Principal, ...]
    acls: tuple[Acl, ...]


def agency_principal(code: str) -> str:
    """The SCRAM user name of an agency: ``FBR-CUSTOMS`` → ``agency-fbr-customs``."""
    return AGENCY_PRINCIPAL_PREFIX + code.lower()


def load_agency_topics(registry_file: Path = DEFAULT_REGISTRY) -> dict[str, tuple[str, ...]]:
    """``{agency code: topics it may publish}`` from the registry, with a clear error if malformed."""
    data = yaml.safe_load(registry_file.read_text())
    agencies = (data or {}).get("agencies")
    if not isinstance(agencies, dict) or not agencies:
        raise ValueError(f"{registry_file}: no 'agencies' mapping")
    out: dict[str, tuple[str, ...]] = {}
    for code, entry in agencies.items():
        topics = entry.get("topics") if isinstance(entry, dict) else None
        if not isinstance(topics, list) or not topics or not all(isinstance(t, str) for t in topics):
            raise ValueError(
                f"{registry_file}: agencies.{code}.topics must be a non-empty list of topic names"
            )
        out[str(code)] = tuple(topics)
    return out


def _allow(
    principal: str,
    operations: Iterable[str],
    resource_type: ResourceType,
    names: Iterable[str],
    pattern_type: PatternType = "literal",
) -> list[Acl]:
    return [
        Acl(f"User:{principal}", op, resource_type, name, pattern_type) for name in names for op in operations
    ]


def build_plan(agency_topics: dict[str, tuple[str, ...]]) -> AccessPlan:
    """The full plan: topics to create, principals and their ACLs.

    Input topics are the union of the registry's agency topics, so a new topic family appears here
    as soon as an agency lists it.
    """
    input_topics = tuple(sorted({t for topics in agency_topics.values() for t in topics}))
    principals: list[Principal] = []
    acls: list[Acl] = []

    for code in sorted(agency_topics):
        name = agency_principal(code)
        principals.append(Principal(name, "agency", "file"))
        acls += _allow(name, ["Write"], "topic", sorted(set(agency_topics[code])))

    processor = "backbone-processor"
    principals.append(Principal(processor, "service", "env:KAFKA_PROCESSOR_PASSWORD"))
    acls += _allow(processor, ["Read"], "topic", input_topics)
    acls += _allow(processor, ["Write"], "topic", OUTPUT_TOPICS)
    acls += _allow(
        processor,
        ["Read", "Write", "Create", "DescribeConfigs"],
        "topic",
        [INTERNAL_TOPIC_PREFIX, PROCESSOR_APP_PREFIX],
        "prefixed",
    )
    acls += _allow(processor, ["Read"], "group", [PROCESSOR_APP_PREFIX], "prefixed")

    sink = "backbone-sink"
    principals.append(Principal(sink, "service", "env:KAFKA_SINK_PASSWORD"))
    acls += _allow(sink, ["Read"], "topic", input_topics + OUTPUT_TOPICS)
    acls += _allow(sink, ["Write"], "topic", [DEAD_LETTERS_TOPIC])  # records it cannot store are not lost
    acls += _allow(sink, ["Read"], "group", [SINK_GROUP_PREFIX], "prefixed")

    forwarder = "backbone-alert-forwarder"
    principals.append(Principal(forwarder, "service", "env:KAFKA_ALERT_FORWARDER_PASSWORD"))
    acls += _allow(forwarder, ["Read"], "topic", [ALERTS_TOPIC])
    acls += _allow(forwarder, ["Read"], "group", [ALERT_FORWARDER_GROUP_PREFIX], "prefixed")

    registry = "backbone-schema-registry"
    principals.append(Principal(registry, "service", "env:KAFKA_SCHEMA_REGISTRY_PASSWORD"))
    acls += _allow(registry, ["Read", "Write", "Create", "DescribeConfigs"], "topic", [SCHEMA_REGISTRY_TOPIC])
    acls += _allow(registry, ["Read"], "group", [SCHEMA_REGISTRY_GROUP], "prefixed")

    simulator = "backbone-simulator"  # demo profile only: plays every agency at once
    principals.append(Principal(simulator, "service", "optional-env:KAFKA_SIMULATOR_PASSWORD"))
    acls += _allow(simulator, ["Write"], "topic", input_topics)

    topics = input_topics + OUTPUT_TOPICS + INTERNAL_TOPICS
    return AccessPlan(topics=topics, principals=tuple(principals), acls=tuple(acls))


def _check_field(value: str, what: str) -> str:
    """Plan lines are tab-separated and read by a shell loop: refuse names that would break them."""
    if not value or any(c in value for c in "\t\n\r '\"$`\\;"):
        raise ValueError(f"{what} {value!r} contains whitespace or shell metacharacters")
    return value


def render_plan(plan: AccessPlan) -> str:
    lines = [f"topic\t{_check_field(t, 'topic')}" for t in plan.topics]
    lines += [f"user\t{_check_field(p.name, 'principal')}\t{p.password_source}" for p in plan.principals]
    lines += [
        "\t".join(
            [
                "acl",
                _check_field(a.principal, "principal"),
                a.operation,
                a.resource_type,
                _check_field(a.resource_name, "resource"),
                a.pattern_type,
            ]
        )
        for a in plan.acls
    ]
    return "\n".join(lines) + "\n"


def render_shell(plan: AccessPlan) -> str:
    """Stand-alone commands; ``$KAFKA_BIN``, ``$BOOTSTRAP`` and ``$ADMIN_CONFIG`` come from the caller."""
    common = '--bootstrap-server "$BOOTSTRAP" --command-config "$ADMIN_CONFIG"'
    out = [
        "# generated by deploy/kafka/acls.py from schemas/registry.yaml; passwords are variables",
        "set -eu",
    ]
    for t in plan.topics:
        out.append(
            f'"$KAFKA_BIN/kafka-topics.sh" {common} --create --if-not-exists --topic {shlex.quote(t)} '
            '--partitions "${TOPIC_PARTITIONS:-6}" --replication-factor "${TOPIC_REPLICATION_FACTOR:-1}"'
        )
    for p in plan.principals:
        var = (
            p.password_source.split(":", 1)[1]
            if ":" in p.password_source
            else ("PASSWORD_" + p.name.upper().replace("-", "_"))
        )
        out.append(
            f'"$KAFKA_BIN/kafka-configs.sh" {common} --alter --entity-type users '
            f'--entity-name {shlex.quote(p.name)} --add-config "SCRAM-SHA-512=[password=${{{var}:?}}]"'
        )
    for a in plan.acls:
        resource = {
            "topic": f"--topic {shlex.quote(a.resource_name)}",
            "group": f"--group {shlex.quote(a.resource_name)}",
            "cluster": "--cluster",
        }[a.resource_type]
        out.append(
            f'"$KAFKA_BIN/kafka-acls.sh" {common} --add --allow-principal {shlex.quote(a.principal)} '
            f"--operation {a.operation} {resource} --resource-pattern-type {a.pattern_type}"
        )
    return "\n".join(out) + "\n"


def render_json(plan: AccessPlan) -> str:
    return (
        json.dumps(
            {
                "topics": list(plan.topics),
                "principals": [asdict(p) for p in plan.principals],
                "acls": [asdict(a) for a in plan.acls],
            },
            indent=2,
        )
        + "\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--registry", type=Path, default=DEFAULT_REGISTRY, help="registry.yaml to read")
    parser.add_argument("--format", choices=("plan", "shell", "json"), default="plan")
    args = parser.parse_args(argv)
    try:
        plan = build_plan(load_agency_topics(args.registry))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    render = {"plan": render_plan, "shell": render_shell, "json": render_json}[args.format]
    sys.stdout.write(render(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
