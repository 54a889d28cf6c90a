"""Gas is deterministic: the committed snapshot is an upper bound that a change must not cross.

After an intended change, rewrite it with `python -m bench.gas_snapshot` and commit the diff."""

import json
from pathlib import Path

import pytest
from bench.gas_profile import BATCH_SIZES, measure

SNAPSHOT = Path(__file__).resolve().parents[2] / "bench" / "gas-snapshot.json"


@pytest.fixture(scope="module")
def measured(w3, artifact):
    return measure(w3, artifact)


def test_snapshot_covers_every_measured_call(measured):
    assert set(json.loads(SNAPSHOT.read_text())) == set(measured)
    assert {f"recordBatch_{n}_per_interaction" for n in BATCH_SIZES} <= set(measured)


def test_gas_did_not_grow_past_the_snapshot(measured):
    snapshot = json.loads(SNAPSHOT.read_text())
    grown = {name: (snapshot[name], used) for name, used in measured.items() if used > snapshot[name]}
    assert not grown, f"gas grew (snapshot, now): {grown}; if intended, run python -m bench.gas_snapshot"


def test_batching_amortizes(measured):
    per_interaction = [measured[f"recordBatch_{n}_per_interaction"] for n in BATCH_SIZES]
    assert per_interaction == sorted(per_interaction, reverse=True)
    assert measured["recordBatch_100_per_interaction"] < measured["recordInteraction_sync"] / 3
