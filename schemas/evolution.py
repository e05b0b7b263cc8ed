"""Schema evolution rules: every published version stays readable, and published versions never change.

Two independent checks that the newest version of a topic (the reader) can read data written
with every older version (backward compatibility, transitively):

* :func:`resolution_problems` applies the Avro specification's schema-resolution rules
  (fields matched by name or reader alias; new fields need defaults; numeric promotions
  int→long→float→double and string↔bytes; enum symbols; unions; named types keep their name)
  plus two semantic rules Avro itself ignores: a timestamp or decimal must keep its logical type
  and scale, since the same bytes would otherwise mean another instant or amount.
* :func:`empirical_problems` writes random records with each older schema and decodes them
  with the current one through fastavro's resolver, comparing the fields they share.

The lock file (``schemas/published.json``) pins the canonical-form fingerprint (the identity
single-object encoding puts on the wire) and a content hash of every published version, so
editing or deleting a published file fails :func:`check`.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import SchemaParseException
from fastavro.utils import generate_many

from schemas import contracts
from schemas.contracts import SchemaVersion

NAMESPACE = "pk.gov.backbone"
DEFAULT_LOCK = Path(__file__).parent / "published.json"
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}
_LOCK_NOTE = (
    "Fingerprints (CRC-64-AVRO of the parsing canonical form, as on the wire) and content hashes of "
    "every published schema version. Published versions are immutable: add a new version instead of "
    "editing one. Updated only by `backbone schemas check --write-lock`, which adds new versions."
)


@dataclass(frozen=True)
class Problem:
    """One reason the check fails, naming the topic, the version(s) and the field."""

    topic: str
    version: int
    message: str
    field: str = ""
    writer_version: int | None = None

    def __str__(self) -> str:
        where = f"field {self.field}: " if self.field else ""
        if self.writer_version is not None:
            return (
                f"{self.topic}: v{self.version} cannot read data written with v{self.writer_version}: "
                f"{where}{self.message}"
            )
        return f"{self.topic} v{self.version}: {where}{self.message}"


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    unlocked: list[SchemaVersion] = field(default_factory=list)  # versions on disk but not in the lock
    checked: int = 0  # (reader, writer) pairs checked

    @property
    def ok(self) -> bool:
        return not self.problems


# -- loading ---------------------------------------------------------------------------------


class SchemaLoadError(ValueError):
    """A ``.avsc`` file is not valid JSON or not a valid Avro schema; the message names the file."""


def load_versions(avro_dir: Path) -> dict[str, tuple[SchemaVersion, ...]]:
    """Every topic's versions read fresh from ``avro_dir`` (no cache: the check must see edits)."""
    loader = contracts.all_versions.__wrapped__  # the uncached loader behind contracts' cache
    try:
        return loader(avro_dir)
    except (ValueError, KeyError, TypeError, SchemaParseException) as exc:
        for path in sorted(avro_dir.glob("*/v*.avsc")):
            try:
                fastavro.parse_schema(json.loads(path.read_text()), named_schemas={})
            except (ValueError, KeyError, TypeError, SchemaParseException) as file_exc:
                raise SchemaLoadError(f"{path}: {type(file_exc).__name__}: {file_exc}") from file_exc
        raise SchemaLoadError(f"{avro_dir}: {type(exc).__name__}: {exc}") from exc


def content_hash(sv: SchemaVersion) -> str:
    """SHA-256 of the schema JSON with sorted keys: any edit (docs, defaults, aliases) changes it."""
    return hashlib.sha256(json.dumps(sv.schema, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# -- Avro resolution rules -------------------------------------------------------------------


def _named_types(schema: Any, namespace: str = "") -> dict[str, Any]:
    """Every named type in ``schema`` by full name and by short name."""
    found: dict[str, Any] = {}

    def walk(s: Any, ns: str) -> None:
        if isinstance(s, list):
            for member in s:
                walk(member, ns)
        elif isinstance(s, dict):
            kind = s.get("type")
            if kind in ("record", "error", "enum", "fixed"):
                name = s["name"]
                ns = name.rsplit(".", 1)[0] if "." in name else s.get("namespace", ns)
                full = name if "." in name else f"{ns}.{name}".lstrip(".")
                found[full] = s
                found.setdefault(name.rsplit(".", 1)[-1], s)
                for f in s.get("fields", []):
                    walk(f["type"], ns)
            elif kind in ("array", "map"):
                walk(s.get("items", s.get("values")), ns)
            elif isinstance(kind, dict | list):
                walk(kind, ns)

    walk(schema, namespace)
    return found


class _Resolver:
    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader_names = _named_types(reader)
        self.writer_names = _named_types(writer)
        self.seen: set[tuple[str, str]] = set()

    def _resolve(self, s: Any, names: dict[str, Any]) -> Any:
        while isinstance(s, str) and s not in _PRIMITIVES and s in names:
            s = names[s]
        while isinstance(s, dict) and isinstance(s.get("type"), dict | list):
            s = s["type"]
        return s

    def match(self, reader: Any, writer: Any, path: str) -> Iterator[tuple[str, str]]:
        r = self._resolve(reader, self.reader_names)
        w = self._resolve(writer, self.writer_names)
        if isinstance(w, list):
            for branch in w:
                if isinstance(r, list):
                    if not any(not list(self.match(rb, branch, path)) for rb in r):
                        yield path, f"the reader's union has no branch for the writer's {_kind(branch)}"
                else:
                    yield from self.match(r, branch, path)
            return
        if isinstance(r, list):
            if not any(not list(self.match(rb, w, path)) for rb in r):
                yield path, f"the reader's union has no branch for the writer's {_kind(w)}"
            return
        rk, wk = _kind(r), _kind(w)
        if rk != wk:
            if rk in _PROMOTIONS.get(wk, ()) and not _logical(w):
                return
            yield path, f"type changed from {wk} to {rk}"
            return
        yield from self._logical_types(r, w, path)
        if rk in ("record", "error"):
            yield from self._records(r, w, path)
        elif rk == "enum":
            yield from self._enums(r, w, path)
        elif rk == "fixed":
            if not _same_name(r, w):
                yield path, f"fixed type renamed from {w['name']} to {r['name']}"
            elif r["size"] != w["size"]:
                yield path, f"fixed size changed from {w['size']} to {r['size']}"
        elif rk == "array":
            yield from self.match(r["items"], w["items"], f"{path}[]")
        elif rk == "map":
            yield from self.match(r["values"], w["values"], f"{path}{{}}")

    def _records(self, r: dict[str, Any], w: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
        if not _same_name(r, w):
            yield path or r["name"], f"record renamed from {w['name']} to {r['name']} without an alias"
            return
        key = (r["name"], w["name"])
        if key in self.seen:  # recursive type already being checked
            return
        self.seen.add(key)
        writer_fields = {f["name"]: f for f in w["fields"]}
        for rf in r["fields"]:
            name = f"{path}.{rf['name']}" if path else rf["name"]
            wf = writer_fields.get(rf["name"]) or next(
                (writer_fields[a] for a in rf.get("aliases", []) if a in writer_fields), None
            )
            if wf is not None:
                yield from self.match(rf["type"], wf["type"], name)
            elif "default" not in rf:
                yield name, "new field has no default, so older records cannot fill it"

    def _enums(self, r: dict[str, Any], w: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
        if not _same_name(r, w):
            yield path, f"enum renamed from {w['name']} to {r['name']} without an alias"
            return
        missing = [s for s in w["symbols"] if s not in r["symbols"]]
        if missing and "default" not in r:
            yield path, f"enum symbol(s) {', '.join(missing)} removed; older records may hold them"

    def _logical_types(self, r: Any, w: Any, path: str) -> Iterator[tuple[str, str]]:
        rl, wl = _logical(r), _logical(w)
        meaningful = {"decimal", "timestamp-millis", "timestamp-micros", "date", "time-millis", "time-micros"}
        if rl != wl and (rl in meaningful or wl in meaningful):
            yield path, f"logical type changed from {wl or 'none'} to {rl or 'none'}"
        elif rl == "decimal":
            if r.get("scale", 0) != w.get("scale", 0):
                yield path, f"decimal scale changed from {w.get('scale', 0)} to {r.get('scale', 0)}"
            elif r.get("precision", 0) < w.get("precision", 0):
                yield path, f"decimal precision narrowed from {w['precision']} to {r['precision']}"


def _kind(s: Any) -> str:
    if isinstance(s, list):
        return "union"
    if isinstance(s, dict):
        kind = s.get("type")
        return kind if isinstance(kind, str) else _kind(kind)
    return str(s)


def _logical(s: Any) -> str | None:
    return s.get("logicalType") if isinstance(s, dict) else None


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _same_name(r: dict[str, Any], w: dict[str, Any]) -> bool:
    return _short(r["name"]) == _short(w["name"]) or _short(w["name"]) in {
        _short(a) for a in r.get("aliases", [])
    }


def resolution_problems(reader: dict[str, Any], writer: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, reason) for each way ``reader`` cannot resolve data written with ``writer``."""
    return list(_Resolver(reader, writer).match(reader, writer, ""))


# -- empirical check -------------------------------------------------------------------------


def empirical_problems(
    reader: SchemaVersion, writer: SchemaVersion, samples: int = 50, seed: int = 0
) -> list[str]:
    """Write ``samples`` random records with ``writer``, read them with ``reader``; describe failures."""
    state = random.getstate()
    random.seed(seed)
    try:
        records = list(generate_many(writer.parsed_raw, samples))
    finally:
        random.setstate(state)
    shared = [
        f["name"]
        for f in reader.schema["fields"]
        if any(wf["name"] == f["name"] and wf["type"] == f["type"] for wf in writer.schema["fields"])
    ]
    problems: list[str] = []
    for i, record in enumerate(records):
        buf = io.BytesIO()
        schemaless_writer(buf, writer.parsed_raw, record)
        buf.seek(0)
        try:
            decoded = schemaless_reader(buf, writer.parsed_raw, reader.parsed_raw)
        except Exception as exc:  # noqa: BLE001 - any resolver failure is the finding we report
            problems.append(f"sample {i} does not decode: {type(exc).__name__}: {exc}")
            break
        changed = [name for name in shared if decoded.get(name) != record.get(name)]  # type: ignore[union-attr]
        if changed:
            problems.append(f"sample {i} decodes with different values in {', '.join(changed)}")
            break
    return problems


# -- the check -------------------------------------------------------------------------------


def compatibility_problems(
    topic: str, versions: tuple[SchemaVersion, ...], samples: int = 50
) -> list[Problem]:
    """Problems reading each older version of ``topic`` with its newest version."""
    current = versions[-1]
    problems: list[Problem] = []
    for sv in versions:
        namespace = str(sv.schema.get("namespace", ""))
        if namespace != NAMESPACE and not namespace.startswith(NAMESPACE + "."):
            problems.append(
                Problem(topic, sv.version, f"namespace must be {NAMESPACE}(.*), not {namespace!r}")
            )
    for older in versions[:-1]:
        found = [
            Problem(topic, current.version, reason, path, older.version)
            for path, reason in resolution_problems(current.schema, older.schema)
        ]
        if not found:
            found = [
                Problem(topic, current.version, message, "", older.version)
                for message in empirical_problems(current, older, samples)
            ]
        problems.extend(found)
    return problems


def load_lock(lock_path: Path) -> dict[str, dict[str, dict[str, str]]]:
    if not lock_path.exists():
        return {}
    data = json.loads(lock_path.read_text())
    return data.get("topics", {})  # type: ignore[no-any-return]


def lock_entry(sv: SchemaVersion) -> dict[str, str]:
    return {"fingerprint": sv.fingerprint.hex(), "sha256": content_hash(sv), "file": sv.path.name}


def lock_problems(
    versions: dict[str, tuple[SchemaVersion, ...]], lock: dict[str, dict[str, dict[str, str]]]
) -> list[Problem]:
    """Published versions (in the lock) that were edited or deleted."""
    problems: list[Problem] = []
    for topic, pinned in sorted(lock.items()):
        on_disk = {sv.version: sv for sv in versions.get(topic, ())}
        for version_key, entry in sorted(pinned.items(), key=lambda kv: int(kv[0])):
            version = int(version_key)
            sv = on_disk.get(version)
            if sv is None:
                problems.append(
                    Problem(
                        topic,
                        version,
                        f"published version file v{version}.avsc was deleted; "
                        "every published version must stay in the repo so its data still decodes",
                    )
                )
            elif sv.fingerprint.hex() != entry["fingerprint"]:
                problems.append(
                    Problem(
                        topic,
                        version,
                        f"published version was edited: its wire fingerprint changed from "
                        f"{entry['fingerprint']} to {sv.fingerprint.hex()}, so data already written with it "
                        "no longer resolves; restore the file and add a new version instead",
                    )
                )
            elif content_hash(sv) != entry["sha256"]:
                problems.append(
                    Problem(
                        topic,
                        version,
                        "published version was edited (docs, defaults or aliases); "
                        "published versions are immutable: restore the file and add a new version instead",
                    )
                )
    return problems


def check(
    avro_dir: Path = contracts.AVRO_DIR, lock_path: Path = DEFAULT_LOCK, samples: int = 50
) -> CheckReport:
    """Lock integrity plus backward compatibility of every topic's newest version."""
    report = CheckReport()
    versions = load_versions(avro_dir)
    lock = load_lock(lock_path)
    report.problems.extend(lock_problems(versions, lock))
    for topic, topic_versions in sorted(versions.items()):
        report.problems.extend(compatibility_problems(topic, topic_versions, samples))
        report.checked += len(topic_versions) - 1
        pinned = lock.get(topic, {})
        report.unlocked.extend(sv for sv in topic_versions if str(sv.version) not in pinned)
    return report


def write_lock(avro_dir: Path, lock_path: Path, report: CheckReport) -> list[SchemaVersion]:
    """Add ``report.unlocked`` versions to the lock; refuses if the report has problems."""
    if report.problems:
        raise ValueError("refusing to lock versions while the check reports problems")
    lock = load_lock(lock_path)
    for sv in report.unlocked:
        lock.setdefault(sv.topic, {})[str(sv.version)] = lock_entry(sv)
    ordered = {t: dict(sorted(v.items(), key=lambda kv: int(kv[0]))) for t, v in sorted(lock.items())}
    lock_path.write_text(json.dumps({"note": _LOCK_NOTE, "topics": ordered}, indent=2) + "\n")
    return list(report.unlocked)
