"""Health information in: from a payload to the three facts that may reach the chain.

A payload (a FHIR R4 Bundle or any file) stays on the institution's machine. Only its
content hash, a category and a record count are derived here and signed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from eth_utils import keccak

from medmeter.errors import InputError
from medmeter.intake.categories import category_for_resource, parse_category

MAX_RECORDS_FIELD = 2**32 - 1
# Resources that identify or administer, not clinical records: never counted.
ADMINISTRATIVE_RESOURCES = frozenset(
    {"Patient", "Practitioner", "PractitionerRole", "Organization", "Location", "Device", "RelatedPerson"}
)


@dataclass(frozen=True)
class PayloadSummary:
    data_hash: str  # keccak256 of the payload's bytes
    category: int
    records: int
    source: str


def content_hash(payload: bytes) -> str:
    return "0x" + keccak(payload).hex()


def summarize_fhir_bundle(payload: bytes, source: str, category: str | int | None = None) -> PayloadSummary:
    """Parse a FHIR R4 Bundle; count its clinical resources; infer the category unless given."""
    from fhir.resources.R4B.bundle import Bundle  # lazy: large import
    from pydantic import ValidationError

    try:
        document = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{source} is not JSON ({exc}): give a FHIR R4 Bundle, or use --any-file.") from None
    except RecursionError:
        raise InputError(
            f"{source} is JSON nested too deeply to be a FHIR Bundle: give a Bundle, or use --any-file."
        ) from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise InputError(
            f"{source} is not a FHIR Bundle ({str(exc).split(';')[0]}): give a Bundle, or use --any-file."
        ) from None
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        found = document.get("resourceType") if isinstance(document, dict) else type(document).__name__
        raise InputError(f"{source} is a {found}, not a FHIR Bundle: give a Bundle, or use --any-file.")
    try:
        bundle = Bundle.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InputError(f"{source} is not a valid FHIR R4 Bundle: {where}: {first.get('msg')}.") from None
    resource_types = [
        entry.resource.get_resource_type() for entry in (bundle.entry or []) if entry.resource is not None
    ]
    clinical = [rt for rt in resource_types if rt not in ADMINISTRATIVE_RESOURCES]
    if not clinical:
        raise InputError(f"{source} holds no clinical resources (entries: {len(resource_types)}): nothing to meter.")
    if category is None:
        categories = Counter(c.id for rt in clinical if (c := category_for_resource(rt)) is not None)
        if not categories:
            raise InputError(
                f"{source}: cannot infer a category from resource types {sorted(set(clinical))}: pass --category."
            )
        category_id = categories.most_common(1)[0][0]
    else:
        category_id = parse_category(category)
    return PayloadSummary(content_hash(payload), category_id, len(clinical), source)


def summarize_file(payload: bytes, source: str, category: str | int, records: int) -> PayloadSummary:
    """Any file: the caller states category and record count."""
    if not payload:
        raise InputError(f"{source} is empty: there is nothing to meter.")
    if not 0 < records <= MAX_RECORDS_FIELD:
        raise InputError(
            f"record count must be 1 to {MAX_RECORDS_FIELD} (the signed field is a uint32), got {records}: "
            "give the number of records in the payload."
        )
    return PayloadSummary(content_hash(payload), parse_category(category), records, source)


def summarize_path(path: Path, category: str | None, records: int | None, any_file: bool) -> PayloadSummary:
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file.")
    payload = path.read_bytes()
    if any_file:
        if category is None or records is None:
            raise InputError("--any-file needs --category and --records: they cannot be read from an opaque file.")
        return summarize_file(payload, str(path), category, records)
    return summarize_fhir_bundle(payload, str(path), category)
