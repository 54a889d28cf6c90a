"""AuditEvents out: each recorded interaction as a patient-free FHIR R4 AuditEvent (IHE BALP minimal pattern).

The platform's audit record repository then holds the metering beside the exchange it metered: who took
part, the kind, category, records and units, and the ledger transaction (hash and log index) as an entity
anyone can look up on chain. Nothing here knows or carries a patient.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_utils import keccak

from medmeter.errors import InputError

ORG_SYSTEM = "urn:oid:2.16.156.10011.1.5"
PLATFORM_IDENTIFIER = "HIP-PLATFORM"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
KIND_SYSTEM = "urn:medmeter:interaction-kind"
LEDGER_TX_SYSTEM = "urn:medmeter:ledger-transaction"
REQUIRED_COLUMNS = (
    "kind",
    "counterparty_code",
    "category_name",
    "records",
    "units",
    "fee",
    "tx_hash",
    "log_index",
    "block_number",
    "data_hash",
    "nonce",
)
# The brief's names first, then the names `medmeter export` writes today.
CODE_COLUMNS = ("code", "institution_code")
TIME_COLUMNS = ("block_time", "block_timestamp")
FORMATS = ("bundle", "ndjson")


def audit_events(
    frame: Any,
    *,
    platform_identifier: str = PLATFORM_IDENTIFIER,
    organisation_system: str = ORG_SYSTEM,
    chain_id: int | None = None,
    recorded_fallback: datetime | None = None,
) -> list[dict[str, Any]]:
    """One AuditEvent (as FHIR JSON, validated) per row of an export frame (see `REQUIRED_COLUMNS`).

    `recorded` is the block's time when the frame has `block_time` (or `block_timestamp`); rows without one take
    `recorded_fallback` (default: now), since R4 makes `recorded` mandatory. `chain_id`, when given,
    scopes the transaction identifier so hashes from different chains cannot be confused."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if not any(c in frame.columns for c in CODE_COLUMNS):
        missing.append(" or ".join(CODE_COLUMNS))
    if missing:
        raise InputError(
            f"the interactions lack column(s) {', '.join(missing)}: pass the frame `medmeter export` wrote."
        )
    fallback = recorded_fallback or datetime.now(UTC)
    time_column = next((c for c in TIME_COLUMNS if c in frame.columns), None)
    code_column = next(c for c in CODE_COLUMNS if c in frame.columns)
    events = []
    for position, row in enumerate(frame.to_dict("records")):
        block_time = _moment(row.get(time_column)) if time_column else None
        row["code"] = row.get(code_column)
        events.append(_event(row, position, block_time or fallback, platform_identifier, organisation_system, chain_id))
    return [_validated(event) for event in events]


def write_audit_events(
    frame: Any,
    path: Path | str,
    *,
    fmt: str = "bundle",
    platform_identifier: str = PLATFORM_IDENTIFIER,
    organisation_system: str = ORG_SYSTEM,
    chain_id: int | None = None,
    recorded_fallback: datetime | None = None,
) -> int:
    """Write the AuditEvents as a collection Bundle or NDJSON; returns how many were written. The file is
    written beside and renamed into place, so a failure leaves any earlier file as it was."""
    if fmt not in FORMATS:
        raise InputError(f"format {fmt!r} is not one of {', '.join(FORMATS)}: choose bundle or ndjson.")
    events = audit_events(
        frame,
        platform_identifier=platform_identifier,
        organisation_system=organisation_system,
        chain_id=chain_id,
        recorded_fallback=recorded_fallback,
    )
    text = "".join(iter_ndjson(events)) if fmt == "ndjson" else json.dumps(bundle(events), indent=2) + "\n"
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise InputError(f"cannot write {path} ({exc.strerror or exc}): choose a folder you can write to.") from None
    return len(events)


def bundle(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A collection Bundle of the AuditEvents, validated as an R4 Bundle."""
    from fhir.resources.R4B.bundle import Bundle

    entries = [{"fullUrl": f"urn:uuid:{_uuid(event['id'])}", "resource": event} for event in events]
    document = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    Bundle.model_validate(document)
    return document


def iter_ndjson(events: Iterable[dict[str, Any]]) -> Iterator[str]:
    for event in events:
        yield json.dumps(event, separators=(",", ":")) + "\n"


def _validated(event: dict[str, Any]) -> dict[str, Any]:
    from fhir.resources.R4B.auditevent import AuditEvent  # R4B's AuditEvent is R4's, field for field
    from pydantic import ValidationError

    try:
        AuditEvent.model_validate(event)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InputError(
            f"interaction {event['id']} does not make a valid AuditEvent ({where}: {first.get('msg')}): "
            "check the exported row."
        ) from None
    return event


def _event(
    row: dict[str, Any],
    position: int,
    recorded: datetime,
    platform_identifier: str,
    organisation_system: str,
    chain_id: int | None,
) -> dict[str, Any]:
    kind = _text(row.get("kind"))
    code = _text(row.get("code"))
    tx_hash = _text(row.get("tx_hash"))
    log_index = _integer(row.get("log_index"), "log_index", position)
    if not kind or not code or not tx_hash:
        raise InputError(f"interaction row {position} lacks kind, code or tx_hash: pass the frame the export wrote.")
    counterparty_code = _text(row.get("counterparty_code"))
    records = _integer(row.get("records"), "records", position)
    units = _integer(row.get("units"), "units", position)
    fee = _integer(row.get("fee"), "fee", position)
    block_number = _integer(row.get("block_number"), "block_number", position)
    transaction = f"{tx_hash}:{log_index}"
    identifier_value = transaction if chain_id is None else f"eip155:{chain_id}:{transaction}"

    def organisation(value: str, name: str | None) -> dict[str, Any]:
        reference: dict[str, Any] = {
            "type": "Organization",
            "identifier": {"system": organisation_system, "value": value},
        }
        if name:
            reference["display"] = name
        return reference

    agents = [
        {
            # The institution signed the interaction: it is the one asking the ledger to record it.
            "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
            "who": organisation(code, _text(row.get("institution_name"))),
            "requestor": True,
        },
        {
            "type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
            "who": organisation(platform_identifier, None),
            "requestor": False,
        },
    ]
    if counterparty_code:
        agents.append(
            {
                # The provider of an exchange: credited, not asking.
                "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                "role": [{"text": "exchange provider"}],
                "who": organisation(counterparty_code, _text(row.get("counterparty_name"))),
                "requestor": False,
            }
        )
    details = [
        ("kind", kind),
        ("category", _text(row.get("category_name")) or str(row.get("category", ""))),
        ("records", str(records)),
        ("units", str(units)),
        ("fee", str(fee)),
        ("block-number", str(block_number)),
        ("log-index", str(log_index)),
        ("data-hash", _text(row.get("data_hash"))),
        ("nonce", str(row.get("nonce"))),
    ]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": "mm-" + keccak(f"{identifier_value}".encode()).hex()[:40],
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "Restful Operation"},
        "subtype": [
            {"system": RESTFUL_INTERACTION, "code": "create", "display": "create"},
            {"system": KIND_SYSTEM, "code": kind, "display": f"medmeter {kind}"},
        ],
        "action": "C",
        "recorded": _instant(recorded),
        "outcome": "0",
        "purposeOfEvent": [{"coding": [{"system": ACT_REASON, "code": "HPAYMT", "display": "healthcare payment"}]}],
        "agent": agents,
        "source": {
            "observer": organisation(platform_identifier, None),
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
        "entity": [
            {
                "what": {"identifier": {"system": LEDGER_TX_SYSTEM, "value": identifier_value}},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
                "name": f"ledger interaction {transaction}",
                "detail": [{"type": name, "valueString": value} for name, value in details if value],
            }
        ],
    }
    return event


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    return "" if text in ("<NA>", "nan", "NaT", "None") else text


def _integer(value: Any, name: str, position: int) -> int:
    try:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(
            f"interaction row {position} has no whole {name} ({value!r}): pass the export's frame."
        ) from None
    if number != value and not isinstance(value, str):
        raise InputError(f"interaction row {position}: {name} {value!r} is not a whole number: check the export.")
    return number


def _moment(value: Any) -> datetime | None:
    if value is None or _text(value) == "":
        return None
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"block_time {value!r} is not a time: pass the frame the export wrote.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _uuid(seed: str) -> str:
    raw = bytearray(keccak(seed.encode())[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # a name-based UUID: the same interaction always gets the same fullUrl
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
