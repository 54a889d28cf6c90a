"""Relaying signed interactions to the ledger in batches (the platform's side).

One engine for `medmeter relay` and the platform service's relayer. Each batch is all-or-nothing
on chain. Before a batch is sent its items are checked: signed for this ledger, not already
recorded, and accepted by a dry run. An item the dry run refuses is found by bisection, set aside
with its decoded error, and the rest go on.

Exactness (issue 10 §5): an item counts as "already recorded" only when the chain's
`InteractionRecorded` event for its (institution, nonce) holds the item's own content; a used nonce
with other content is a conflict that names both. A `NonceAlreadyUsed` refusal is re-checked the same
way (another relayer recorded it meanwhile → "recorded by another relayer"). A batch that reverts on
chain has its items re-checked and sent again (at most `MAX_ATTEMPTS` times), never a crash. Relays
from one account on one chain take a file lock, so two processes never race for the account's
transaction nonces; the second waits with a message and then finds everything already recorded.
"""

from __future__ import annotations

import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from eth_utils import function_signature_to_4byte_selector
from filelock import FileLock, Timeout

from medmeter.chain.ledger import Ledger
from medmeter.contract.facts import INTERACTION_RECORDED_TOPIC
from medmeter.errors import InputError, LedgerRevertError, ReorgedError, RpcUnavailableError, TransactionStuckError
from medmeter.export.events import decode_interaction_logs
from medmeter.signing.interaction import ZERO_ADDRESS, SignedInteraction

DEFAULT_BATCH_SIZE = 100
NONCE_QUERY_CHUNK = 500
# Batches sent before waiting for their receipts; keeps the node busy while we sign the next.
MAX_IN_FLIGHT = 8
# Sends of one item that reverted on chain (or were reorged out) before it is refused with a reason.
MAX_ATTEMPTS = 3
# Blocks per eth_getLogs when looking up the events of used nonces.
EVENT_LOOKUP_BLOCKS = 100_000
LOCK_WAIT_NOTICE_SECONDS = 0.5

# Refusals about the relayer's standing, not about any item: every batch would get the same one, and
# each item is recorded once the cause is gone (the ledger unpaused, the relayer role granted). The
# first one found ends the run for every item left, without a dry run each.
LEDGER_HALTS = frozenset({"EnforcedPause", "AccessControlUnauthorizedAccount"})

NONCE_CONFLICT = "NonceConflict"
NONCE_USED = "NonceAlreadyUsed"


@dataclass(frozen=True)
class Rejection:
    index: int  # position in the input
    item: SignedInteraction
    reason: str
    error_name: str
    # True for a LEDGER_HALTS refusal: the item is fine; relay it again once the cause is gone.
    held: bool = False


@dataclass(frozen=True)
class Recorded:
    """Where an item's event is on chain. `how` is "recorded" (by this relay), "already" (found
    recorded before this relay sent anything) or "other" (another relayer recorded it meanwhile)."""

    index: int
    tx_hash: str
    block_number: int
    log_index: int
    units: int
    fee: int
    how: str = "recorded"


class RelayListener(Protocol):
    """Told of each state change as it happens, so a caller (the service's outbox) can persist it
    before the next one; a crash between two calls loses nothing that the chain does not hold."""

    def sent(self, tx_hash: str, indices: list[int]) -> None: ...

    def recorded(self, entries: list[Recorded]) -> None: ...

    def refused(self, rejection: Rejection) -> None: ...

    def unsettled(self, tx_hash: str, indices: list[int], reason: str) -> None: ...


@dataclass
class RelayReport:
    recorded: list[int] = field(default_factory=list)
    # Recorded before this relay, or by another relayer during it: its content matches the chain's event.
    already_recorded: list[int] = field(default_factory=list)
    recorded_by_other: list[int] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    # Sent but not known to be mined (stuck, or the node stopped answering): checked again by a later relay.
    unsettled: list[int] = field(default_factory=list)
    where: dict[int, Recorded] = field(default_factory=dict)
    transactions: list[str] = field(default_factory=list)
    gas_used: int = 0

    @property
    def gas_per_interaction(self) -> float:
        return self.gas_used / len(self.recorded) if self.recorded else 0.0


# --------------------------------------------------------------------------- the chain's view of nonces


@dataclass(frozen=True)
class RecordedInteraction:
    """One `InteractionRecorded` event, as the export's decoder reads it."""

    block_number: int
    tx_hash: str
    log_index: int
    institution: str
    counterparty: str
    kind: int
    category: int
    records: int
    units: int
    fee: int
    data_hash: str
    nonce: int


def decode_events(logs: Sequence[dict[str, Any]]) -> list[RecordedInteraction]:
    """Raw `InteractionRecorded` logs through the export's one decoder (so a change of the event's
    layout is followed here without a second copy of it)."""
    if not logs:
        return []
    columns = decode_interaction_logs(logs)
    institutions = columns.institution.to_pylist()
    counterparties = columns.counterparty.to_pylist()
    tx_hashes = columns.tx_hash.to_pylist()
    data_hashes = columns.data_hash.to_pylist()
    nonces = columns.nonce.to_pylist()
    return [
        RecordedInteraction(
            block_number=int(columns.block_number[i]),
            tx_hash=tx_hashes[i],
            log_index=int(columns.log_index[i]),
            institution=institutions[i],
            counterparty=counterparties[i] or ZERO_ADDRESS,
            kind=int(columns.kind[i]),
            category=int(columns.category[i]),
            records=int(columns.records[i]),
            units=int(columns.units[i]),
            fee=int(columns.fee[i]),
            data_hash=data_hashes[i],
            nonce=int(nonces[i]),
        )
        for i in range(len(columns))
    ]


NonceWord = tuple[str, int]  # (institution, nonce >> 8): one 256-bit word of the ledger's nonce bitmap


def nonce_words(ledger: Ledger, words: Sequence[NonceWord]) -> dict[NonceWord, int]:
    """The ledger's `nonceBitmap(institution, word)` for each word, in raw JSON-RPC batches of eth_call.

    The calldata is encoded here, not by web3's contract machinery, which costs ~5 ms a call and was
    most of what the service's relayer spent per batch. The one reader of the bitmap: `medmeter relay`,
    the service's intake checks and its reconciliation all ask through it."""
    selector = ledger.contract.functions.nonceBitmap.signature
    data_of = "0x" + function_signature_to_4byte_selector(selector).hex()
    out: dict[NonceWord, int] = {}
    for start in range(0, len(words), NONCE_QUERY_CHUNK):
        chunk = words[start : start + NONCE_QUERY_CHUNK]
        calls = [
            (
                "eth_call",
                [{"to": ledger.address, "data": data_of + a[2:].lower().rjust(64, "0") + f"{w:064x}"}, "latest"],
            )
            for a, w in chunk
        ]
        answers = ledger.w3.provider.make_batch_request(calls)  # type: ignore[arg-type]
        if not isinstance(answers, list) or len(answers) != len(chunk):
            raise RpcUnavailableError(
                f"the node answered a batch of {len(chunk)} nonceBitmap calls with {answers!r:.200}: it is not "
                "answering JSON-RPC batches as it should; check the node, or pass another --rpc-url."
            )
        for word, answer in zip(chunk, answers, strict=True):  # web3 orders the answers by request id
            result = answer.get("result") if isinstance(answer, dict) else None
            if not isinstance(result, str):
                raise RpcUnavailableError(
                    f"the node answered nonceBitmap{word} with {answer!r:.200}: check the node, or pass another "
                    "--rpc-url."
                )
            out[word] = int(result, 16) if result not in ("0x", "") else 0
    return out


def find_already_recorded(ledger: Ledger, items: Sequence[SignedInteraction]) -> set[int]:
    """Indices of items whose (institution, nonce) is used on chain.

    Reads whole 256-nonce bitmap words, one per (institution, word) in JSON-RPC batches, so a
    hundred thousand sequential nonces cost a few hundred calls, not one each."""
    words = sorted({(item.interaction.institution, item.interaction.nonce >> 8) for item in items})
    return used_in(nonce_words(ledger, words), items)


def used_in(bitmap: dict[NonceWord, int], items: Sequence[SignedInteraction]) -> set[int]:
    """Indices of `items` whose nonce bit is set in `bitmap`."""
    return {
        index
        for index, item in enumerate(items)
        if bitmap.get((item.interaction.institution, item.interaction.nonce >> 8), 0) >> (item.interaction.nonce & 0xFF)
        & 1
    }


def recorded_events(
    ledger: Ledger, keys: set[tuple[str, int]], from_block: int | None = None
) -> dict[tuple[str, int], RecordedInteraction]:
    """The `InteractionRecorded` event of each (institution, nonce) in `keys` that has one.

    The institution is an indexed topic, so one eth_getLogs per block range serves all of them."""
    if not keys:
        return {}
    institutions = sorted({institution for institution, _ in keys})
    topics = ["0x" + institution[2:].lower().rjust(64, "0") for institution in institutions]
    head = ledger.w3.eth.block_number
    found: dict[tuple[str, int], RecordedInteraction] = {}
    start = ledger.deployment.block if from_block is None else from_block
    while start <= head and len(found) < len(keys):
        end = min(start + EVENT_LOOKUP_BLOCKS - 1, head)
        response = ledger.w3.provider.make_request(
            "eth_getLogs",  # type: ignore[arg-type]
            [
                {
                    "address": ledger.address,
                    "topics": [INTERACTION_RECORDED_TOPIC, topics],
                    "fromBlock": hex(start),
                    "toBlock": hex(end),
                }
            ],
        )
        if "error" in response:
            from medmeter.errors import RpcUnavailableError

            raise RpcUnavailableError(f"eth_getLogs {start}..{end} failed: {response['error']}.")
        for event in decode_events(response["result"]):
            key = (event.institution, event.nonce)
            if key in keys:
                found[key] = event
        start = end + 1
    return found


def differences(item: SignedInteraction, event: RecordedInteraction) -> list[str]:
    """The fields in which `item` differs from the recorded event of its (institution, nonce).

    Every field the event carries is compared, including `units` once the signed interaction has
    one (the contract's price must then equal what the institution signed)."""
    mine = item.interaction
    pairs: list[tuple[str, Any, Any]] = [
        ("kind", int(mine.kind), event.kind),
        ("counterparty", mine.counterparty.lower(), event.counterparty.lower()),
        ("category", mine.category, event.category),
        ("records", mine.records, event.records),
        ("data_hash", mine.data_hash.lower(), event.data_hash.lower()),
    ]
    if hasattr(mine, "units"):
        pairs.append(("units", mine.units, event.units))
    return [f"{name} {ours} vs {theirs}" for name, ours, theirs in pairs if ours != theirs]


def conflict_reason(item: SignedInteraction, event: RecordedInteraction, diff: list[str]) -> str:
    return (
        f"nonce {item.interaction.nonce} of {item.interaction.institution} is already used on chain by a different "
        f"interaction (transaction {event.tx_hash}, block {event.block_number}, log {event.log_index}): this item vs "
        f"the recorded one differ in {', '.join(diff)}; it was not recorded. Have the institution check which one it "
        "signed (`medmeter audit`) and sign a new interaction under a fresh nonce if this one is still owed."
    )


def _where(index: int, event: RecordedInteraction, how: str) -> Recorded:
    return Recorded(index, event.tx_hash, event.block_number, event.log_index, event.units, event.fee, how)


# --------------------------------------------------------------------------- locking


def lock_path(ledger: Ledger) -> Path:
    """One lock per (chain, relaying account): the account's transaction nonces are what two relays
    would fight over. In the temp folder, so relays from different workspaces on this machine see it."""
    assert ledger.transactor is not None
    name = f"medmeter-relay-{ledger.deployment.chain_id}-{ledger.transactor.address.lower()}.lock"
    return Path(tempfile.gettempdir()) / name


def _notice_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def relay_lock(ledger: Ledger, notice: Callable[[str], None] | None = _notice_stderr) -> Iterator[None]:
    lock = FileLock(lock_path(ledger))
    try:
        lock.acquire(timeout=LOCK_WAIT_NOTICE_SECONDS)
    except Timeout:
        assert ledger.transactor is not None
        if notice:
            notice(
                f"waiting for another relay from account {ledger.transactor.address} on chain "
                f"{ledger.deployment.chain_id} to finish (lock {lock.lock_file}); nothing is sent until then."
            )
        lock.acquire()
    try:
        # Whoever held the lock may have used the account: the chain's nonce is the truth.
        assert ledger.transactor is not None
        ledger.transactor.sync_nonce()
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------- relaying


def _malformed_signature(item: SignedInteraction) -> str | None:
    """Why the signature cannot be sent at all (length, v, high s), checked before any batch goes
    out so that a bad item never stops a relay half-way."""
    try:
        item.compact_signature()
    except InputError as exc:
        return str(exc)
    return None


def _first_failure(ledger: Ledger, batch: list[SignedInteraction]) -> tuple[int, LedgerRevertError] | None:
    """The smallest prefix of `batch` that reverts: O(log n) dry runs; None if the batch passes now."""
    error = ledger.simulate_batch(batch)
    if error is None:
        return None
    low, high = 0, len(batch) - 1  # invariant: batch[: high + 1] fails
    while low < high:
        middle = (low + high) // 2
        prefix_error = ledger.simulate_batch(batch[: middle + 1])
        if prefix_error is None:
            low = middle + 1
        else:
            high, error = middle, prefix_error
    return low, error


class _NullListener:
    def sent(self, tx_hash: str, indices: list[int]) -> None:
        pass

    def recorded(self, entries: list[Recorded]) -> None:
        pass

    def refused(self, rejection: Rejection) -> None:
        pass

    def unsettled(self, tx_hash: str, indices: list[int], reason: str) -> None:
        pass


def relay(
    ledger: Ledger,
    items: Sequence[SignedInteraction],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    listener: RelayListener | None = None,
    confirmations: int = 0,
    lock: bool = True,
    notice: Callable[[str], None] | None = _notice_stderr,
    attempts: dict[int, int] | None = None,
) -> RelayReport:
    """Record `items` in order; returns what was recorded, skipped and rejected (by input index).

    `attempts` carries earlier send counts per index (the service's outbox keeps them across runs)."""
    if ledger.transactor is None:
        raise ValueError("relay needs a ledger opened with the relayer's account")
    run = _Relay(ledger, items, batch_size, progress, listener or _NullListener(), confirmations, attempts or {})
    if not lock:
        return run.run()
    with relay_lock(ledger, notice):
        return run.run()


class _Relay:
    def __init__(
        self,
        ledger: Ledger,
        items: Sequence[SignedInteraction],
        batch_size: int,
        progress: Callable[[int], None] | None,
        listener: RelayListener,
        confirmations: int,
        attempts: dict[int, int],
    ) -> None:
        self.ledger = ledger
        self.items = items
        self.batch_size = batch_size
        self.progress = progress or (lambda _n: None)
        self.listener = listener
        self.confirmations = confirmations
        self.attempts = dict(attempts)
        self.report = RelayReport()
        self.pending: deque[int] = deque()
        self.in_flight: list[tuple[str, list[int]]] = []

    # ----------------------------------------------------------- outcomes

    def _reject(self, index: int, reason: str, error_name: str, *, held: bool = False) -> None:
        rejection = Rejection(index, self.items[index], reason, error_name, held)
        self.report.rejected.append(rejection)
        self.listener.refused(rejection)
        self.progress(1)

    def _found(self, entries: list[Recorded]) -> None:
        for entry in entries:
            self.report.where[entry.index] = entry
            if entry.how == "recorded":
                self.report.recorded.append(entry.index)
            else:
                self.report.already_recorded.append(entry.index)
                if entry.how == "other":
                    self.report.recorded_by_other.append(entry.index)
        if entries:
            self.listener.recorded(entries)
            self.progress(len(entries))

    def _check_used(self, indices: list[int], how: str) -> None:
        """Items whose nonce is used on chain: recorded (content matches the event) or a conflict."""
        keys = {(self.items[i].interaction.institution, self.items[i].interaction.nonce) for i in indices}
        events = recorded_events(self.ledger, keys)
        found: list[Recorded] = []
        for index in indices:
            item = self.items[index]
            event = events.get((item.interaction.institution, item.interaction.nonce))
            if event is None:
                self._reject(
                    index,
                    f"nonce {item.interaction.nonce} of {item.interaction.institution} is used on chain but no "
                    "interaction was recorded under it (the institution cancelled it): it cannot be recorded; sign "
                    "a new interaction under a fresh nonce if it is still owed.",
                    NONCE_USED,
                )
                continue
            diff = differences(item, event)
            if diff:
                self._reject(index, conflict_reason(item, event, diff), NONCE_CONFLICT)
            else:
                found.append(_where(index, event, how))
        self._found(found)

    # ----------------------------------------------------------- the run

    def run(self) -> RelayReport:
        domain = self.ledger.domain
        seen: dict[tuple[str, int], int] = {}
        already = find_already_recorded(self.ledger, self.items)
        used: list[int] = []
        for index, item in enumerate(self.items):
            key = (item.interaction.institution, item.interaction.nonce)
            malformed = _malformed_signature(item)
            if malformed is not None:
                self._reject(index, malformed, "MalformedSignature")
            elif item.domain != domain:
                self._reject(
                    index,
                    f"signed for chain {item.domain.chain_id} ledger {item.domain.verifying_contract}, not chain "
                    f"{domain.chain_id} ledger {domain.verifying_contract}: have the institution sign for this "
                    "ledger.",
                    "WrongDomain",
                )
            elif key in seen:
                self._reject(index, f"duplicate of input item {seen[key]} (same institution and nonce).", "Duplicate")
            elif index in already:
                seen[key] = index
                used.append(index)
            else:
                seen[key] = index
                self.pending.append(index)
        if used:
            self._check_used(used, "already")

        while self.pending:
            indices = [self.pending.popleft() for _ in range(min(self.batch_size, len(self.pending)))]
            self._send(indices)
            if len(self.in_flight) >= MAX_IN_FLIGHT:
                self._settle()
        self._settle()
        self.report.rejected.sort(key=lambda r: r.index)
        return self.report

    def _send(self, indices: list[int]) -> None:
        passes = 0
        while indices:
            batch = [self.items[i] for i in indices]
            try:
                tx_hash = self.ledger.send_batch(batch)
            except LedgerRevertError:
                if self.in_flight:
                    # The dry run ran against `pending`, which on some nodes (Besu, interval mining) is the
                    # latest block: batches in flight may be what this one depends on. Wait for them, retry.
                    self._settle()
                    continue
                failure = _first_failure(self.ledger, batch)
                if failure is None:
                    passes += 1
                    if passes < MAX_ATTEMPTS:
                        continue  # the chain moved between the two dry runs: send again
                    for index in indices:
                        self._reject(index, "the batch's dry run kept failing while each prefix passed.", "Unknown")
                    return
                failed, error = failure
                if error.error_name in LEDGER_HALTS:
                    self._halt(indices, error)
                    return
                index = indices.pop(failed)
                self._refused_on_dry_run(index, error)
                continue
            self.in_flight.append((tx_hash, indices))
            self.listener.sent(tx_hash, indices)
            return

    def _halt(self, indices: list[int], error: LedgerRevertError) -> None:
        """The ledger refuses the relayer itself: this batch and every item left are held, not refused."""
        reason = f"{error} Not recorded yet, and nothing is wrong with the item: relay it again once that is done."
        held = [*indices, *self.pending]
        self.pending.clear()
        for index in held:
            self._reject(index, reason, error.error_name, held=True)

    def _refused_on_dry_run(self, index: int, error: LedgerRevertError) -> None:
        if error.error_name == NONCE_USED:
            # Not necessarily a refusal: another relayer (or our own earlier, unconfirmed send) may have
            # recorded this very interaction since we looked. The chain's event decides.
            self._check_used([index], "other")
        else:
            self._reject(index, str(error), error.error_name)

    def _settle(self) -> None:
        assert self.ledger.transactor is not None
        in_flight, self.in_flight = self.in_flight, []
        retry: list[int] = []
        for position, (tx_hash, indices) in enumerate(in_flight):
            try:
                receipt = self.ledger.transactor.wait_raw(tx_hash, allow_revert=True, confirmations=self.confirmations)
            except ReorgedError:
                retry.extend(self._again(indices, f"transaction {tx_hash} was removed from the chain by a reorg"))
                continue
            except TransactionStuckError as exc:
                self.report.unsettled.extend(indices)
                self.listener.unsettled(tx_hash, indices, str(exc))
                continue
            except Exception:
                # The node stopped answering: what is still in flight is unknown, not lost. Tell the
                # listener, so that the next relay re-checks it against the chain, then let it propagate.
                for later_hash, later in in_flight[position:]:
                    self.report.unsettled.extend(later)
                    self.listener.unsettled(later_hash, later, "the node stopped answering before the receipt")
                raise
            logs = [
                log
                for log in receipt["logs"]
                if log["address"].lower() == self.ledger.address.lower()
                and log["topics"]
                and log["topics"][0] == INTERACTION_RECORDED_TOPIC
            ]
            if int(receipt["status"], 16) != 1 or len(logs) != len(indices):
                block = int(receipt["blockNumber"], 16)
                retry.extend(self._again(indices, f"transaction {tx_hash} reverted on chain in block {block}"))
                continue
            entries = [
                _where(index, event, "recorded") for index, event in zip(indices, decode_events(logs), strict=True)
            ]
            self.report.transactions.append(tx_hash)
            self.report.gas_used += int(receipt["gasUsed"], 16)
            self._found(entries)
        # Items of a reverted batch go first again, re-checked by the next dry run (and bisected).
        self.pending.extendleft(reversed(retry))

    def _again(self, indices: list[int], why: str) -> list[int]:
        again = []
        for index in indices:
            self.attempts[index] = self.attempts.get(index, 0) + 1
            if self.attempts[index] >= MAX_ATTEMPTS:
                self._reject(
                    index,
                    f"{why}, and the item was sent {self.attempts[index]} times without being recorded: relay it "
                    "again later, or have the institution sign it again if its deadline is near.",
                    "NotMined",
                )
            else:
                again.append(index)
        return again
