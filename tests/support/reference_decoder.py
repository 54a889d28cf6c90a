"""The test oracle for the ledger's events: each `InteractionRecorded` log decoded one by one with
Python ints, and the crediting rule applied to them in plain loops.

medmeter itself has one decoder (`medmeter.export.events`, vectorised) and one crediting rule
(`medmeter.settlement.crediting`); this slow, obvious version is what tests and the export
benchmark compare them against."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from eth_utils import to_checksum_address
from web3 import Web3

from medmeter.chain.ledger import Ledger, bytes32_to_code
from medmeter.contract.facts import INTERACTION_RECORDED_TOPIC, Kind
from medmeter.errors import RpcUnavailableError
from medmeter.export.events import INTERACTION_COLUMNS, INTERACTION_SCHEMA
from medmeter.intake.categories import category_name

DEFAULT_CHUNK_BLOCKS = 2_000


@dataclass(frozen=True)
class RecordedInteraction:
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


def get_logs_raw(w3: Web3, address: str, topic: str, from_block: int, to_block: int) -> list[dict[str, Any]]:
    """`eth_getLogs` without web3's result formatters."""
    response = w3.provider.make_request(
        "eth_getLogs",  # type: ignore[arg-type]
        [{"address": address, "topics": [topic], "fromBlock": hex(from_block), "toBlock": hex(to_block)}],
    )
    if "error" in response:
        raise RpcUnavailableError(
            f"eth_getLogs {from_block}..{to_block} failed: {response['error']}; retry with a smaller --chunk-blocks."
        )
    return response["result"]


def decode_interaction(log: dict[str, Any]) -> RecordedInteraction:
    topics = log["topics"]
    data = bytes.fromhex(log["data"][2:])
    words = [int.from_bytes(data[i : i + 32], "big") for i in range(0, 224, 32)]
    return RecordedInteraction(
        block_number=int(log["blockNumber"], 16),
        tx_hash=log["transactionHash"],
        log_index=int(log["logIndex"], 16),
        institution=to_checksum_address("0x" + topics[1][-40:]),
        counterparty=to_checksum_address("0x" + topics[2][-40:]),
        kind=words[0],
        category=words[1],
        records=words[2],
        units=words[3],
        fee=words[4],
        data_hash="0x" + data[160:192].hex(),
        nonce=words[6],
    )


def iter_interactions(
    w3: Web3, address: str, from_block: int, to_block: int, chunk_blocks: int = DEFAULT_CHUNK_BLOCKS
) -> Iterator[RecordedInteraction]:
    for start in range(from_block, to_block + 1, chunk_blocks):
        end = min(start + chunk_blocks - 1, to_block)
        for log in get_logs_raw(w3, address, INTERACTION_RECORDED_TOPIC, start, end):
            yield decode_interaction(log)


@dataclass
class InstitutionTally:
    credited: int = 0
    debited: int = 0
    counts: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(Kind, 0))

    @property
    def net(self) -> int:
        return self.credited - self.debited


def tally(interactions: Iterable[RecordedInteraction]) -> dict[str, InstitutionTally]:
    """Credits and debits per institution, by the ledger's rules, from events alone."""
    tallies: dict[str, InstitutionTally] = {}

    def of(address: str) -> InstitutionTally:
        return tallies.setdefault(address, InstitutionTally())

    for event in interactions:
        kind = Kind(event.kind)
        actor = of(event.institution)
        actor.counts[kind] += 1
        if kind is Kind.SYNC:
            actor.credited += event.units
        else:
            actor.debited += event.units
            if kind is Kind.EXCHANGE:
                of(event.counterparty).credited += event.units - event.fee
    return tallies


def reference_table(ledger: Ledger, from_block: int, to_block: int) -> pa.Table:
    """The dataset rows of blocks `from_block..to_block`, decoded the slow, obvious way with web3.

    Periods and institution codes are taken from the events since the deployment block."""
    w3 = ledger.w3
    events = ledger.contract.events
    first = ledger.deployment.block
    codes = {
        log["args"]["institution"]: bytes32_to_code(log["args"]["code"])
        for log in events.InstitutionRegistered.get_logs(from_block=first, to_block=to_block)
    }
    close_blocks = sorted(
        log["blockNumber"] for log in events.PeriodClosed.get_logs(from_block=first, to_block=to_block)
    )
    logs = events.InteractionRecorded.get_logs(from_block=from_block, to_block=to_block)
    blocks: dict[int, Any] = {}
    rows: dict[str, list[Any]] = {name: [] for name in INTERACTION_COLUMNS}
    for log in sorted(logs, key=lambda entry: (entry["blockNumber"], entry["logIndex"])):
        number = log["blockNumber"]
        if number not in blocks:
            blocks[number] = w3.eth.get_block(number)
        args = log["args"]
        counterparty = None if int(args["counterparty"], 16) == 0 else args["counterparty"]
        period = 1 + sum(1 for close in close_blocks if close <= number)
        values = {
            "block_number": number,
            "block_hash": log["blockHash"].to_0x_hex(),
            "block_timestamp": blocks[number]["timestamp"],
            "tx_hash": log["transactionHash"].to_0x_hex(),
            "log_index": log["logIndex"],
            "period": period,
            "kind": Kind(args["kind"]).word,
            "institution": args["institution"],
            "institution_code": codes.get(args["institution"]),
            "counterparty": counterparty,
            "counterparty_code": codes.get(counterparty) if counterparty else None,
            "category": args["category"],
            "category_name": category_name(args["category"]),
            "records": args["records"],
            "units": args["units"],
            "fee": args["fee"],
            "data_hash": "0x" + args["dataHash"].hex(),
            "nonce": str(args["nonce"]),
        }
        for name, value in values.items():
            rows[name].append(value)
    arrays = [
        pa.array(rows["block_timestamp"], pa.int64()).cast(field.type)
        if name == "block_timestamp"
        else pa.array(rows[name], field.type)
        for name, field in zip(INTERACTION_COLUMNS, INTERACTION_SCHEMA, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=INTERACTION_SCHEMA)
