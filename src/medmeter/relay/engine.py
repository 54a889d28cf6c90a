"""Relaying signed interactions to the ledger in batches (the platform's side).

Each batch is all-or-nothing on chain. Before a batch is sent its items are checked:
signed for this ledger, not already recorded (so a rerun after a crash records each
interaction exactly once), and accepted by a dry run. An item the dry run refuses is
found by bisection, set aside with its decoded error, and the rest go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from medmeter.chain.ledger import Ledger
from medmeter.contract.facts import INTERACTION_RECORDED_TOPIC
from medmeter.errors import InputError, LedgerRevertError
from medmeter.signing.interaction import SignedInteraction

DEFAULT_BATCH_SIZE = 100
NONCE_QUERY_CHUNK = 500
# Batches sent before waiting for their receipts; keeps the node busy while we sign the next.
MAX_IN_FLIGHT = 8


@dataclass(frozen=True)
class Rejection:
    index: int  # position in the input
    item: SignedInteraction
    reason: str
    error_name: str


@dataclass
class RelayReport:
    recorded: list[int] = field(default_factory=list)
    already_recorded: list[int] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    transactions: list[str] = field(default_factory=list)
    gas_used: int = 0

    @property
    def gas_per_interaction(self) -> float:
        return self.gas_used / len(self.recorded) if self.recorded else 0.0


def find_already_recorded(ledger: Ledger, items: Sequence[SignedInteraction]) -> set[int]:
    """Indices of items whose (institution, nonce) is used on chain.

    Reads whole 256-nonce bitmap words, one per (institution, word) in JSON-RPC batches, so a
    hundred thousand sequential nonces cost a few hundred calls, not one each."""
    words = sorted({(item.interaction.institution, item.interaction.nonce >> 8) for item in items})
    bitmap: dict[tuple[str, int], int] = {}
    fn = ledger.contract.functions.nonceBitmap
    for start in range(0, len(words), NONCE_QUERY_CHUNK):
        chunk = words[start : start + NONCE_QUERY_CHUNK]
        with ledger.w3.batch_requests() as batch:
            for institution, word in chunk:
                batch.add(fn(institution, word))
            answers = batch.execute()
        bitmap.update(zip(chunk, (int(answer) for answer in answers), strict=True))
    return {
        index
        for index, item in enumerate(items)
        if bitmap[(item.interaction.institution, item.interaction.nonce >> 8)] >> (item.interaction.nonce & 0xFF) & 1
    }


def _malformed_signature(item: SignedInteraction) -> str | None:
    """Why the signature cannot be sent at all (length, v, high s), checked before any batch goes
    out so that a bad item never stops a relay half-way."""
    try:
        item.compact_signature()
    except InputError as exc:
        return str(exc)
    return None


def _first_failure(ledger: Ledger, batch: list[SignedInteraction]) -> tuple[int, LedgerRevertError]:
    """The smallest prefix of `batch` that reverts: O(log n) dry runs."""
    low, high = 0, len(batch) - 1  # invariant: batch[: high + 1] fails
    error = ledger.simulate_batch(batch)
    assert error is not None
    while low < high:
        middle = (low + high) // 2
        prefix_error = ledger.simulate_batch(batch[: middle + 1])
        if prefix_error is None:
            low = middle + 1
        else:
            high, error = middle, prefix_error
    return low, error


def relay(
    ledger: Ledger,
    items: Sequence[SignedInteraction],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> RelayReport:
    """Record `items` in order; returns what was recorded, skipped and rejected (by input index)."""
    if ledger.transactor is None:
        raise ValueError("relay needs a ledger opened with the relayer's account")
    report = RelayReport()
    domain = ledger.domain
    seen: dict[tuple[str, int], int] = {}
    pending: list[int] = []
    already = find_already_recorded(ledger, items)
    for index, item in enumerate(items):
        key = (item.interaction.institution, item.interaction.nonce)
        malformed = _malformed_signature(item)
        if malformed is not None:
            report.rejected.append(Rejection(index, item, malformed, "MalformedSignature"))
        elif item.domain != domain:
            report.rejected.append(
                Rejection(
                    index,
                    item,
                    f"signed for chain {item.domain.chain_id} ledger {item.domain.verifying_contract}, not chain "
                    f"{domain.chain_id} ledger {domain.verifying_contract}: have the institution sign for this ledger.",
                    "WrongDomain",
                )
            )
        elif index in already:
            report.already_recorded.append(index)
        elif key in seen:
            report.rejected.append(
                Rejection(
                    index, item, f"duplicate of input item {seen[key]} (same institution and nonce).", "Duplicate"
                )
            )
        else:
            seen[key] = index
            pending.append(index)
    if progress:
        progress(len(items) - len(pending))

    in_flight: list[tuple[str, list[int]]] = []
    position = 0
    while position < len(pending):
        indices = pending[position : position + batch_size]
        position += len(indices)
        while indices:
            batch = [items[i] for i in indices]
            try:
                tx_hash = ledger.send_batch(batch)
            except LedgerRevertError:
                failed, error = _first_failure(ledger, batch)
                report.rejected.append(Rejection(indices[failed], items[indices[failed]], str(error), error.error_name))
                if progress:
                    progress(1)
                indices = indices[:failed] + indices[failed + 1 :]
                continue
            in_flight.append((tx_hash, indices))
            break
        if len(in_flight) >= MAX_IN_FLIGHT:
            _settle(ledger, in_flight, report, progress)
    _settle(ledger, in_flight, report, progress)
    report.rejected.sort(key=lambda r: r.index)
    return report


def _settle(
    ledger: Ledger,
    in_flight: list[tuple[str, list[int]]],
    report: RelayReport,
    progress: Callable[[int], None] | None,
) -> None:
    assert ledger.transactor is not None
    for tx_hash, indices in in_flight:
        receipt = ledger.transactor.wait_raw(tx_hash)
        logged = sum(
            1
            for log in receipt["logs"]
            if log["address"].lower() == ledger.address.lower()
            and log["topics"]
            and log["topics"][0] == INTERACTION_RECORDED_TOPIC
        )
        if logged != len(indices):
            raise RuntimeError(f"transaction {tx_hash} logged {logged} interactions for a batch of {len(indices)}")
        report.recorded.extend(indices)
        report.transactions.append(tx_hash)
        report.gas_used += int(receipt["gasUsed"], 16)
        if progress:
            progress(len(indices))
    in_flight.clear()
