"""Data categories: the ids the chain knows and the names people use."""

from __future__ import annotations

from dataclasses import dataclass

from medmeter.errors import InputError


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    fhir_resource_types: tuple[str, ...]
    default_sync_units_per_record: int
    default_fetch_units_per_record: int


CATEGORIES: tuple[Category, ...] = (
    Category(1, "encounter", ("Encounter", "EpisodeOfCare"), 2, 3),
    Category(2, "laboratory", ("Observation", "DiagnosticReport", "Specimen"), 1, 2),
    Category(3, "imaging", ("ImagingStudy", "Media"), 8, 12),
    Category(4, "medication", ("MedicationRequest", "MedicationStatement", "MedicationDispense"), 1, 2),
    Category(5, "immunization", ("Immunization",), 1, 1),
    Category(6, "condition", ("Condition", "AllergyIntolerance", "Procedure"), 2, 3),
    Category(7, "document", ("DocumentReference", "Composition"), 3, 4),
)
DEFAULT_PLATFORM_FEE_BPS = 500

_BY_NAME = {c.name: c for c in CATEGORIES}
_BY_ID = {c.id: c for c in CATEGORIES}
_BY_RESOURCE = {rt: c for c in CATEGORIES for rt in c.fhir_resource_types}


def category_by_name(name: str) -> Category:
    try:
        return _BY_NAME[name.strip().lower()]
    except KeyError:
        raise InputError(f"unknown category {name!r}: use one of {', '.join(_BY_NAME)}.") from None


def category_name(category_id: int) -> str:
    category = _BY_ID.get(category_id)
    return category.name if category else f"category-{category_id}"


def category_for_resource(resource_type: str) -> Category | None:
    return _BY_RESOURCE.get(resource_type)


def parse_category(value: str | int) -> int:
    """A category given as a name or an id."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        category_id = int(value)
        if not 0 < category_id < 2**16:
            raise InputError(
                f"category id {category_id} is outside 1..65535: use a category name or id from `medmeter tariff show`."
            )
        return category_id
    return category_by_name(value).id
