"""Schema evolution: data written with every published version decodes with the current reader, and
``backbone schemas check`` fails, naming topic, version and field, on an incompatible change."""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer
from fastavro.utils import generate_many
from typer.testing import CliRunner

from backbone.cli import app
from schemas import contracts, evolution
from schemas.codec import Codec

runner = CliRunner()
CUSTOMS_DIR = f"avro/{contracts.CUSTOMS}"


def run_check(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["schemas", "check", *args])
    return result.exit_code, result.output


def test_repo_contracts_pass_the_check() -> None:
    code, output = run_check("--samples", "20")
    assert code == 0, output
    assert "readable by the newest" in output


def test_every_published_version_is_pinned_in_the_lock_for_agency_topics() -> None:
    lock = json.loads((Path(contracts.__file__).parent / "published.json").read_text())["topics"]
    for topic in contracts.INPUT_TOPICS:
        on_disk = {str(sv.version): sv.fingerprint.hex() for sv in contracts.all_versions()[topic]}
        assert {v: e["fingerprint"] for v, e in lock[topic].items()} == on_disk


def test_data_written_with_every_older_version_decodes_with_the_current_reader() -> None:
    older_versions = [(t, sv) for t, vs in contracts.all_versions().items() for sv in vs[:-1]]
    assert older_versions, "no topic has an older version: this test would prove nothing"
    random.seed(3)
    codec = Codec()
    for topic, older in older_versions:
        current = contracts.current(topic)
        new_fields = {
            f["name"]: f["default"] for f in current.schema["fields"] if f["name"] not in older.field_names
        }
        for record in generate_many(older.parsed_raw, 200):
            body = _write(older.parsed_raw, record)
            decoded = codec.decode(topic, b"\xc3\x01" + older.fingerprint + body)
            money = set(older.money_fields)
            expected = {
                k: (int.from_bytes(v, "big", signed=True) if k in money else v) for k, v in record.items()
            }
            assert decoded == {**expected, **new_fields}


def _write(schema: Any, record: dict[str, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    schemaless_writer(buf, schema, record)
    return buf.getvalue()


# -- changes made in a temporary copy of the contracts ----------------------------------------


@pytest.fixture
def contracts_copy(tmp_path: Path) -> Path:
    """A copy of schemas/avro and schemas/published.json; returns the copy's schemas folder."""
    root = tmp_path / "schemas"
    shutil.copytree(contracts.AVRO_DIR, root / "avro")
    shutil.copy(contracts.AVRO_DIR.parent / "published.json", root / "published.json")
    return root


def current_schema(root: Path) -> dict[str, Any]:
    return json.loads((root / CUSTOMS_DIR / "v2.avsc").read_text())


def add_version(root: Path, schema: dict[str, Any], version: int = 3) -> None:
    (root / CUSTOMS_DIR / f"v{version}.avsc").write_text(json.dumps(schema, indent=2))


def check_copy(root: Path, *args: str) -> tuple[int, str]:
    return run_check("--avro-dir", str(root / "avro"), "--samples", "30", *args)


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def test_the_unchanged_copy_passes(contracts_copy: Path) -> None:
    code, output = check_copy(contracts_copy)
    assert code == 0, output


def test_new_field_without_default_fails_naming_topic_version_and_field(contracts_copy: Path) -> None:
    schema = current_schema(contracts_copy)
    schema["fields"].append({"name": "inspector_id", "type": "string"})
    add_version(contracts_copy, schema)
    code, output = check_copy(contracts_copy)
    assert code == 1
    assert "customs.clearances.v1: v3 cannot read data written with v1: field inspector_id" in output
    assert "field inspector_id: new field has no default" in output
    assert "written with v2: field inspector_id" in output


def test_removed_enum_symbol_fails(contracts_copy: Path) -> None:
    schema = current_schema(contracts_copy)
    field(schema, "status")["type"]["symbols"].remove("HELD")
    add_version(contracts_copy, schema)
    code, output = check_copy(contracts_copy)
    assert code == 1
    assert "v3 cannot read data written with v2: field status: enum symbol(s) HELD removed" in output


def test_changed_type_fails(contracts_copy: Path) -> None:
    schema = current_schema(contracts_copy)
    field(schema, "hs_code")["type"] = "int"
    add_version(contracts_copy, schema)
    code, output = check_copy(contracts_copy)
    assert code == 1
    assert "field hs_code: type changed from string to int" in output


def test_changed_money_scale_fails_although_avro_itself_would_resolve_it(contracts_copy: Path) -> None:
    schema = current_schema(contracts_copy)
    field(schema, "declared_value_pkr")["type"]["scale"] = 3
    add_version(contracts_copy, schema)
    code, output = check_copy(contracts_copy)
    assert code == 1
    assert "field declared_value_pkr: decimal scale changed from 2 to 3" in output


def test_narrowed_array_items_fail_with_a_path_into_the_array(contracts_copy: Path) -> None:
    schema = current_schema(contracts_copy)
    field(schema, "container_ids")["type"]["items"] = "int"
    add_version(contracts_copy, schema)
    code, output = check_copy(contracts_copy)
    assert code == 1
    assert "field container_ids[]: type changed from string to int" in output


def test_edited_published_version_fails(contracts_copy: Path) -> None:
    path = contracts_copy / CUSTOMS_DIR / "v1.avsc"
    schema = json.loads(path.read_text())
    field(schema, "hs_code")["doc"] = "edited after publication"
    path.write_text(json.dumps(schema))
    code, output = check_copy(contracts_copy)
    assert code == 1
    assert "customs.clearances.v1 v1: published version was edited (docs, defaults or aliases)" in output

    field(schema, "exporter_id")["type"] = ["null", "bytes"]  # also changes the wire identity
    path.write_text(json.dumps(schema))
    code, output = check_copy(contracts_copy)
    assert code == 1
    assert "customs.clearances.v1 v1: published version was edited: its wire fingerprint changed" in output


def test_unparseable_schema_file_is_named(contracts_copy: Path) -> None:
    schema = current_schema(contracts_copy)
    field(schema, "hs_code")["default"] = None  # not a string: invalid Avro
    add_version(contracts_copy, schema)
    code, output = check_copy(contracts_copy)
    assert code == 2
    assert f"{contracts.CUSTOMS}/v3.avsc" in output and "must match schema type" in output


def test_deleted_published_version_fails(contracts_copy: Path) -> None:
    (contracts_copy / CUSTOMS_DIR / "v1.avsc").unlink()
    code, output = check_copy(contracts_copy)
    assert code == 1
    assert "customs.clearances.v1 v1: published version file v1.avsc was deleted" in output


def test_compatible_new_version_passes_and_write_lock_publishes_it(contracts_copy: Path) -> None:
    schema = current_schema(contracts_copy)
    schema["fields"].append({"name": "inspector_id", "type": ["null", "string"], "default": None})
    field(schema, "status")["type"]["symbols"].append("RELEASED")
    add_version(contracts_copy, schema)

    code, output = check_copy(contracts_copy)
    assert code == 0, output
    assert "customs.clearances.v1 v3 is not yet published" in output
    assert check_copy(contracts_copy, "--strict")[0] == 1

    code, output = check_copy(contracts_copy, "--write-lock")
    assert code == 0, output
    lock = json.loads((contracts_copy / "published.json").read_text())["topics"][contracts.CUSTOMS]
    assert set(lock) == {"1", "2", "3"}
    v3 = evolution.load_versions(contracts_copy / "avro")[contracts.CUSTOMS][-1]
    assert lock["3"]["fingerprint"] == v3.fingerprint.hex()
    code, output = check_copy(contracts_copy, "--strict")  # --write-lock pinned every unlocked version
    assert code == 0, output


def test_write_lock_refuses_an_incompatible_version(contracts_copy: Path) -> None:
    schema = current_schema(contracts_copy)
    schema["fields"].append({"name": "inspector_id", "type": "string"})
    add_version(contracts_copy, schema)
    before = (contracts_copy / "published.json").read_text()
    code, _ = check_copy(contracts_copy, "--write-lock")
    assert code == 1
    assert (contracts_copy / "published.json").read_text() == before


# -- the rules, one by one --------------------------------------------------------------------


def record(*fields: dict[str, Any], name: str = "R", aliases: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "record",
        "name": name,
        "namespace": "pk.gov.backbone",
        "fields": list(fields),
    }
    if aliases:
        schema["aliases"] = aliases
    return schema


@pytest.mark.parametrize(
    ("writer_type", "reader_type", "compatible"),
    [
        ("int", "long", True),
        ("int", "double", True),
        ("long", "float", True),
        ("float", "double", True),
        ("string", "bytes", True),
        ("bytes", "string", True),
        ("long", "int", False),
        ("double", "float", False),
        ("string", ["null", "string"], True),
        (["null", "string"], "string", False),
        (["null", "int"], ["null", "long"], True),
        (["null", "string", "int"], ["null", "string"], False),
        ({"type": "array", "items": "int"}, {"type": "array", "items": "long"}, True),
        ({"type": "map", "values": "long"}, {"type": "map", "values": "int"}, False),
        (
            {"type": "long", "logicalType": "timestamp-millis"},
            {"type": "long", "logicalType": "timestamp-micros"},
            False,
        ),
        ({"type": "string", "logicalType": "uuid"}, "string", True),
    ],
)
def test_resolution_rules(writer_type: Any, reader_type: Any, compatible: bool) -> None:
    writer = record({"name": "x", "type": writer_type})
    reader = record({"name": "x", "type": reader_type})
    problems = evolution.resolution_problems(reader, writer)
    assert (not problems) == compatible, problems
    if problems:
        assert problems[0][0].startswith("x")


def test_renames_need_aliases_and_enum_defaults_absorb_removed_symbols() -> None:
    writer = record({"name": "old_name", "type": "string"}, name="Before")
    reader = record({"name": "new_name", "type": "string", "aliases": ["old_name"]}, name="After")
    assert evolution.resolution_problems(reader, writer)[0][1].startswith("record renamed")
    reader["aliases"] = ["Before"]
    assert evolution.resolution_problems(reader, writer) == []
    enum_w = record({"name": "s", "type": {"type": "enum", "name": "S", "symbols": ["A", "B"]}})
    enum_r = copy.deepcopy(enum_w)
    enum_r["fields"][0]["type"]["symbols"] = ["A", "UNKNOWN"]
    assert evolution.resolution_problems(enum_r, enum_w)
    enum_r["fields"][0]["type"]["default"] = "UNKNOWN"
    assert evolution.resolution_problems(enum_r, enum_w) == []


def test_empirical_check_finds_what_the_resolver_rejects() -> None:
    base = contracts.all_versions()[contracts.CUSTOMS][0]
    broken_schema = copy.deepcopy(base.schema)
    broken_schema["fields"].append({"name": "inspector_id", "type": "string"})
    broken = _version(broken_schema, 9)
    assert evolution.empirical_problems(broken, base, samples=5)
    assert evolution.empirical_problems(contracts.current(contracts.CUSTOMS), base, samples=50) == []


def _version(schema: dict[str, Any], version: int) -> contracts.SchemaVersion:
    import fastavro

    parsed_raw = fastavro.parse_schema(contracts.strip_logical_types(schema), named_schemas={})
    return contracts.SchemaVersion(
        contracts.CUSTOMS, version, Path(f"v{version}.avsc"), schema, None, parsed_raw, "", b""
    )
