"""FHIR Bulk Data in: a `$export` completion manifest as one metering candidate per output file.

The manifest already says how many resources each NDJSON file holds (`output[].count`), so nothing is
downloaded or opened: the files may hold patient data, the manifest does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from eth_utils import keccak

from medmeter.errors import InputError
from medmeter.intake.audit_events import (
    KINDS,
    MAX_RECORDS,
    CategoryTable,
    MeteringCandidate,
    derive_nonce,
    resolve_category_table,
)

CONTENT_TAG = b"medmeter.bulk-manifest.content.v1"


def read_bulk_manifest(
    path: Path | str,
    *,
    kind: str,
    institution: str,
    institutions: Mapping[str, str],
    counterparty: str | None = None,
    categories: CategoryTable | Iterable[str] | None = None,
    category_overrides: Mapping[str, str] | None = None,
) -> list[MeteringCandidate]:
    """Read a Bulk Data manifest file; see `parse_bulk_manifest`."""
    path = Path(path)
    try:
        payload = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc.strerror or exc}): check the path.") from None
    return parse_bulk_manifest(
        payload,
        str(path),
        kind=kind,
        institution=institution,
        institutions=institutions,
        counterparty=counterparty,
        categories=categories,
        category_overrides=category_overrides,
    )


def parse_bulk_manifest(
    payload: bytes,
    source: str,
    *,
    kind: str,
    institution: str,
    institutions: Mapping[str, str],
    counterparty: str | None = None,
    categories: CategoryTable | Iterable[str] | None = None,
    category_overrides: Mapping[str, str] | None = None,
) -> list[MeteringCandidate]:
    """One candidate per `output[]` entry, all or nothing: one bad entry refuses the whole manifest, so a
    failed sign leaves no partial batch behind.

    The manifest does not say which way the data went, so the caller states `kind` (sync: the institution
    exported to the platform; fetch: it imported from the platform; exchange: it imported what
    `counterparty` provided). `category_overrides` maps a resource type to a category name for types the
    category table does not place (Patient, say)."""
    if kind not in KINDS:
        raise InputError(f"kind {kind!r} is not one of {', '.join(KINDS)}: say which way the export went.")
    if institution not in institutions:
        raise InputError(
            f"institution {institution!r} is not registered: use one of {', '.join(sorted(institutions))}."
        )
    if kind == "exchange":
        if counterparty is None or counterparty not in institutions or counterparty == institution:
            raise InputError(
                f"an exchange needs a registered counterparty other than {institution} (got {counterparty!r}): "
                "pass the providing institution's code."
            )
    elif counterparty is not None:
        raise InputError(f"a {kind} has no counterparty (got {counterparty!r}): drop it, or use kind exchange.")
    table = resolve_category_table(categories)
    overrides = dict(category_overrides or {})
    for resource_type, name in overrides.items():
        if name not in table:
            raise InputError(f"category {name!r} for {resource_type} is unknown: use one of {', '.join(table.names)}.")

    manifest = _load(payload, source)
    outputs = manifest.get("output")
    if not isinstance(outputs, list) or not outputs:
        raise InputError(f"{source} has no output[] entries: the export produced no files to meter.")
    transaction_time = manifest.get("transactionTime")
    request = manifest.get("request")
    if not isinstance(transaction_time, str) or not isinstance(request, str):
        raise InputError(f"{source} lacks transactionTime or request: give the manifest the server returned, unedited.")
    manifest_hash = keccak(payload)
    candidates: list[MeteringCandidate] = []
    seen: set[str] = set()
    for index, output in enumerate(outputs):
        where = f"{source} output[{index}]"
        if not isinstance(output, dict):
            raise InputError(f"{where} is not an object: give the manifest the server returned.")
        resource_type, url, count = output.get("type"), output.get("url"), output.get("count")
        if not isinstance(resource_type, str) or not isinstance(url, str) or not url:
            raise InputError(f"{where} lacks a type or url: give the manifest the server returned.")
        if url in seen:
            raise InputError(f"{where} repeats the url {url}: each file may be metered once.")
        seen.add(url)
        if count is None:
            raise InputError(
                f"{where} ({resource_type}) has no count, and medmeter does not open the file to count it: "
                "ask the server to report output[].count, or sign the file with `sign --any-file --records N`."
            )
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= MAX_RECORDS:
            raise InputError(f"{where} ({resource_type}) count {count!r} is not 1 to {MAX_RECORDS}: fix the manifest.")
        category = overrides.get(resource_type) or table.by_resource_type.get(resource_type)
        if category is None:
            raise InputError(
                f"{where}: resource type {resource_type} falls in no data category: pass a category for it "
                f"(one of {', '.join(table.names)})."
            )
        # Binding the url makes each file's interaction distinct and provable on its own (manifest + url),
        # while the manifest hash still commits to every file and count the server reported.
        data_hash = "0x" + keccak(CONTENT_TAG + manifest_hash + url.encode()).hex()
        # The nonce uses what identifies the export, not the bytes, so re-serialising the manifest (pretty
        # printing, key order) cannot make the same file meter twice.
        nonce = derive_nonce("bulk", kind, institution, counterparty or "", request, transaction_time, url)
        candidates.append(
            MeteringCandidate(
                kind=kind,
                institution=institution,
                counterparty=counterparty,
                category=category,
                records=count,
                data_hash=data_hash,
                nonce=nonce,
                rule=f"bulk-manifest:{resource_type}",
                source=where,
                event_ids=(url,),
                preimage=f"{CONTENT_TAG.decode()}|0x{manifest_hash.hex()}|{url}",
            )
        )
    return candidates


def _load(payload: bytes, source: str) -> dict[str, Any]:
    if not payload.strip():
        raise InputError(f"{source} is empty: give the Bulk Data manifest the $export status request returned.")
    try:
        document = json.loads(payload.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(
            f"{source} is not JSON: give the Bulk Data manifest the $export status request returned."
        ) from None
    if not isinstance(document, dict):
        raise InputError(f"{source} is not a JSON object: give the Bulk Data manifest, not {type(document).__name__}.")
    if "resourceType" in document:
        raise InputError(
            f"{source} is a FHIR {document['resourceType']}, not a Bulk Data manifest: give the $export manifest."
        )
    return document
