"""Disputes and reversals: finding the recorded interaction a reversal names, and the period's
dispute list and reversal adjustment lines.

A reversal names its original by EIP-712 digest. The `InteractionRecorded` event does not carry the
digest (its deadline is only in the calldata), so an original is found from the recording
transaction: its calldata holds every signed field, and the digest is computed from them exactly as
the institution's wallet computed it. A reversal moves no units on chain: the settlement applies it
as its own adjustment lines (`REVERSAL_COLUMNS`), never by changing the original's row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from web3.exceptions import TransactionNotFound

from medmeter.chain.ledger import INTERACTION_TUPLE, Ledger
from medmeter.contract.facts import INTERACTION_RECORDED_TOPIC, Kind
from medmeter.errors import InputError
from medmeter.signing.interaction import ZERO_ADDRESS, Interaction, digest

SIGNED_ITEM = f"({INTERACTION_TUPLE},bytes32,bytes32)"
RECORD_BATCH_SELECTOR = function_signature_to_4byte_selector(f"recordBatch({SIGNED_ITEM}[])")
RECORD_INTERACTION_SELECTOR = function_signature_to_4byte_selector(f"recordInteraction({SIGNED_ITEM})")
ZERO_DIGEST = b"\0" * 32

# Columns of reports/settlement-<P>-reversals.csv (documented in the README).
REVERSAL_COLUMNS: tuple[str, ...] = (
    "period",
    "block_number",
    "tx_hash",
    "log_index",
    "original_digest",
    "reason_hash",
    "reversed_units",
    "status",
    "original_period",
    "original_block",
    "original_tx_hash",
    "original_log_index",
    "original_kind",
    "institution",
    "code",
    "side",
    "adjustment_units",
    "fee_units",
)
# Columns of reports/settlement-<P>-disputes.csv.
DISPUTE_COLUMNS: tuple[str, ...] = (
    "period",
    "block_number",
    "tx_hash",
    "log_index",
    "institution",
    "code",
    "subject",
    "interaction_digest",
    "reason_hash",
)
APPLIED = "applied"


@dataclass(frozen=True)
class RecordedInteraction:
    """A recorded interaction as its recording transaction holds it, with its EIP-712 digest."""

    digest: str  # 0x-hex
    interaction: Interaction
    fee: int
    tx_hash: str
    log_index: int
    block: int

    @property
    def kind(self) -> str:
        return self.interaction.kind.word

    @property
    def counterparty(self) -> str | None:
        return None if self.interaction.counterparty == ZERO_ADDRESS else self.interaction.counterparty

    def describe(self) -> str:
        who = f" with {self.counterparty}" if self.counterparty else ""
        return (
            f"{self.kind}{who} of {self.interaction.records} record(s) for {self.interaction.units} units, nonce "
            f"{self.interaction.nonce} (tx {self.tx_hash} log {self.log_index}, block {self.block})"
        )


def parse_digest(value: str, option: str = "--interaction") -> bytes:
    """A 32-byte digest given as hex; InputError naming the option otherwise."""
    try:
        raw = bytes.fromhex(value.strip().removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        what = "transaction hash" if option == "--tx" else "digest"
        raise InputError(f"{option} {value!r} is not a 32-byte hex {what} (0x and 64 hex digits).")
    return raw


def signed_items(ledger: Ledger, tx_hash: str) -> list[Interaction]:
    """The interactions a recording transaction carried, decoded from its calldata; [] if the
    transaction is not a direct `recordBatch`/`recordInteraction` call to this ledger."""
    try:
        tx = ledger.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    except TransactionNotFound:
        return []
    if tx.get("to") is None or to_checksum_address(tx["to"]) != ledger.address:
        return []
    data = bytes(tx["input"])
    try:
        if data[:4] == RECORD_BATCH_SELECTOR:
            (items,) = abi_decode([f"{SIGNED_ITEM}[]"], data[4:])
        elif data[:4] == RECORD_INTERACTION_SELECTOR:
            items = abi_decode([SIGNED_ITEM], data[4:])
        else:
            return []
    except DecodingError:
        return []
    return [_interaction(fields) for fields, _r, _vs in items]


def _interaction(fields: tuple[Any, ...]) -> Interaction:
    kind, institution, counterparty, category, records, units, data_hash, nonce, deadline = fields
    return Interaction(
        Kind(kind),
        to_checksum_address(institution),
        to_checksum_address(counterparty),
        int(category),
        int(records),
        int(units),
        "0x" + bytes(data_hash).hex(),
        int(nonce),
        int(deadline),
    )


def interaction_at(ledger: Ledger, tx_hash: str, log_index: int) -> RecordedInteraction:
    """The interaction whose `InteractionRecorded` log is `log_index` of transaction `tx_hash`."""
    parse_digest(tx_hash, "--tx")  # a transaction hash has a digest's shape: 0x and 64 hex digits
    try:
        receipt = ledger.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
    except TransactionNotFound:
        raise InputError(
            f"transaction {tx_hash} is not on this chain: check the hash (the `tx_hash` of the interaction in "
            "`medmeter export`'s interactions.csv)."
        ) from None
    log = next((entry for entry in receipt["logs"] if int(entry["logIndex"]) == log_index), None)
    if (
        log is None
        or to_checksum_address(log["address"]) != ledger.address
        or not log["topics"]
        or "0x" + bytes(log["topics"][0]).hex() != INTERACTION_RECORDED_TOPIC
    ):
        raise InputError(
            f"log {log_index} of transaction {tx_hash} is not an interaction recorded by ledger {ledger.address}: "
            "give the `log_index` of the interaction's row in the export (interactions.csv)."
        )
    event = ledger.contract.events.InteractionRecorded().process_log(log)
    institution, nonce = to_checksum_address(event["args"]["institution"]), int(event["args"]["nonce"])
    for item in signed_items(ledger, tx_hash):
        if item.institution == institution and item.nonce == nonce:
            return RecordedInteraction(
                "0x" + digest(item, ledger.domain).hex(),
                item,
                int(event["args"]["fee"]),
                receipt["transactionHash"].to_0x_hex(),
                log_index,
                int(receipt["blockNumber"]),
            )
    raise InputError(
        f"transaction {tx_hash} recorded the interaction through another contract, so its signed fields are not in "
        "the transaction's own calldata: give the interaction's EIP-712 digest instead (--interaction 0x...)."
    )


def find_by_digest(ledger: Ledger, wanted: bytes | str, rows: pd.DataFrame) -> RecordedInteraction | None:
    """The interaction with digest `wanted` among the exported `rows` (columns tx_hash, log_index,
    institution, nonce), read back from their transactions newest first; None if none has it."""
    target = wanted if isinstance(wanted, str) else "0x" + wanted.hex()
    target = target.lower()
    if rows.empty:
        return None
    ordered = rows.sort_values(["block_number", "log_index"], ascending=False)
    wanted_rows = {(str(r.institution).lower(), int(r.nonce)): r for r in ordered.itertuples(index=False)}
    for tx_hash in dict.fromkeys(ordered["tx_hash"]):
        for item in signed_items(ledger, str(tx_hash)):
            row = wanted_rows.get((item.institution.lower(), item.nonce))
            if row is not None and "0x" + digest(item, ledger.domain).hex() == target:
                return RecordedInteraction(
                    target, item, int(row.fee), str(row.tx_hash), int(row.log_index), int(row.block_number)
                )
    return None


# ---------------------------------------------------------------------------------- the period's lists


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


def period_disputes(ledger: Ledger, period: int, to_block: int, codes: dict[str, str]) -> pd.DataFrame:
    """Every `DisputeFiled` of `period` (filed up to `to_block`, whenever after the period began)."""
    events = ledger.ledger_events("DisputeFiled", ledger.deployment.block, to_block, {"period": period})
    rows = [
        {
            "period": period,
            "block_number": e.block,
            "tx_hash": e.tx_hash,
            "log_index": e.log_index,
            "institution": e.args["institution"],
            "code": codes.get(e.args["institution"], ""),
            "subject": "statement" if bytes(e.args["interactionDigest"]) == ZERO_DIGEST else "interaction",
            "interaction_digest": ""
            if bytes(e.args["interactionDigest"]) == ZERO_DIGEST
            else _hex(e.args["interactionDigest"]),
            "reason_hash": _hex(e.args["reasonHash"]),
        }
        for e in events
    ]
    return pd.DataFrame(rows, columns=list(DISPUTE_COLUMNS))


def reversal_lines(
    reversal: dict[str, Any], original: RecordedInteraction | None, original_period: int | None, codes: dict[str, str]
) -> list[dict[str, Any]]:
    """The adjustment lines of one recorded reversal: what it gives back to (+) or takes from (-) each
    institution the original moved, by the crediting rule run backwards on `reversed_units`.

    A sync reversed takes back what it credited; a fetch gives back what it debited; an exchange
    (reversed by its consumer, who signed it) gives the consumer back `reversed_units` and takes
    from the provider what it was credited for them, `reversed_units - fee`, where the fee is the
    original's pro rata (`fee * reversed_units // units`, rounded down; the whole fee when all
    units are reversed) and returned by the platform. A reversal whose original cannot be found,
    is not the signing institution's, or names more units than the original had, applies nothing
    (one line, adjustment 0, with the reason as its status)."""
    institution = reversal["institution"]
    units = int(reversal["units"])
    head = {
        "period": int(reversal["period"]),
        "block_number": reversal["block_number"],
        "tx_hash": reversal["tx_hash"],
        "log_index": reversal["log_index"],
        "original_digest": reversal["original_digest"],
        "reason_hash": reversal["reason_hash"],
        "reversed_units": units,
    }
    status = APPLIED
    if original is None:
        status = "unresolved: no recorded interaction has this digest"
    elif original.interaction.institution != institution:
        status = f"not applied: the original was signed by {original.interaction.institution}"
    elif units > original.interaction.units:
        status = f"not applied: more units than the original's {original.interaction.units}"
    where: dict[str, Any] = {
        "original_period": original_period if original_period is not None else "",
        "original_block": original.block if original else "",
        "original_tx_hash": original.tx_hash if original else "",
        "original_log_index": original.log_index if original else "",
        "original_kind": original.kind if original else "",
    }

    def line(who: str, side: str, adjustment: int, fee: int, state: str) -> dict[str, Any]:
        return (
            head
            | {"status": state}
            | where
            | {
                "institution": who,
                "code": codes.get(who, ""),
                "side": side,
                "adjustment_units": adjustment,
                "fee_units": fee,
            }
        )

    if status != APPLIED or original is None:
        return [line(institution, original.kind if original else "", 0, 0, status)]
    kind = original.interaction.kind
    if kind is Kind.SYNC:
        return [line(institution, "sync", -units, 0, status)]
    if kind is Kind.FETCH:
        return [line(institution, "fetch", units, 0, status)]
    fee = original.fee * units // original.interaction.units if original.interaction.units else 0
    provider = original.interaction.counterparty
    return [
        line(institution, "exchange_out", units, 0, status),
        line(provider, "exchange_in", -(units - fee), fee, status),
    ]


def period_reversals(
    ledger: Ledger, from_block: int, to_block: int, export_dir: Path, codes: dict[str, str]
) -> pd.DataFrame:
    """The adjustment lines (REVERSAL_COLUMNS) of the `ReversalRecorded` events in the blocks, each
    original looked for among the signing institution's interactions in the export at `export_dir`."""
    events = ledger.ledger_events("ReversalRecorded", from_block, to_block)
    lines: list[dict[str, Any]] = []
    rows_of: dict[str, pd.DataFrame] = {}
    for e in events:
        institution = to_checksum_address(e.args["institution"])
        reversal = {
            "period": int(e.args["period"]),
            "block_number": e.block,
            "tx_hash": e.tx_hash,
            "log_index": e.log_index,
            "institution": institution,
            "original_digest": _hex(e.args["originalDigest"]),
            "units": int(e.args["units"]),
            "reason_hash": _hex(e.args["reasonHash"]),
        }
        if institution not in rows_of:
            rows_of[institution] = institution_rows(export_dir, institution)
        rows = rows_of[institution]
        candidates = rows[rows["block_number"] <= e.block]
        original = find_by_digest(ledger, reversal["original_digest"], candidates)
        original_period = None
        if original is not None:
            match = candidates[
                (candidates["tx_hash"] == original.tx_hash) & (candidates["log_index"] == original.log_index)
            ]
            original_period = int(match["period"].iloc[0]) if len(match) else None
        lines.extend(reversal_lines(reversal, original, original_period, codes))
    return pd.DataFrame(lines, columns=list(REVERSAL_COLUMNS))


def adjustments_by_institution(lines: pd.DataFrame, addresses: Iterable[str]) -> dict[str, int]:
    """The sum of `adjustment_units` per institution (0 for those with none)."""
    sums = lines.groupby("institution")["adjustment_units"].sum() if len(lines) else pd.Series(dtype="int64")
    return {a: int(sums.get(a, 0)) for a in addresses}


# ---------------------------------------------------------------------------------- what the commands share

# What finding an original reads from the export.
LOOKUP_COLUMNS = ("block_number", "tx_hash", "log_index", "period", "institution", "nonce", "fee")


def institution_rows(export_dir: Path, institution: str) -> pd.DataFrame:
    """The exported interactions signed by `institution` (LOOKUP_COLUMNS)."""
    import pyarrow.compute as pc

    from medmeter.export.reading import read_export

    where = pc.field("institution") == to_checksum_address(institution)
    return read_export(export_dir, columns=LOOKUP_COLUMNS, where=where).to_pandas()


def original_for_reversal(
    ledger: Ledger,
    institution: str,
    rows: pd.DataFrame,
    *,
    wanted_digest: bytes | None = None,
    tx_hash: str | None = None,
    log_index: int | None = None,
    nonce: int | None = None,
) -> RecordedInteraction:
    """The recorded interaction of `institution` a reversal is about, named by digest, by transaction
    and log index, or by the institution's nonce; InputError if it is not one `institution` signed."""
    found: RecordedInteraction | None
    found = None
    if tx_hash is not None and log_index is not None:
        if wanted_digest is None:
            found = interaction_at(ledger, tx_hash, log_index)
        else:  # an unsigned hint beside a signed digest: use it only if it names that digest
            try:
                found = interaction_at(ledger, tx_hash, log_index)
            except InputError:
                found = None
            if found is not None and found.digest != "0x" + wanted_digest.hex():
                found = None
    if found is None and nonce is not None:
        match = rows[rows["nonce"] == str(nonce)]
        if match.empty:
            raise InputError(
                f"no interaction of {institution} with nonce {nonce} is recorded on this ledger: check the nonce "
                "against your receipts (`medmeter audit`)."
            )
        first = match.iloc[0]
        found = interaction_at(ledger, str(first["tx_hash"]), int(first["log_index"]))
    if found is None and wanted_digest is not None:
        found = find_by_digest(ledger, wanted_digest, rows)
        if found is None:
            raise InputError(
                f"no interaction recorded for {institution} has digest 0x{wanted_digest.hex()}: a reversal must name "
                "one of the institution's own recorded interactions (check the digest, or give --tx and --log-index)."
            )
    if found is None:
        raise InputError("name the interaction: --interaction DIGEST, --tx HASH --log-index N, or --nonce N.")
    if found.interaction.institution != to_checksum_address(institution):
        raise InputError(
            f"the interaction at tx {found.tx_hash} log {found.log_index} was signed by "
            f"{found.interaction.institution}, not by {institution}: only the institution that signed an interaction "
            "can reverse it."
        )
    return found


# ---------------------------------------------------------------------------------- the report's files


@dataclass(frozen=True)
class Corrections:
    """A period's disputes (filed about it) and reversal lines (recorded in it)."""

    period: int
    disputes: pd.DataFrame  # DISPUTE_COLUMNS
    reversals: pd.DataFrame  # REVERSAL_COLUMNS

    def adjustments(self, addresses: Iterable[str]) -> dict[str, int]:
        return adjustments_by_institution(self.reversals, addresses)


def period_corrections(
    ledger: Ledger,
    period: int,
    from_block: int,
    to_block: int,
    head_block: int,
    export_dir: Path,
    codes: dict[str, str],
) -> Corrections:
    """Disputes of `period` filed up to `head_block`, and reversals recorded in its blocks."""
    return Corrections(
        period,
        period_disputes(ledger, period, head_block, codes),
        period_reversals(ledger, from_block, to_block, export_dir, codes),
    )


def corrections_paths(reports_dir: Path, period: int) -> tuple[Path, Path]:
    """(disputes CSV, reversals CSV) of `period` in `reports_dir`."""
    return reports_dir / f"settlement-{period}-disputes.csv", reports_dir / f"settlement-{period}-reversals.csv"


def write_corrections(corrections: Corrections, reports_dir: Path) -> tuple[Path, Path]:
    """Write the period's disputes and reversals CSVs (header only when there are none)."""
    from medmeter.fileio import write_atomic
    from medmeter.settlement.period import spreadsheet_safe

    disputes_csv, reversals_csv = corrections_paths(reports_dir, corrections.period)
    for frame, path in ((corrections.disputes, disputes_csv), (corrections.reversals, reversals_csv)):
        write_atomic(path, spreadsheet_safe(frame).to_csv(index=False, lineterminator="\n"))
    return disputes_csv, reversals_csv
