"""FHIR AuditEvents in: what an exchange already logged (IHE ATNA / BALP / MHD / XDS) as metering candidates.

A hospital system and the platform each log every provide, retrieve and query as an AuditEvent. This module
reads a Bundle of AuditEvents (or NDJSON), maps each successful event through the versioned rules table
(`audit_rules.toml`, extensible with an operator's file), and returns one candidate per exchange: kind,
institution code, counterparty code, category name, records, a content hash and a deterministic nonce.
Events it will not meter come back as skipped, each with a reason.

Nothing about the patient reaches a candidate: patient entities are neither counted nor hashed, and an event
whose hashed or signed inputs would carry a patient identifier is skipped rather than cleaned up.
"""

from __future__ import annotations

import base64
import importlib
import json
import re
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_utils import keccak

from medmeter.errors import InputError

RULES_FILE = Path(__file__).with_name("audit_rules.toml")
SCHEMA_VERSION = 1
KINDS = ("sync", "fetch", "exchange")
MAX_RECORDS = 2**32 - 1  # the signed field is a uint32
SUCCESS_OUTCOME = "0"

CONTENT_TAG = b"medmeter.audit-event.content.v1"
ENTITY_TAG = b"medmeter.audit-event.entity.v1"
NONCE_TAG = b"medmeter.audit-event.nonce.v1"
# Sequential nonces from the nonce book are small; setting the top bit keeps derived nonces disjoint from them.
DERIVED_NONCE_BIT = 1 << 255

# Skip reasons, stable strings a caller can summarise by.
FAILED_OUTCOME = "failed-outcome"
NO_RULE = "no-rule"
UNKNOWN_ORGANISATION = "unknown-organisation"
MALFORMED = "malformed"
PATIENT_IDENTIFIER = "patient-identifier"
PARTIES = "parties"
NO_RECORDS = "no-records"
NO_CATEGORY = "no-category"

_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
_QUERY_PARAM_PATIENT = re.compile(r"[?&](patient|subject|identifier|_id)=", re.IGNORECASE)
_SHORTEST_SUBSTRING_CHECK = 4  # shorter patient ids are compared whole, or every "1" would match


# --- the category and institution adapters ---------------------------------------------------------------


@dataclass(frozen=True)
class CategoryTable:
    """The category names the ledger knows, in id order, and which FHIR resource types fall in each."""

    names: tuple[str, ...]
    by_resource_type: Mapping[str, str]

    def __contains__(self, name: object) -> bool:
        return name in self.names


def default_category_table() -> CategoryTable:
    """Read medmeter's categories at call time, so the package's move of `categories` cannot break this."""
    for module_name in ("medmeter.intake.categories", "medmeter.categories"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        categories = module.CATEGORIES
        return CategoryTable(
            tuple(c.name for c in categories),
            {rt: c.name for c in categories for rt in c.fhir_resource_types},
        )
    raise InputError("medmeter's category table cannot be found: pass the categories to the reader explicitly.")


def resolve_category_table(categories: CategoryTable | Iterable[str] | None) -> CategoryTable:
    if categories is None:
        return default_category_table()
    if isinstance(categories, CategoryTable):
        return categories
    return CategoryTable(tuple(categories), {})


# --- the rules table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    type: frozenset[str]
    subtype: frozenset[str]
    action: frozenset[str]
    requester: tuple[str, ...]
    records: tuple[str | int, ...]
    category: tuple[str, ...]


@dataclass(frozen=True)
class AuditRules:
    rules_version: str
    platform_identifiers: frozenset[str]
    organisation_systems: frozenset[str]
    patient_roles: frozenset[str]
    patient_types: frozenset[str]
    uncounted_roles: frozenset[str]
    correlation_types: frozenset[str]
    correlation_roles: frozenset[str]
    dedupe_window_seconds: float
    rules: tuple[Rule, ...]
    sources: tuple[str, ...] = ()


def load_rules(override: Path | str | None = None) -> AuditRules:
    """The shipped table, with an operator's file merged over it.

    Settings merge key by key; a rule whose `name` is in both replaces the shipped one in place, and new
    rules go before the shipped ones so an operator's rule wins over a shipped one that would also match.
    """
    base = _read_toml(RULES_FILE)
    sources = [str(RULES_FILE)]
    if override is not None:
        extra = _read_toml(Path(override))
        base = _merge(base, extra, Path(override))
        sources.append(str(override))
    return _build_rules(base, tuple(sources))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise InputError(f"audit rules file {path} does not exist: check the --rules path.") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"audit rules file {path} is not valid TOML ({exc}): fix it and run again.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"audit rules file {path} cannot be read ({exc}): give a readable TOML file.") from None


def _merge(base: dict[str, Any], extra: dict[str, Any], where: Path) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if key == "rules":
            if not isinstance(value, list):
                raise InputError(f"{where}: `rules` must be an array of tables ([[rules]]): fix the file.")
            shipped = {r.get("name"): i for i, r in enumerate(base.get("rules", []))}
            rules = list(base.get("rules", []))
            added = []
            for rule in value:
                name = rule.get("name") if isinstance(rule, dict) else None
                if name in shipped:
                    rules[shipped[name]] = rule
                else:
                    added.append(rule)
            merged["rules"] = added + rules
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = {**base[key], **value}
        else:
            merged[key] = value
    return merged


def _build_rules(doc: dict[str, Any], sources: tuple[str, ...]) -> AuditRules:
    where = " + ".join(sources)
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise InputError(
            f"{where}: schema_version {doc.get('schema_version')!r} is not {SCHEMA_VERSION}: "
            "write the rules in the schema docs/audit-events.md describes."
        )

    def strings(table: str, key: str) -> frozenset[str]:
        value = doc.get(table, {}).get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{where}: [{table}] {key} must be a list of strings: fix the rules file.")
        return frozenset(value)

    window = doc.get("dedupe", {}).get("window_seconds", 5)
    if isinstance(window, bool) or not isinstance(window, int | float) or not 0 <= window <= 3600:
        raise InputError(f"{where}: [dedupe] window_seconds must be a number from 0 to 3600: fix the rules file.")
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list) or not raw_rules:
        raise InputError(f"{where}: no [[rules]] are defined: add at least one rule.")
    rules = tuple(_build_rule(raw, i, where) for i, raw in enumerate(raw_rules))
    names = Counter(r.name for r in rules)
    if dupes := [n for n, c in names.items() if c > 1]:
        raise InputError(f"{where}: rule names {dupes} are used twice: give each rule its own name.")
    return AuditRules(
        rules_version=str(doc.get("rules_version", "unversioned")),
        platform_identifiers=strings("platform", "identifiers"),
        organisation_systems=strings("organisations", "identifier_systems"),
        patient_roles=strings("entities", "patient_roles"),
        patient_types=strings("entities", "patient_types"),
        uncounted_roles=strings("entities", "uncounted_roles"),
        correlation_types=strings("entities", "correlation_types"),
        correlation_roles=strings("entities", "correlation_roles"),
        dedupe_window_seconds=float(window),
        rules=rules,
        sources=sources,
    )


def _build_rule(raw: Any, index: int, where: str) -> Rule:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise InputError(f"{where}: rule #{index + 1} has no `name`: give every [[rules]] a name.")
    name = raw["name"]

    def listed(key: str, allow_int: bool = False) -> tuple[Any, ...]:
        value = raw.get(key, [])
        if isinstance(value, str | int) and not isinstance(value, bool):
            value = [value]
        ok = (str, int) if allow_int else (str,)
        if not isinstance(value, list) or not all(isinstance(v, ok) and not isinstance(v, bool) for v in value):
            raise InputError(f"{where}: rule {name!r}: `{key}` must be a list of strings: fix the rules file.")
        return tuple(value)

    kind = raw.get("kind")
    if kind not in KINDS:
        raise InputError(f"{where}: rule {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}: fix it.")
    type_, subtype = listed("type"), listed("subtype")
    if not type_ and not subtype:
        raise InputError(f"{where}: rule {name!r} names no `type` or `subtype`: it would match every event.")
    for code in (*type_, *subtype, *listed("requester")):
        if code != "requestor" and "|" not in code:
            raise InputError(f"{where}: rule {name!r}: {code!r} is not written 'system|code': fix the rules file.")
    records = listed("records", allow_int=True)
    for spec in records:
        if isinstance(spec, int):
            if not 0 < spec <= MAX_RECORDS:
                raise InputError(f"{where}: rule {name!r}: a fixed record count must be 1 to {MAX_RECORDS}.")
        elif spec != "entities" and not spec.startswith("detail:"):
            raise InputError(
                f"{where}: rule {name!r}: records {spec!r} is not 'entities', 'detail:NAME' or a number: fix it."
            )
    if not records:
        raise InputError(f"{where}: rule {name!r} has no `records`: say how to count the event's records.")
    category = listed("category")
    if not category:
        raise InputError(f"{where}: rule {name!r} has no `category`: give 'resource-type' or a category name.")
    return Rule(
        name, kind, frozenset(type_), frozenset(subtype), frozenset(listed("action")), listed("requester"),
        records, category,
    )  # fmt: skip


# --- results --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeteringCandidate:
    """One interaction to sign. Only kind, institution, counterparty, category, records, data_hash and
    nonce are signed; `preimage` is the exact text `data_hash` is the keccak of, kept for audit."""

    kind: str
    institution: str
    counterparty: str | None
    category: str
    records: int
    data_hash: str
    nonce: int
    rule: str
    source: str
    event_ids: tuple[str, ...]
    preimage: str = field(repr=False)

    def signed_fields(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "institution": self.institution,
            "counterparty": self.counterparty,
            "category": self.category,
            "records": self.records,
            "data_hash": self.data_hash,
            "nonce": self.nonce,
        }


@dataclass(frozen=True)
class SkippedEvent:
    source: str  # file#entry or file:line
    event_id: str | None
    reason: str  # one of the reason constants above
    detail: str  # one sentence for the operator


@dataclass(frozen=True)
class DuplicateCopy:
    source: str
    event_id: str | None
    metered_as: str  # the `source` of the copy that was metered


@dataclass
class AuditIntake:
    rules_version: str
    candidates: list[MeteringCandidate]
    skipped: list[SkippedEvent]
    duplicates: list[DuplicateCopy]

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))


# --- reading --------------------------------------------------------------------------------------------


def read_audit_events(
    path: Path | str,
    *,
    institutions: Mapping[str, str],
    categories: CategoryTable | Iterable[str] | None = None,
    rules: AuditRules | None = None,
) -> AuditIntake:
    """Read a Bundle of AuditEvents or NDJSON file. `institutions` maps registered institution codes to
    addresses (only membership is used here); `categories` defaults to medmeter's table."""
    path = Path(path)
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc.strerror or exc}): check the path.") from None
    return parse_audit_events(payload, str(path), institutions=institutions, categories=categories, rules=rules)


def parse_audit_events(
    payload: bytes,
    source: str,
    *,
    institutions: Mapping[str, str],
    categories: CategoryTable | Iterable[str] | None = None,
    rules: AuditRules | None = None,
) -> AuditIntake:
    rules = rules if rules is not None else load_rules()
    table = resolve_category_table(categories)
    for rule in rules.rules:
        for spec in rule.category:
            if spec != "resource-type" and spec not in table:
                raise InputError(
                    f"audit rule {rule.name!r} names category {spec!r}, which the ledger does not know: "
                    f"use one of {', '.join(table.names)} or 'resource-type'."
                )
    skipped: list[SkippedEvent] = []
    parsed: list[_Event] = []
    for where, raw in _resources(payload, source, skipped):
        event = _parse_event(raw, where, skipped)
        if event is not None:
            parsed.append(event)
    mapped: list[_Mapped] = []
    for event in parsed:
        result = _map_event(event, rules, institutions, table)
        if isinstance(result, SkippedEvent):
            skipped.append(result)
        else:
            mapped.append(result)
    candidates, duplicates = _dedupe(mapped, rules.dedupe_window_seconds)
    return AuditIntake(rules.rules_version, candidates, skipped, duplicates)


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _resources(payload: bytes, source: str, skipped: list[SkippedEvent]) -> Iterable[tuple[str, Any]]:
    if not payload.strip():
        raise InputError(f"{source} is empty: give a Bundle of AuditEvents or an NDJSON file of them.")
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{source} is not UTF-8 text: give a FHIR JSON Bundle or NDJSON file.") from None
    try:
        document = _load_json(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        kind = document.get("resourceType")
        if kind == "AuditEvent":
            return [(f"{source}#1", document)]
        if kind != "Bundle":
            raise InputError(f"{source} holds a {kind or 'JSON object'}, not a Bundle of AuditEvents or NDJSON.")
        entries = document.get("entry") or []
        if not isinstance(entries, list):
            raise InputError(f"{source}: Bundle.entry is not a list: give a valid FHIR Bundle.")
        found = [
            (f"{source}#entry[{i}]", e.get("resource") if isinstance(e, dict) else None) for i, e in enumerate(entries)
        ]
        if not found:
            raise InputError(f"{source} is a Bundle with no entries: there are no AuditEvents to meter.")
        return found
    if document is not None:
        raise InputError(f"{source} holds JSON that is not a FHIR resource: give a Bundle of AuditEvents or NDJSON.")
    lines: list[tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            lines.append((where, _load_json(line)))
        except ValueError as exc:
            skipped.append(SkippedEvent(where, None, MALFORMED, f"line {number} is not JSON ({exc})."))
    if not lines:
        raise InputError(f"{source} is neither a FHIR JSON Bundle nor NDJSON: give AuditEvents as one or the other.")
    return lines


@dataclass(frozen=True)
class _Org:
    code: str
    system: str
    requestor: bool
    types: frozenset[str]


@dataclass(frozen=True)
class _Entity:
    key: str  # what the entity names: a reference, or "identifier:" system|value
    resource_type: str | None
    role: str | None
    type: str | None
    details: Mapping[str, str]
    query_resource_type: str | None
    identifier_values: frozenset[str]


@dataclass(frozen=True)
class _Event:
    where: str
    id: str | None
    outcome: str | None
    type: str
    subtypes: frozenset[str]
    action: str | None
    recorded: datetime
    observer: str
    orgs: tuple[_Org, ...]
    entities: tuple[_Entity, ...]
    patient_ids: frozenset[str]


def _coding(coding: Any) -> str | None:
    if coding is None or coding.code is None:
        return None
    return f"{coding.system or ''}|{coding.code}"


def _codings(concept: Any) -> set[str]:
    if concept is None:
        return set()
    return {c for coding in concept.coding or [] if (c := _coding(coding))}


def _resource_type_of(reference: str) -> str | None:
    path = reference.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    parts = path.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and _RESOURCE_TYPE.fullmatch(parts[-2]):
        return parts[-2]
    return None


def _parse_event(raw: Any, where: str, skipped: list[SkippedEvent]) -> _Event | None:
    from fhir.resources.R4B.auditevent import AuditEvent  # lazy: large import; R4B's AuditEvent is R4's
    from pydantic import ValidationError

    event_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    if not isinstance(raw, dict) or raw.get("resourceType") != "AuditEvent":
        found = raw.get("resourceType") if isinstance(raw, dict) else type(raw).__name__
        skipped.append(SkippedEvent(where, event_id, MALFORMED, f"the resource is a {found}, not an AuditEvent."))
        return None
    try:
        model = AuditEvent.model_validate(raw)
    except (ValidationError, ValueError, TypeError) as exc:
        detail = str(exc).splitlines()
        if isinstance(exc, ValidationError) and exc.errors():
            first = exc.errors()[0]
            detail = [f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"]
        skipped.append(SkippedEvent(where, event_id, MALFORMED, f"not a valid R4 AuditEvent ({detail[0]})."))
        return None
    event_type = _coding(model.type)
    if model.recorded is None or event_type is None:
        skipped.append(SkippedEvent(where, event_id, MALFORMED, "the AuditEvent has no type code or recorded time."))
        return None
    recorded = model.recorded if model.recorded.tzinfo else model.recorded.replace(tzinfo=UTC)

    patient_ids: set[str] = set()
    orgs: list[_Org] = []
    for agent in model.agent:
        who = agent.who
        if who is None:
            continue
        if who.reference and _resource_type_of(who.reference) == "Patient":
            patient_ids |= _reference_ids(who.reference)
            if who.identifier and who.identifier.value:
                patient_ids.add(who.identifier.value)
            continue
        if who.identifier is not None and who.identifier.value:
            orgs.append(
                _Org(
                    who.identifier.value,
                    who.identifier.system or "",
                    bool(agent.requestor),
                    frozenset(_codings(agent.type) | {c for role in agent.role or [] for c in _codings(role)}),
                )
            )
    entities: list[_Entity] = []
    for entity in model.entity or []:
        what = entity.what
        reference = what.reference if what is not None else None
        identifier = what.identifier if what is not None else None
        role, etype = _coding(entity.role), _coding(entity.type)
        resource_type = _resource_type_of(reference) if reference else None
        if etype and etype.startswith(_RESOURCE_TYPES_SYSTEM + "|"):
            resource_type = resource_type or etype.split("|", 1)[1]
        if resource_type == "Patient":
            if reference:
                patient_ids |= _reference_ids(reference)
            if identifier is not None and identifier.value:
                patient_ids.add(identifier.value)
            entities.append(_Entity("", "Patient", role, etype, {}, None, frozenset()))
            continue
        if reference:
            key = reference
        elif identifier is not None and identifier.value:
            key = f"identifier:{identifier.system or ''}|{identifier.value}"
        else:
            key = ""
        details = {d.type: d.valueString for d in entity.detail or [] if d.type and d.valueString is not None}
        query_type = _query_resource_type(entity.query) if entity.query else None
        names = set() if identifier is None or not identifier.value else {identifier.value}
        entities.append(_Entity(key, resource_type, role, etype, details, query_type, frozenset(names)))
    observer = model.source.observer
    observer_key = (
        (observer.identifier.value if observer.identifier and observer.identifier.value else None)
        or observer.reference
        or observer.display
        or ""
    )
    return _Event(
        where, event_id, model.outcome, event_type, frozenset(c for s in model.subtype or [] if (c := _coding(s))),
        model.action, recorded.astimezone(UTC), observer_key, tuple(orgs), tuple(entities), frozenset(patient_ids),
    )  # fmt: skip


def _query_resource_type(query: bytes | str) -> str | None:
    # fhir.resources hands base64Binary over already decoded; a plain str is still base64.
    try:
        raw = query if isinstance(query, bytes) else base64.b64decode(query)
    except ValueError:
        return None
    text = raw.decode("utf-8", "replace")
    path = text.split("?", 1)[0].rstrip("/").split("/")[-1]
    return path if _RESOURCE_TYPE.fullmatch(path) else None


def _reference_ids(reference: str) -> set[str]:
    parts = [p for p in reference.split("?", 1)[0].split("/") if p]
    ids = {reference}
    if "Patient" in parts:
        index = parts.index("Patient")
        if index + 1 < len(parts):
            ids.add(parts[index + 1])
    return ids


# --- mapping --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mapped:
    event: _Event
    rule: Rule
    kind: str
    institution: str
    counterparty: str | None
    category: str
    records: int
    identity: str  # canonical JSON of what the client's and the server's copies share
    correlation: tuple[str, ...]
    preimage: str


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _entity_digest(key: str) -> str:
    return "0x" + keccak(ENTITY_TAG + key.encode()).hex()


def _is_patient_entity(entity: _Entity, rules: AuditRules) -> bool:
    return (
        entity.resource_type == "Patient"
        or (entity.role is not None and entity.role in rules.patient_roles)
        or (entity.type is not None and entity.type in rules.patient_types)
    )


def _map_event(
    event: _Event, rules: AuditRules, institutions: Mapping[str, str], table: CategoryTable
) -> _Mapped | SkippedEvent:
    def skip(reason: str, detail: str) -> SkippedEvent:
        return SkippedEvent(event.where, event.id, reason, detail)

    if event.outcome != SUCCESS_OUTCOME:
        found = "no outcome" if event.outcome is None else f"outcome {event.outcome}"
        return skip(FAILED_OUTCOME, f"the event records {found}, not success (0): only successful exchanges meter.")
    rule = next((r for r in rules.rules if _matches(r, event)), None)
    if rule is None:
        subtypes = ", ".join(sorted(event.subtypes)) or "none"
        return skip(NO_RULE, f"no audit rule matches type {event.type} (subtypes: {subtypes}): add one with --rules.")

    orgs = [o for o in event.orgs if not rules.organisation_systems or o.system in rules.organisation_systems]
    unknown = sorted({o.code for o in orgs if o.code not in institutions and o.code not in rules.platform_identifiers})
    if unknown:
        return skip(
            UNKNOWN_ORGANISATION,
            f"organisation {', '.join(unknown)} is neither a registered institution nor the platform: "
            "register it, or fix the identifier the gateway logs.",
        )
    platform = any(o.code in rules.platform_identifiers for o in orgs)
    members = sorted({o.code for o in orgs if o.code in institutions})
    parties = _parties(rule, orgs, members, platform)
    if isinstance(parties, str):
        return skip(PARTIES, parties)
    kind, institution, counterparty = parties

    patient = [e for e in event.entities if _is_patient_entity(e, rules)]
    patient_ids = set(event.patient_ids).union(*(e.identifier_values for e in patient))
    patient_ids |= {i for e in patient if e.key for i in _reference_ids(e.key)}
    data = [e for e in event.entities if e not in patient and e.key]
    correlation = tuple(
        sorted(
            e.key for e in data if (e.type in rules.correlation_types or e.role in rules.correlation_roles) and e.key
        )
    )
    counted = [
        e
        for e in data
        if e.role not in rules.uncounted_roles and e.type not in rules.correlation_types and e.key not in correlation
    ]
    leaking = [e.key for e in data if "?" in e.key and _QUERY_PARAM_PATIENT.search(e.key)]
    if leaking:
        return skip(PATIENT_IDENTIFIER, "an entity reference is a search that may name the patient: log the resources.")

    records = _records(rule, counted, event)
    if records is None:
        return skip(NO_RECORDS, f"rule {rule.name!r} finds no record count in the event: log its entities or a count.")
    category = _category(rule, counted, [e for e in event.entities if e not in patient], table)
    if category is None:
        types = sorted({e.resource_type or e.query_resource_type or "?" for e in data}) or ["none"]
        return skip(NO_CATEGORY, f"resource types {', '.join(types)} fall in no known category: extend the rule.")

    org_fields = sorted([o.system, o.code, o.requestor] for o in orgs)
    entity_digests = sorted({_entity_digest(e.key) for e in data})
    preimage = _canonical(
        {
            "v": CONTENT_TAG.decode(),
            "type": event.type,
            "subtype": sorted(event.subtypes),
            "action": event.action,
            "recorded": _instant(event.recorded),
            "organisations": org_fields,
            "entities": entity_digests,
        }
    )
    identity = _canonical(
        {
            "kind": kind,
            "institution": institution,
            "counterparty": counterparty,
            "subtype": sorted(event.subtypes),
            "organisations": sorted({o.code for o in orgs}),
            "entities": entity_digests,
        }
    )
    exposed = [
        preimage,
        identity,
        *correlation,
        event.observer,
        institution,
        counterparty or "",
        *(e.key for e in data),
    ]
    if _leaks(patient_ids, exposed):
        return skip(
            PATIENT_IDENTIFIER,
            "a patient identifier appears in a field medmeter would hash or sign: log the patient only in a "
            "patient entity.",
        )
    return _Mapped(event, rule, kind, institution, counterparty, category, records, identity, correlation, preimage)


def _leaks(patient_ids: set[str], exposed: Sequence[str]) -> bool:
    for pid in patient_ids:
        needle = pid.lower()
        for text in exposed:
            hay = text.lower()
            if (len(needle) >= _SHORTEST_SUBSTRING_CHECK and needle in hay) or needle == hay:
                return True
    return False


def _matches(rule: Rule, event: _Event) -> bool:
    if rule.type and event.type not in rule.type:
        return False
    if rule.subtype and not (rule.subtype & event.subtypes):
        return False
    return not (rule.action and event.action not in rule.action)


def _parties(rule: Rule, orgs: list[_Org], members: list[str], platform: bool) -> tuple[str, str, str | None] | str:
    if not members:
        return "no registered institution is among the event's agents: nothing to meter."
    if len(members) == 1:
        if rule.kind == "exchange":
            return f"rule {rule.name!r} is an exchange but only {members[0]} is a party: log both institutions."
        if not platform:
            return f"the platform is not among the agents of {members[0]}'s event: it did not pass through it."
        return rule.kind, members[0], None
    if len(members) > 2 or rule.kind == "sync":
        return f"institutions {', '.join(members)} are all parties to a {rule.kind}: medmeter cannot tell who pays."
    # Two institutions: the requester consumed what the other provided, through the platform.
    for how in rule.requester or ("requestor",):
        chosen = {
            o.code
            for o in orgs
            if o.code in members and ((how == "requestor" and o.requestor) or (how != "requestor" and how in o.types))
        }
        if len(chosen) == 1:
            consumer = chosen.pop()
            provider = next(m for m in members if m != consumer)
            return "exchange", consumer, provider
    return f"cannot tell which of {', '.join(members)} requested the data: mark its agent requestor=true."


def _records(rule: Rule, counted: list[_Entity], event: _Event) -> int | None:
    for spec in rule.records:
        if isinstance(spec, int):
            return spec
        if spec == "entities":
            count = len({e.key for e in counted})
        else:
            name = spec.split(":", 1)[1]
            values = [e.details[name] for e in event.entities if name in e.details]
            count = sum(int(v) for v in values if v.strip().isdigit() and len(v.strip()) < 11)
        if 0 < count <= MAX_RECORDS:
            return count
    return None


def _category(rule: Rule, counted: list[_Entity], others: list[_Entity], table: CategoryTable) -> str | None:
    for spec in rule.category:
        if spec != "resource-type":
            return spec
        types = [e.resource_type for e in counted if e.resource_type] or [
            e.query_resource_type for e in others if e.query_resource_type
        ]
        found = Counter(name for rt in types if (name := table.by_resource_type.get(rt)))
        if found:
            # Most records decide; a tie goes to the category listed first, so the choice never depends on order.
            best = max(found.values())
            return next(n for n in table.names if found.get(n) == best)
    return None


# --- dedupe and nonces ----------------------------------------------------------------------------------


def _dedupe(mapped: list[_Mapped], window: float) -> tuple[list[MeteringCandidate], list[DuplicateCopy]]:
    """One candidate per exchange, however many observers logged it.

    Copies sharing a correlation identifier (BALP X-Request-Id / traceparent, an MHD submission set) and the
    same identity are one event, whatever their times. Without one, copies with the same identity from
    *different* observers recorded within `window` seconds are one event; two events from one observer never
    merge. The copy recorded first (then by observer, then id) is metered, so the choice ignores file order.
    """
    ordered = sorted(mapped, key=lambda m: (m.event.recorded, m.event.observer, m.event.id or "", m.event.where))
    groups: list[list[_Mapped]] = []
    correlated: dict[tuple[str, tuple[str, ...]], list[_Mapped]] = {}
    open_groups: dict[str, list[list[_Mapped]]] = {}
    for item in ordered:
        if item.correlation:
            key = (item.identity, item.correlation)
            if key in correlated:
                correlated[key].append(item)
            else:
                correlated[key] = [item]
                groups.append(correlated[key])
            continue
        for group in open_groups.get(item.identity, []):
            first = group[0]
            close = (item.event.recorded - first.event.recorded).total_seconds() <= window
            if close and all(g.event.observer != item.event.observer for g in group):
                group.append(item)
                break
        else:
            group = [item]
            open_groups.setdefault(item.identity, []).append(group)
            groups.append(group)
    candidates: list[MeteringCandidate] = []
    duplicates: list[DuplicateCopy] = []
    for group in groups:
        kept = group[0]
        candidates.append(_candidate(kept, tuple(g.event.id or g.event.where for g in group)))
        duplicates += [DuplicateCopy(g.event.where, g.event.id, kept.event.where) for g in group[1:]]
    return candidates, duplicates


def derive_nonce(*parts: str) -> int:
    """keccak256 of a domain tag and the parts (canonical JSON), with the top bit set, as a uint256."""
    digest = keccak(NONCE_TAG + _canonical(list(parts)).encode())
    return int.from_bytes(digest, "big") | DERIVED_NONCE_BIT


def _candidate(item: _Mapped, event_ids: tuple[str, ...]) -> MeteringCandidate:
    if item.correlation:
        nonce = derive_nonce("correlated", item.identity, *item.correlation)
    else:
        nonce = derive_nonce("observed", item.identity, _instant(item.event.recorded), item.event.observer)
    data_hash = "0x" + keccak(item.preimage.encode()).hex()
    return MeteringCandidate(
        kind=item.kind,
        institution=item.institution,
        counterparty=item.counterparty,
        category=item.category,
        records=item.records,
        data_hash=data_hash,
        nonce=nonce,
        rule=item.rule.name,
        source=item.event.where,
        event_ids=event_ids,
        preimage=item.preimage,
    )


def summarise(intake: AuditIntake, echo: Callable[[str], Any] = print) -> None:
    """One line per outcome for a CLI: how many candidates, duplicates, and skipped events by reason."""
    echo(
        f"{len(intake.candidates)} interaction(s) to sign, {len(intake.duplicates)} duplicate cop(ies) merged "
        f"(rules {intake.rules_version})."
    )
    for reason, count in intake.skipped_by_reason().items():
        echo(f"skipped {count} event(s): {reason}")
