"""Synthetic FHIR R4 Bundles for simulation and tests. No real person is ever described:
identifiers are random, names are drawn from a fixed list of placeholders."""

from __future__ import annotations

import json
import random
from typing import Any

from medmeter.intake.categories import CATEGORIES, Category

PLACEHOLDER_FAMILY_NAMES = ("Synthetic", "Example", "Testcase", "Placeholder")
LOINC_CODES = (("718-7", "Hemoglobin"), ("2345-7", "Glucose"), ("2160-0", "Creatinine"), ("6690-2", "Leukocytes"))


def _resource(resource_type: str, rng: random.Random, patient_ref: str) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": resource_type, "id": f"{rng.getrandbits(64):016x}"}
    subject = {"reference": patient_ref}
    if resource_type == "Observation":
        code, display = rng.choice(LOINC_CODES)
        resource |= {
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "subject": subject,
            "valueQuantity": {"value": round(rng.uniform(1, 200), 1), "unit": "mg/dL"},
        }
    elif resource_type == "Encounter":
        resource |= {"status": "finished", "class": {"code": "AMB"}, "subject": subject}
    elif resource_type == "ImagingStudy":
        resource |= {"status": "available", "subject": subject}
    elif resource_type == "MedicationRequest":
        resource |= {
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": "synthetic medication"},
            "subject": subject,
        }
    elif resource_type == "Immunization":
        resource |= {
            "status": "completed",
            "vaccineCode": {"text": "synthetic vaccine"},
            "patient": subject,
            "occurrenceDateTime": "2026-01-01",
        }
    elif resource_type == "Condition":
        resource |= {"code": {"text": "synthetic condition"}, "subject": subject}
    elif resource_type == "DocumentReference":
        resource |= {
            "status": "current",
            "content": [{"attachment": {"contentType": "text/plain"}}],
            "subject": subject,
        }
    return resource


def synthetic_bundle(rng: random.Random, category: Category, records: int) -> bytes:
    """A FHIR R4 `collection` Bundle: one synthetic Patient and `records` resources of `category`."""
    patient_id = f"{rng.getrandbits(64):016x}"
    patient = {
        "resourceType": "Patient",
        "id": patient_id,
        "name": [{"family": rng.choice(PLACEHOLDER_FAMILY_NAMES), "given": [f"P{rng.randrange(10**6):06d}"]}],
    }
    entries = [{"fullUrl": f"urn:uuid:{patient_id}", "resource": patient}]
    resource_type = category.fhir_resource_types[0]
    entries += [{"resource": _resource(resource_type, rng, f"Patient/{patient_id}")} for _ in range(records)]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    return json.dumps(bundle, separators=(",", ":")).encode()


def random_category(rng: random.Random) -> Category:
    return rng.choice(CATEGORIES)
